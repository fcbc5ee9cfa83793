import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEVICE_KEY_TYPES, createCsr, generateDeviceKey } from '@edgefleet/core';

const run = promisify(execFile);
let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ef-csr-'));
});
afterAll(() => rm(dir, { recursive: true, force: true }));

/** OpenSSL checks the CSR's structure and self-signature and prints its subject. */
async function opensslVerify(csr: string): Promise<string> {
  const file = join(dir, `csr-${Math.random().toString(36).slice(2)}.pem`);
  await writeFile(file, csr);
  const { stdout, stderr } = await run('openssl', [
    'req',
    '-in',
    file,
    '-verify',
    '-noout',
    '-subject',
    '-nameopt',
    'utf8,sep_multiline',
  ]);
  expect(stderr + stdout).toMatch(/verify OK|Certificate request self-signature verify OK/);
  return stdout;
}

describe('createCsr', () => {
  it.each(DEVICE_KEY_TYPES)('writes a PKCS#10 request OpenSSL verifies (%s)', async (type) => {
    const key = generateDeviceKey(type);
    const csr = createCsr(key.privateKey, 'gateway-7');
    expect(csr).toMatch(
      /^-----BEGIN CERTIFICATE REQUEST-----\n[A-Za-z0-9+/=\n]+-----END CERTIFICATE REQUEST-----\n$/,
    );
    expect(await opensslVerify(csr)).toContain('CN=gateway-7');
  });

  it('encodes lengths in every DER form (short, one and two length bytes)', async () => {
    const key = generateDeviceKey('ecdsa-p256');
    // Names of 1..300 UTF-8 characters push the subject and the request info across 127 and 255 bytes.
    await fc.assert(
      fc.asyncProperty(
        fc.string({ unit: fc.constantFrom('a', 'Z', '9', '-', 'é', '雪'), minLength: 1, maxLength: 300 }),
        async (name) => {
          const subject = await opensslVerify(createCsr(key.privateKey, name));
          expect(subject).toContain(`CN=${name}`);
        },
      ),
      { numRuns: 15 },
    );
  });
});
