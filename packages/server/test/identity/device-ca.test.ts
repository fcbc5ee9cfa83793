import { X509Certificate } from 'node:crypto';
import { mkdtemp, rm, stat, unlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KeyMaterialError } from '../../src/config/index.js';
import { bindDeviceCa, DeviceCa } from '../../src/identity/index.js';
import { createOnce } from '../../src/identity/key-files.js';
import { databaseEngines, openFreshDatabase } from '../support/engines.js';
import { deviceKey } from '../support/device.js';

const engines = await databaseEngines();

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-ca-'));
});
afterAll(() => rm(dir, { recursive: true, force: true }));

const filesIn = (name: string) => ({
  certFile: path.join(dir, name, 'device-ca.crt'),
  keyFile: path.join(dir, name, 'device-ca.key'),
});

describe('DeviceCa', () => {
  it('generates its key 0600 under a 0700 folder, and loads the same CA next time', async () => {
    const files = filesIn('gen');
    const first = await DeviceCa.open(files, { generate: true });
    expect((await stat(files.keyFile)).mode & 0o777).toBe(0o600);
    expect((await stat(path.dirname(files.keyFile))).mode & 0o777).toBe(0o700);
    const again = await DeviceCa.open(files, { generate: true });
    expect(again.fingerprintSha256).toBe(first.fingerprintSha256);
    expect(new X509Certificate(first.certificatePem).ca).toBe(true);
  });

  it('issues device certificates that name the device and fleet, for client auth only', async () => {
    const ca = await DeviceCa.open(filesIn('issue'), { generate: true });
    const key = deviceKey();
    const issued = ca.issueDeviceCertificate({
      deviceName: 'cam-7',
      fleetName: 'factory',
      publicKeyPem: key.publicKeyPem,
      validityDays: 30,
    });
    const cert = new X509Certificate(issued.certificatePem);
    const caCert = new X509Certificate(ca.certificatePem);
    expect(cert.verify(caCert.publicKey)).toBe(true);
    expect(cert.checkIssued(caCert)).toBe(true);
    expect(cert.subject).toMatch(/CN=cam-7/);
    expect(cert.subject).toMatch(/OU=factory/);
    expect(cert.ca).toBe(false);
    expect(cert.keyUsage).toEqual(['1.3.6.1.5.5.7.3.2']);
    expect(cert.subjectAltName).toBe('URI:urn:edgefleet:device:factory:cam-7');
    expect(cert.publicKey.export({ type: 'spki', format: 'pem' })).toBe(key.publicKeyPem);
    expect(issued.serial).toBe(cert.serialNumber.toLowerCase());
    expect(issued.notAfter - issued.notBefore).toBe(30 * 86_400_000);
    expect(Date.parse(cert.validTo)).toBe(issued.notAfter);
  });

  it('issues a TLS server certificate for host names and addresses', async () => {
    const ca = await DeviceCa.open(filesIn('server'), { generate: true });
    const pair = ca.issueServerCertificate(['edge.example.com', '10.0.0.5']);
    const cert = new X509Certificate(pair.certificatePem);
    expect(cert.checkHost('edge.example.com')).toBe('edge.example.com');
    expect(cert.checkIP('10.0.0.5')).toBe('10.0.0.5');
    expect(cert.checkPrivateKey((await import('node:crypto')).createPrivateKey(pair.privateKeyPem))).toBe(
      true,
    );
  });

  it('refuses half a CA, a provided CA that is absent, and a key that does not match', async () => {
    const files = filesIn('half');
    await DeviceCa.open(files, { generate: true });
    await unlink(files.keyFile);
    await expect(DeviceCa.open(files, { generate: true })).rejects.toThrow(
      /device CA incomplete: key .* missing/,
    );
    // Provided (never generated) and absent: copy them or unset deviceCa, not "remove both to generate".
    await expect(DeviceCa.open(filesIn('absent'), { generate: false })).rejects.toThrow(
      /deviceCa\.certFile and deviceCa\.keyFile are set but neither .* exists; configured key files are never generated: copy them from the first server/,
    );
    await expect(DeviceCa.open(filesIn('absent'), { generate: false })).rejects.toBeInstanceOf(
      KeyMaterialError,
    );

    const other = filesIn('other');
    await DeviceCa.open(other, { generate: true });
    const mixed = { certFile: filesIn('gen').certFile, keyFile: other.keyFile };
    await expect(DeviceCa.open(mixed, { generate: false })).rejects.toThrow(/does not belong to certificate/);
  });

  it('creates the CA once when several servers start together on one folder', async () => {
    const files = filesIn('together');
    const cas = await Promise.all([1, 2, 3].map(() => DeviceCa.open(files, { generate: true })));
    expect(new Set(cas.map((ca) => ca.fingerprintSha256)).size).toBe(1);
  });

  it('names a lock left behind by a crashed server', async () => {
    const lock = path.join(dir, 'stale.lock');
    await writeFile(lock, '');
    await expect(
      createOnce(
        lock,
        async () => false,
        async () => undefined,
        300,
      ),
    ).rejects.toThrow(/stale\.lock exists: another server is creating key material/);
  });

  it('warns about a key file others can read', async () => {
    const files = filesIn('loose');
    const ca = await DeviceCa.open(files, { generate: true });
    const { chmod, readFile } = await import('node:fs/promises');
    await writeFile(files.keyFile, await readFile(files.keyFile));
    await chmod(files.keyFile, 0o644);
    const warnings: string[] = [];
    const loaded = await DeviceCa.open(files, { generate: false, warn: (m) => warnings.push(m) });
    expect(loaded.fingerprintSha256).toBe(ca.fingerprintSha256);
    expect(warnings).toEqual([expect.stringMatching(/readable by others/)]);
  });
});

describe.each(engines)('device CA binding on $engine', (fixture) => {
  it.skipIf(!fixture.available)('ties a database to one CA and refuses another', async () => {
    const database = await openFreshDatabase(fixture);
    try {
      await bindDeviceCa(database.db, 'aa'.repeat(32));
      await bindDeviceCa(database.db, 'aa'.repeat(32));
      await expect(bindDeviceCa(database.db, 'bb'.repeat(32))).rejects.toThrow(
        /belongs to a different device CA/,
      );
    } finally {
      await database.close();
    }
  });
});
