/**
 * A server's start-up as far as its key material goes, as a real process: once `<gate>` exists it opens (or
 * creates) the device CA and the package-signing identity in `<folder>` and prints their fingerprints as
 * JSON. Several of these started together on an empty folder are servers starting together on a shared
 * volume. Arguments: <folder> <gate file>.
 */
import { access } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { DeviceCa } from '../../src/identity/index.js';
import { openSigningIdentity } from '../../src/packaging/index.js';

const [folder = '', gate = ''] = process.argv.slice(2);
process.stdout.write('ready\n');
for (;;) {
  try {
    await access(gate);
    break;
  } catch {
    await sleep(5);
  }
}
const [ca, signing] = await Promise.all([
  DeviceCa.open(
    { certFile: path.join(folder, 'ca', 'device-ca.crt'), keyFile: path.join(folder, 'ca', 'device-ca.key') },
    { generate: true },
  ),
  openSigningIdentity(
    {
      rootCertFile: path.join(folder, 'signing', 'root.crt'),
      rootKeyFile: path.join(folder, 'signing', 'root.key'),
      certFile: path.join(folder, 'signing', 'signing.crt'),
      keyFile: path.join(folder, 'signing', 'signing.key'),
    },
    { generate: true },
  ),
]);
process.stdout.write(
  `${JSON.stringify({ ca: ca.fingerprintSha256, signingRoot: signing.rootFingerprintSha256 })}\n`,
);
