/**
 * Review F3: what an upload's signature check keeps (checkDeviceTrust) answers a later check at its own time
 * (deviceTrustWarningAt) as verifying the package then would, without the package. Real packages signed with
 * real certificates; times are passed, not waited for.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import {
  createIntermediateCa,
  createModelPackage,
  createRootCa,
  issueCodeSigningCertificate,
  signPackage,
  SIGNATURE_FILE,
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

async function signedPackage(
  name: string,
  signer: { privateKeyPem: string; certificatePem: string },
  intermediatesPem: string[] = [],
) {
  const built = await createModelPackage({
    modelPath: onnx,
    name,
    version: '1',
    outDir: path.join(work, name),
  });
  await signPackage(built.dir, {
    method: 'certificate',
    privateKeyPem: signer.privateKeyPem,
    certificateChainPem: [signer.certificatePem, ...intermediatesPem],
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

  it('of a chain never valid at one time say, at each later time, which certificate is at fault then', async () => {
    const now = Date.now();
    // Signed by a certificate whose validity begins after the root's ends: refused at any time, for one
    // certificate's time or the other's. Before the fix the upload's refusal was kept as it was at upload
    // ("not valid until …, now is <upload time>"), and said even once the signing certificate was valid.
    const rootEnds = now - 10 * DAY + 30 * DAY;
    const signer = issueCodeSigningCertificate({
      issuer: root,
      commonName: 'Too-late signer',
      validityDays: 1,
      keyType: 'ecdsa-p256',
      notBefore: new Date(rootEnds + 5 * DAY),
      notAfter: new Date(rootEnds + 10 * DAY),
    });
    const dir = await signedPackage('never', signer);
    const input = { name: 'never', version: '1' };
    const { facts, warning } = await checkDeviceTrust(dir, input, root.certificatePem, new Date(now));
    expect(warning).toMatch(/signing certificate CN=Too-late signer is not valid until/);
    expect(facts.warning).toBeUndefined();
    for (const at of [now, rootEnds + 7 * DAY, now - DAY]) {
      const fromFacts = deviceTrustWarningAt(facts, input, root.certificatePem, new Date(at));
      expect(fromFacts).toBe(await deviceTrustWarning(dir, input, root.certificatePem, new Date(at)));
      expect(fromFacts).toContain(`(now is ${new Date(at).toISOString()})`);
    }
    expect(deviceTrustWarningAt(facts, input, root.certificatePem, new Date(rootEnds + 7 * DAY))).toMatch(
      /root CN=Trust facts root expired at/,
    );
  });

  it("keep no chain where the verifier's bound on a path's length finds none", async () => {
    // The signer under seven intermediates is a path of eight certificates below the root, the verifier's
    // most; under eight, the verifier finds no path (before the fix the facts kept one, built with a bound of 10).
    const underIntermediates = async (count: number) => {
      const cas = [];
      let issuer = root;
      for (let i = 0; i < count; i += 1) {
        issuer = createIntermediateCa({
          issuer,
          commonName: `Intermediate ${count}-${i}`,
          validityDays: 10,
          keyType: 'ecdsa-p256',
        });
        cas.push(issuer);
      }
      const signer = issueCodeSigningCertificate({
        issuer,
        commonName: `Signer under ${count}`,
        validityDays: 1,
        keyType: 'ecdsa-p256',
      });
      const name = `deep-${count}`;
      const dir = await signedPackage(
        name,
        signer,
        cas.map((ca) => ca.certificatePem),
      );
      return checkDeviceTrust(dir, { name, version: '1' }, root.certificatePem, new Date());
    };
    const within = await underIntermediates(7);
    expect(within.warning).toBeUndefined();
    expect(within.facts.chain?.map((c) => c.certificate.split(' ')[0])).toEqual([
      'signing',
      ...Array<string>(7).fill('intermediate'),
      'root',
    ]);
    const beyond = await underIntermediates(8);
    expect(beyond.warning).toMatch(/does not lead to a trusted root/);
    expect(beyond.facts.chain).toBeUndefined();
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

  it('name no chain for a bundle whose signing certificate does not parse: the upload is refused, saying which', async () => {
    const signer = issueCodeSigningCertificate({
      issuer: root,
      commonName: 'Garbled signer',
      validityDays: 1,
      keyType: 'ecdsa-p256',
    });
    const intermediate = createIntermediateCa({
      issuer: root,
      commonName: 'Garbled intermediate',
      validityDays: 1,
      keyType: 'ecdsa-p256',
    });
    const dir = await signedPackage('garbled', signer, [intermediate.certificatePem]);
    const file = path.join(dir, SIGNATURE_FILE);
    const bundle = JSON.parse(await readFile(file, 'utf8')) as {
      verificationMaterial: { x509CertificateChain: { certificates: { rawBytes: string }[] } };
    };
    // The signer's certificate damaged: skipping it would make the intermediate the "signing certificate".
    bundle.verificationMaterial.x509CertificateChain.certificates[0]!.rawBytes =
      Buffer.from('not a certificate').toString('base64');
    await writeFile(file, JSON.stringify(bundle));
    await expect(
      checkDeviceTrust(dir, { name: 'garbled', version: '1' }, root.certificatePem, new Date()),
    ).rejects.toThrow(/certificate #1 of the chain is not a DER X\.509 certificate/);
  });
});
