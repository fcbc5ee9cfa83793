/*
 * Red-team F-H: a package file or folder the verifier may not read is a verdict on the package
 * (PackageVerificationError file-unreadable, naming it), not an anonymous I/O error. The verifier runs as nobody in
 * its own process (the tests run as root, whom permissions do not stop), on the built package.
 */
import { execFile } from 'node:child_process';
import { chmod } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { generateKeyPair, signPackage, type KeyPairPem } from '../../src/signing/index.js';
import { tempDirs, writeSamplePackage } from './helpers.js';

const NOBODY = 65534;
const isRoot = process.getuid?.() === 0;
const CORE = fileURLToPath(new URL('../../dist/index.js', import.meta.url));

const dirs = tempDirs();
afterEach(() => dirs.cleanup());

let keys: KeyPairPem;
beforeAll(() => {
  keys = generateKeyPair('ecdsa-p256');
});

/** verifyPackage(dir) as nobody: what it threw (name, reason, path, message), or null when it verified. */
function verifyAsNobody(dir: string) {
  const script = `
    const [core, dir, publicKeyPem] = process.argv.slice(1);
    import(core).then((m) => m.verifyPackage(dir, { publicKeysPem: [publicKeyPem] })).then(
      () => process.stdout.write('null'),
      (e) => process.stdout.write(JSON.stringify({ name: e.name, reason: e.reason, path: e.path, message: e.message })),
    );`;
  return new Promise<{ name: string; reason?: string; path?: string; message: string } | null>(
    (resolve, reject) => {
      execFile(
        process.execPath,
        ['-e', script, CORE, dir, keys.publicKeyPem],
        { uid: NOBODY, gid: NOBODY, timeout: 30_000, killSignal: 'SIGKILL' },
        (error, stdout, stderr) => {
          if (error) reject(new Error(`the verifier failed: ${error.message}\n${stderr}`));
          else resolve(JSON.parse(stdout) as { name: string; message: string } | null);
        },
      );
    },
  );
}

async function signedPackageOthersMayRead(): Promise<string> {
  const dir = await dirs.make();
  await writeSamplePackage(dir);
  await signPackage(dir, { method: 'key', privateKeyPem: keys.privateKeyPem });
  await chmod(dir, 0o755);
  return dir;
}

describe.skipIf(!isRoot)('verifyPackage on files it may not read (as nobody)', () => {
  it('verifies the package when it may read it all', async () => {
    expect(await verifyAsNobody(await signedPackageOthersMayRead())).toBeNull();
  });

  it('a file it may not read → file-unreadable, naming it', async () => {
    const dir = await signedPackageOthersMayRead();
    await chmod(join(dir, 'model.onnx'), 0o600);
    expect(await verifyAsNobody(dir)).toMatchObject({
      name: 'PackageVerificationError',
      reason: 'file-unreadable',
      path: 'model.onnx',
      message: expect.stringMatching(/model\.onnx cannot be opened \(EACCES\)/),
    });
  });

  it('a folder it may not list → file-unreadable, naming it', async () => {
    const dir = await signedPackageOthersMayRead();
    await chmod(join(dir, 'weights'), 0o700);
    expect(await verifyAsNobody(dir)).toMatchObject({
      name: 'PackageVerificationError',
      reason: 'file-unreadable',
      path: 'weights',
      message: expect.stringMatching(/^folder weights cannot be read \(EACCES\)/),
    });
  });
});
