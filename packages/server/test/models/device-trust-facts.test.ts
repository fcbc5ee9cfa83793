/**
 * Review F3: what an upload's signature check keeps (checkDeviceTrust) answers a later check at its own time
 * (deviceTrustWarningAt) as verifying the package then would, without the package. Real packages signed with
 * real certificates; times are passed, not waited for.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import {
  createModelPackage,
  createRootCa,
  issueCodeSigningCertificate,
  signPackage,
  writeTestModel,
} from '@edgefleet/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkDeviceTrust, deviceTrustWarning, deviceTrustWarningAt } from '../../src/models/device-trust.js';

const DAY = 86_400_000;
let work: string;
let onnx: string;
const root = createRootCa({
  commonName: 'Trust facts root',
  validityDays: 30,
  keyType: 'ecdsa-p256',
  notBefore: new Date(Date.now() - 10 * DAY),
});

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-trust-facts-'));
  onnx = await writeTestModel('tiny', path.join(work, 'src'));
});
afterAll(() => rm(work, { recursive: true, force: true }));

async function signedPackage(name: string, signer: { privateKeyPem: string; certificatePem: string }) {
  const built = await createModelPackage({
    modelPath: onnx,
    name,
    version: '1',
    outDir: path.join(work, name),
  });
  await signPackage(built.dir, {
    method: 'certificate',
    privateKeyPem: signer.privateKeyPem,
    certificateChainPem: [signer.certificatePem],
  });
  return built.dir;
}

describe('the trust facts an upload keeps', () => {
  it('answer at a later time as the verifier would then: valid now, expired later, not valid yet earlier', async () => {
    const now = Date.now();
    const signer = issueCodeSigningCertificate({
      issuer: root,
      commonName: 'Short-lived signer',
      validityDays: 1,
      keyType: 'ecdsa-p256',
      notBefore: new Date(now - DAY / 2),
      notAfter: new Date(now + DAY / 2),
    });
    const dir = await signedPackage('short', signer);
    const input = { name: 'short', version: '1' };
    const { facts, warning } = await checkDeviceTrust(dir, input, root.certificatePem, new Date(now));
    expect(warning).toBeUndefined();
    expect(deviceTrustWarningAt(facts, input, root.certificatePem, new Date(now))).toBeUndefined();

    for (const later of [new Date(now + DAY), new Date(now - DAY)]) {
      const fromFacts = deviceTrustWarningAt(facts, input, root.certificatePem, later);
      const verified = await deviceTrustWarning(dir, input, root.certificatePem, later);
      expect(verified).toBeDefined();
      expect(fromFacts).toBe(verified);
    }
  });

  it('keep what does not change with time for a package refused at upload for its time alone', async () => {
    const now = Date.now();
    const window = { notBefore: new Date(now - 3 * DAY), notAfter: new Date(now - 2 * DAY) };
    const inside = new Date(now - 2.5 * DAY);
    const expired = issueCodeSigningCertificate({
      issuer: root,
      commonName: 'Expired signer',
      validityDays: 1,
      keyType: 'ecdsa-p256',
      ...window,
    });
    const dir = await signedPackage('expired', expired);
    const input = { name: 'expired', version: '1' };
    const { facts, warning } = await checkDeviceTrust(dir, input, root.certificatePem, new Date(now));
    expect(warning).toMatch(/expired at/);
    expect(facts.warning).toBeUndefined();
    expect(deviceTrustWarningAt(facts, input, root.certificatePem, new Date(now))).toBe(warning);
    expect(deviceTrustWarningAt(facts, input, root.certificatePem, inside)).toBeUndefined();

    // Expired, and it may not sign code either, which the verifier says only inside its validity.
    const notCodeSigning = issueCodeSigningCertificate({
      issuer: root,
      commonName: 'Expired non-code signer',
      validityDays: 1,
      keyType: 'ecdsa-p256',
      codeSigning: false,
      ...window,
    });
    const dir2 = await signedPackage('not-code', notCodeSigning);
    const input2 = { name: 'not-code', version: '1' };
    const checked = await checkDeviceTrust(dir2, input2, root.certificatePem, new Date(now));
    expect(checked.warning).toMatch(/expired at/);
    const timeless = await deviceTrustWarning(dir2, input2, root.certificatePem, inside);
    expect(timeless).toMatch(/may not sign code/);
    expect(checked.facts.warning).toBe(timeless);
    expect(deviceTrustWarningAt(checked.facts, input2, root.certificatePem, inside)).toBe(timeless);
  });

  it('say so when the server now trusts another root', async () => {
    const signer = issueCodeSigningCertificate({
      issuer: root,
      commonName: 'Signer',
      validityDays: 1,
      keyType: 'ecdsa-p256',
    });
    const dir = await signedPackage('rooted', signer);
    const input = { name: 'rooted', version: '1' };
    const { facts } = await checkDeviceTrust(dir, input, root.certificatePem, new Date());
    const other = createRootCa({ commonName: 'Another root', validityDays: 30, keyType: 'ecdsa-p256' });
    expect(deviceTrustWarningAt(facts, input, other.certificatePem, new Date())).toMatch(
      /^package rooted 1 was checked at its upload against another package-signing root \(SHA-256 [0-9a-f]{64}\), not the server's package-signing root \(CN=Another root, SHA-256 [0-9a-f]{64}\)/,
    );
  });
});
