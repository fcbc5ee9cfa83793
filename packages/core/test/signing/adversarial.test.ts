/*
 * The adversarial corpus: every way a package or its signature can be wrong, each rejected with the right
 * reason and a message that names the culprit.
 */
import { createHash } from 'node:crypto';
import { rmSync, symlinkSync } from 'node:fs';
import { mkdir, readFile, rm, symlink, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  SIGNATURE_FILE,
  createIntermediateCa,
  createRootCa,
  generateKeyPair,
  issueCertificate,
  signPackage,
  verifyPackage,
  type CertificateAuthority,
  type KeyPairPem,
  type PackageVerificationReason,
  type Signer,
} from '../../src/signing/index.js';
import {
  certificateSigner,
  codeSigningLeaf,
  editBundle,
  expectRejected,
  flipByte,
  handSignedBundle,
  readBundle,
  tempDirs,
  writeSamplePackage,
  type StatementJson,
} from './helpers.js';

const dirs = tempDirs();
afterEach(() => dirs.cleanup());

const DAY = 86_400_000;

let keys: KeyPairPem;
let root: CertificateAuthority;
beforeAll(() => {
  keys = generateKeyPair('ecdsa-p256');
  root = createRootCa({ commonName: 'EdgeFleet Root', validityDays: 365, keyType: 'ecdsa-p256' });
});

/** A freshly signed sample package (key method unless a signer is given). */
async function signedPackage(signer?: Signer): Promise<string> {
  const dir = await dirs.make();
  await writeSamplePackage(dir);
  await signPackage(dir, signer ?? { method: 'key', privateKeyPem: keys.privateKeyPem });
  return dir;
}

const keyTrust = () => ({ publicKeysPem: [keys.publicKeyPem] });
const rootTrust = () => ({ rootCertificatesPem: [root.certificatePem] });

/**
 * Signs the sample package with `signer` and expects the verifier, trusting `root` (or `options.root`), to
 * reject it for `reason`, naming `culprit` in the message and `options.certificate` as the certificate at fault.
 * Resolves with the package's folder.
 */
async function expectChainRejected(
  signer: Signer,
  reason: PackageVerificationReason,
  culprit: string,
  options: { certificate?: string; root?: CertificateAuthority } = {},
): Promise<string> {
  const dir = await signedPackage(signer);
  const trust = { rootCertificatesPem: [(options.root ?? root).certificatePem] };
  const e = await expectRejected(verifyPackage(dir, trust), reason, culprit);
  if (options.certificate !== undefined) expect(e.certificate).toBe(options.certificate);
  return dir;
}

describe('files of the package', () => {
  it('one byte flipped in a file → file-modified, naming the file', async () => {
    const dir = await signedPackage();
    await flipByte(join(dir, 'model.onnx'), 5);
    const e = await expectRejected(verifyPackage(dir, keyTrust()), 'file-modified', 'model.onnx');
    expect(e.path).toBe('model.onnx');
    expect(e.message).toMatch(/its SHA-256 is [0-9a-f]{64}, the signature expects [0-9a-f]{64}/);
  });

  it('a file in a subfolder changed → file-modified, naming its full path', async () => {
    const dir = await signedPackage();
    await flipByte(join(dir, 'weights', 'part-2.bin'), 123_456);
    const e = await expectRejected(verifyPackage(dir, keyTrust()), 'file-modified', 'weights/part-2.bin');
    expect(e.path).toBe('weights/part-2.bin');
  });

  it('manifest.json edited → file-modified', async () => {
    const dir = await signedPackage();
    await writeFile(
      join(dir, 'manifest.json'),
      JSON.stringify({ name: 'resnet', version: '6.6.6' }, null, 2),
    );
    await expectRejected(verifyPackage(dir, keyTrust()), 'file-modified', 'manifest.json');
  });

  it('a file of the same size and different content → file-modified (sizes are not trusted)', async () => {
    const dir = await signedPackage();
    const original = await readFile(join(dir, 'model.onnx'));
    await writeFile(join(dir, 'model.onnx'), Buffer.from(original).reverse());
    await expectRejected(verifyPackage(dir, keyTrust()), 'file-modified', 'model.onnx');
  });

  it('a file added → file-unlisted, naming it', async () => {
    const dir = await signedPackage();
    await writeFile(join(dir, 'weights', 'backdoor.bin'), 'extra');
    const e = await expectRejected(verifyPackage(dir, keyTrust()), 'file-unlisted', 'weights/backdoor.bin');
    expect(e.path).toBe('weights/backdoor.bin');
  });

  it('a file added under a name the signer might have ignored (.git) → still file-unlisted', async () => {
    const dir = await signedPackage();
    await mkdir(join(dir, '.git'));
    await writeFile(join(dir, '.git', 'config'), '[core]');
    await expectRejected(verifyPackage(dir, keyTrust()), 'file-unlisted', '.git/config');
  });

  it('a file removed → file-missing, naming it', async () => {
    const dir = await signedPackage();
    await rm(join(dir, 'sagemaker_edge_manifest'));
    const e = await expectRejected(verifyPackage(dir, keyTrust()), 'file-missing', 'sagemaker_edge_manifest');
    expect(e.path).toBe('sagemaker_edge_manifest');
  });

  it('a symlink in the package → file-unsupported, naming it (never followed)', async () => {
    const dir = await signedPackage();
    await symlink('/etc/passwd', join(dir, 'weights', 'part-3.bin'));
    const e = await expectRejected(verifyPackage(dir, keyTrust()), 'file-unsupported', 'weights/part-3.bin');
    expect(e.path).toBe('weights/part-3.bin');
  });

  it('a signed file replaced by a symlink to identical content → file-unsupported', async () => {
    const dir = await signedPackage();
    const elsewhere = await dirs.make();
    await writeFile(join(elsewhere, 'model.onnx'), await readFile(join(dir, 'model.onnx')));
    await rm(join(dir, 'model.onnx'));
    await symlink(join(elsewhere, 'model.onnx'), join(dir, 'model.onnx'));
    await expectRejected(verifyPackage(dir, keyTrust()), 'file-unsupported', 'model.onnx');
  });

  it('a file removed while it is being verified → file-missing', async () => {
    const dir = await signedPackage();
    let done = false;
    const verifying = verifyPackage(dir, keyTrust(), {
      onProgress: ({ file }) => {
        // manifest.json is hashed first; take weights/part-2.bin away before its turn.
        if (file === 'manifest.json' && !done) {
          done = true;
          rmSync(join(dir, 'weights', 'part-2.bin'));
        }
      },
    });
    await expectRejected(verifying, 'file-missing', 'weights/part-2.bin disappeared');
  });

  it('a file swapped for a symlink (to identical bytes) while being verified → file-unsupported', async () => {
    const dir = await signedPackage();
    const elsewhere = await dirs.make();
    const original = await readFile(join(dir, 'weights', 'part-2.bin'));
    await writeFile(join(elsewhere, 'copy.bin'), original);
    let done = false;
    const verifying = verifyPackage(dir, keyTrust(), {
      onProgress: ({ file }) => {
        if (file === 'manifest.json' && !done) {
          done = true;
          rmSync(join(dir, 'weights', 'part-2.bin'));
          symlinkSync(join(elsewhere, 'copy.bin'), join(dir, 'weights', 'part-2.bin'));
        }
      },
    });
    await expectRejected(verifying, 'file-unsupported', 'weights/part-2.bin became a symlink');
  });

  it('signing refuses a package holding a symlink, naming it', async () => {
    const dir = await dirs.make();
    await writeSamplePackage(dir);
    await symlink('model.onnx', join(dir, 'alias.onnx'));
    await expect(
      signPackage(dir, { method: 'key', privateKeyPem: keys.privateKeyPem }),
    ).rejects.toMatchObject({
      name: 'UnsupportedFileError',
      path: 'alias.onnx',
      kind: 'symlink',
    });
  });
});

describe('the bundle itself', () => {
  it('model.sig missing → bundle-missing', async () => {
    const dir = await signedPackage();
    await rm(join(dir, SIGNATURE_FILE));
    await expectRejected(verifyPackage(dir, keyTrust()), 'bundle-missing', 'model.sig');
  });

  it('model.sig truncated → bundle-malformed', async () => {
    const dir = await signedPackage();
    await truncate(join(dir, SIGNATURE_FILE), 200);
    await expectRejected(verifyPackage(dir, keyTrust()), 'bundle-malformed', 'model.sig is not JSON');
  });

  it('model.sig not JSON → bundle-malformed', async () => {
    const dir = await signedPackage();
    await writeFile(join(dir, SIGNATURE_FILE), '-----BEGIN PGP SIGNATURE-----\n');
    await expectRejected(verifyPackage(dir, keyTrust()), 'bundle-malformed', 'not JSON');
  });

  it('model.sig is JSON but not a bundle → bundle-malformed, saying which field', async () => {
    const dir = await signedPackage();
    await writeFile(join(dir, SIGNATURE_FILE), '{"hello": "world"}');
    await expectRejected(verifyPackage(dir, keyTrust()), 'bundle-malformed', 'mediaType');
  });

  it('wrong payloadType → bundle-malformed, naming the expected type', async () => {
    const dir = await signedPackage();
    await editBundle(dir, (b) => {
      b.dsseEnvelope.payloadType = 'application/json';
    });
    await expectRejected(verifyPackage(dir, keyTrust()), 'bundle-malformed', 'dsseEnvelope.payloadType');
  });

  it('a statement edited to match a tampered file (signature left as is) → signature-invalid', async () => {
    const dir = await signedPackage();
    await writeFile(join(dir, 'manifest.json'), '{"evil":true}');
    await editBundle(dir, (b) => {
      const statement = JSON.parse(
        Buffer.from(b.dsseEnvelope.payload, 'base64').toString('utf8'),
      ) as StatementJson;
      const resource = statement.predicate.resources.find((r) => r.name === 'manifest.json');
      if (!resource || !statement.subject[0]) throw new Error('sample package lacks manifest.json');
      resource.digest = createHash('sha256').update('{"evil":true}').digest('hex');
      const all = Buffer.concat(statement.predicate.resources.map((r) => Buffer.from(r.digest, 'hex')));
      statement.subject[0].digest.sha256 = createHash('sha256').update(all).digest('hex');
      b.dsseEnvelope.payload = Buffer.from(JSON.stringify(statement)).toString('base64');
    });
    await expectRejected(verifyPackage(dir, keyTrust()), 'signature-invalid', 'does not verify');
  });

  it('the signature swapped for one from another package by the same key → signature-invalid', async () => {
    const dir = await signedPackage();
    const other = await dirs.make();
    await writeFile(join(other, 'x.bin'), 'x');
    await signPackage(other, { method: 'key', privateKeyPem: keys.privateKeyPem });
    const otherSig = (await readBundle(other)).dsseEnvelope.signatures[0]?.sig ?? '';
    await editBundle(dir, (b) => {
      b.dsseEnvelope.signatures = [{ sig: otherSig }];
    });
    await expectRejected(verifyPackage(dir, keyTrust()), 'signature-invalid');
  });

  it('base64 that decodes to the signed bytes but is not canonical (line breaks) → bundle-malformed', async () => {
    const dir = await signedPackage();
    await editBundle(dir, (b) => {
      b.dsseEnvelope.payload = b.dsseEnvelope.payload.replace(/(.{76})/g, '$1\n');
    });
    expect((await readBundle(dir)).dsseEnvelope.payload).toContain('\n');
    await expectRejected(verifyPackage(dir, keyTrust()), 'bundle-malformed', 'canonical base64');
  });

  it('a second, unverifiable signature appended → bundle-malformed (exactly one expected)', async () => {
    const dir = await signedPackage();
    await editBundle(dir, (b) => {
      b.dsseEnvelope.signatures.push({ sig: b.dsseEnvelope.signatures[0]?.sig ?? '' });
    });
    await expectRejected(verifyPackage(dir, keyTrust()), 'bundle-malformed', 'exactly one signature');
  });
});

describe('who signed', () => {
  it('signature by an untrusted key → untrusted-key, listing the trusted fingerprints', async () => {
    const dir = await signedPackage({
      method: 'key',
      privateKeyPem: generateKeyPair('ecdsa-p256').privateKeyPem,
    });
    await expectRejected(verifyPackage(dir, keyTrust()), 'untrusted-key', 'untrusted key');
  });

  it('an untrusted key whose bundle claims the trusted key hint → signature-invalid', async () => {
    const trustedHint = (await readBundle(await signedPackage())).verificationMaterial.publicKey?.hint ?? '';
    const dir = await signedPackage({
      method: 'key',
      privateKeyPem: generateKeyPair('ecdsa-p256').privateKeyPem,
    });
    await editBundle(dir, (b) => {
      b.verificationMaterial.publicKey = { hint: trustedHint };
    });
    await expectRejected(verifyPackage(dir, keyTrust()), 'signature-invalid');
  });

  it('a key-signed package against a trust policy of roots only → untrusted-key', async () => {
    const dir = await signedPackage();
    await expectRejected(verifyPackage(dir, rootTrust()), 'untrusted-key', 'holds no public keys');
  });

  it('a certificate-signed package against a policy of keys only → untrusted-chain', async () => {
    const leaf = codeSigningLeaf(root, 'Pub');
    const dir = await signedPackage(certificateSigner(leaf));
    await expectRejected(verifyPackage(dir, keyTrust()), 'untrusted-chain', 'holds no root certificates');
  });

  it('a chain to a different root (same name, different key) → untrusted-chain, naming the issuer', async () => {
    const impostor = createRootCa({ commonName: 'EdgeFleet Root', validityDays: 365, keyType: 'ecdsa-p256' });
    const leaf = codeSigningLeaf(impostor, 'Pub');
    await expectChainRejected(
      certificateSigner(leaf, impostor),
      'untrusted-chain',
      'does not lead to a trusted root',
      { certificate: 'CN=EdgeFleet Root' },
    );
  });

  it('an intermediate missing from the bundle → untrusted-chain, naming the certificate whose issuer is missing', async () => {
    const intermediate = createIntermediateCa({
      issuer: root,
      commonName: 'Int',
      validityDays: 30,
      keyType: 'ed25519',
    });
    const leaf = codeSigningLeaf(intermediate, 'Pub');
    await expectChainRejected(certificateSigner(leaf), 'untrusted-chain', 'CN=Pub was issued by CN=Int', {
      certificate: 'CN=Pub',
    });
  });

  it('an expired leaf → certificate-expired, naming it and when', async () => {
    const leaf = codeSigningLeaf(root, 'Old Publisher', {
      validityDays: 1,
      notBefore: new Date(Date.now() - 10 * DAY),
      notAfter: new Date(Date.now() - DAY),
    });
    await expectChainRejected(certificateSigner(leaf), 'certificate-expired', 'CN=Old Publisher expired at', {
      certificate: 'CN=Old Publisher',
    });
  });

  it('a not-yet-valid leaf → certificate-not-yet-valid; the same package verifies at a later `now`', async () => {
    const leaf = codeSigningLeaf(root, 'Future Publisher', {
      validityDays: 5,
      keyType: 'ed25519',
      notBefore: new Date(Date.now() + 2 * DAY),
    });
    const dir = await expectChainRejected(
      certificateSigner(leaf),
      'certificate-not-yet-valid',
      'CN=Future Publisher is not valid until',
    );
    await verifyPackage(dir, rootTrust(), { now: new Date(Date.now() + 3 * DAY) });
  });

  it('an expired intermediate → certificate-expired, naming the intermediate', async () => {
    const intermediate = createIntermediateCa({
      issuer: root,
      commonName: 'Lapsed Int',
      validityDays: 1,
      keyType: 'ecdsa-p256',
      notBefore: new Date(Date.now() - 5 * DAY),
    });
    const leaf = codeSigningLeaf(intermediate, 'Pub');
    await expectChainRejected(
      certificateSigner(leaf, intermediate),
      'certificate-expired',
      'intermediate CN=Lapsed Int',
      { certificate: 'CN=Lapsed Int' },
    );
  });

  it('a leaf without extendedKeyUsage codeSigning → certificate-not-code-signing', async () => {
    const leaf = codeSigningLeaf(root, 'TLS Client', { codeSigning: false });
    await expectChainRejected(
      certificateSigner(leaf),
      'certificate-not-code-signing',
      'CN=TLS Client may not sign code: it lacks extendedKeyUsage codeSigning',
    );
  });

  it('a leaf with codeSigning but no keyUsage digitalSignature → certificate-not-code-signing', async () => {
    const pair = generateKeyPair('ecdsa-p256');
    const certificatePem = issueCertificate(root, {
      subject: { commonName: 'Encipher Only' },
      publicKeyPem: pair.publicKeyPem,
      validityDays: 7,
      keyUsage: ['keyEncipherment'],
      extendedKeyUsage: ['codeSigning'],
    });
    await expectChainRejected(
      certificateSigner({ privateKeyPem: pair.privateKeyPem, certificatePem }),
      'certificate-not-code-signing',
      'lacks keyUsage digitalSignature',
    );
  });

  it('a leaf issued by a certificate that is not a CA → untrusted-chain', async () => {
    // The "intermediate" may sign certificates by keyUsage but says cA=false.
    const fakeCaKeys = generateKeyPair('ecdsa-p256');
    const fakeCa: CertificateAuthority = {
      ...fakeCaKeys,
      certificatePem: issueCertificate(root, {
        subject: { commonName: 'Not A CA' },
        publicKeyPem: fakeCaKeys.publicKeyPem,
        validityDays: 30,
        basicConstraints: { ca: false },
        keyUsage: ['digitalSignature', 'keyCertSign'],
      }),
    };
    const leaf = codeSigningLeaf(fakeCa, 'Pub');
    await expectChainRejected(
      certificateSigner(leaf, fakeCa),
      'untrusted-chain',
      'CN=Not A CA issued CN=Pub but is not a CA',
    );
  });

  it('a chain longer than the root allows (pathLenConstraint 0) → untrusted-chain', async () => {
    const strictRoot = createRootCa({
      commonName: 'Strict Root',
      validityDays: 30,
      keyType: 'ecdsa-p256',
      pathLength: 0,
    });
    const intermediate = createIntermediateCa({
      issuer: strictRoot,
      commonName: 'Int',
      validityDays: 30,
      keyType: 'ecdsa-p256',
    });
    const leaf = codeSigningLeaf(intermediate, 'Pub');
    await expectChainRejected(certificateSigner(leaf, intermediate), 'untrusted-chain', 'pathLenConstraint', {
      root: strictRoot,
    });
  });

  it('a leaf certificate swapped for another valid leaf of the same CA → signature-invalid', async () => {
    const signerLeaf = codeSigningLeaf(root, 'Pub');
    const otherLeaf = codeSigningLeaf(root, 'Pub');
    const dir = await signedPackage(certificateSigner(signerLeaf));
    const otherDer = otherLeaf.certificatePem.replace(/-----[A-Z ]+-----|\s/g, '');
    await editBundle(dir, (b) => {
      b.verificationMaterial.x509CertificateChain = { certificates: [{ rawBytes: otherDer }] };
    });
    await expectRejected(verifyPackage(dir, rootTrust()), 'signature-invalid');
  });
});

describe('statements signed by a trusted key but wrong in themselves', () => {
  /** The statement signPackage would write for the sample package, for the test to spoil. */
  async function statementOf(dir: string): Promise<StatementJson> {
    const bundle = await readBundle(dir);
    return JSON.parse(Buffer.from(bundle.dsseEnvelope.payload, 'base64').toString('utf8')) as StatementJson;
  }

  async function resign(dir: string, spoil: (s: StatementJson) => void): Promise<void> {
    const statement = await statementOf(dir);
    spoil(statement);
    await writeFile(
      join(dir, SIGNATURE_FILE),
      JSON.stringify(handSignedBundle(statement, keys.privateKeyPem)),
    );
  }

  /** Makes the subject digest agree with the (edited) resources again, as a signer would compute it. */
  function resubject(statement: StatementJson): void {
    const all = Buffer.concat(statement.predicate.resources.map((r) => Buffer.from(r.digest, 'hex')));
    const subject = statement.subject[0];
    if (subject) subject.digest.sha256 = createHash('sha256').update(all).digest('hex');
  }

  it('the hand-built bundle verifies when nothing is spoiled (so the cases below test what they say)', async () => {
    const dir = await signedPackage();
    await resign(dir, () => undefined);
    await verifyPackage(dir, keyTrust());
  });

  /** Statements spoiled in a way the verifier must refuse as bundle-malformed, naming `culprit`. */
  const malformed: { name: string; spoil: (s: StatementJson) => void; culprit: string }[] = [
    {
      name: 'subject digest inconsistent with the resources → bundle-malformed',
      spoil: (s) => {
        const subject = s.subject[0];
        if (subject) subject.digest.sha256 = '0'.repeat(64);
      },
      culprit: 'inconsistent',
    },
    {
      name: 'a resource name reaching outside the package → bundle-malformed, naming it',
      spoil: (s) => {
        s.predicate.resources.push({ name: '../outside.bin', algorithm: 'sha256', digest: 'a'.repeat(64) });
        resubject(s);
      },
      culprit: '../outside.bin',
    },
    {
      name: 'a file listed twice → bundle-malformed',
      spoil: (s) => {
        const first = s.predicate.resources[0];
        if (first) s.predicate.resources.push({ ...first });
        resubject(s);
      },
      culprit: 'twice',
    },
    {
      name: 'the pre-1.0 predicate type (Digests/v0.1) → bundle-malformed, naming the field',
      spoil: (s) => {
        s.predicateType = 'https://model_signing/Digests/v0.1';
      },
      culprit: 'predicateType',
    },
    {
      name: 'shard serialization (not produced by EdgeFleet) → bundle-malformed',
      spoil: (s) => {
        s.predicate.serialization.method = 'shards';
      },
      culprit: 'predicate.serialization.method',
    },
    {
      name: 'a statement listing model.sig itself → bundle-malformed',
      spoil: (s) => {
        s.predicate.resources.push({ name: 'model.sig', algorithm: 'sha256', digest: 'b'.repeat(64) });
        resubject(s);
      },
      culprit: "the signature's own file",
    },
  ];
  for (const { name, spoil, culprit } of malformed)
    it(name, async () => {
      const dir = await signedPackage();
      await resign(dir, spoil);
      await expectRejected(verifyPackage(dir, keyTrust()), 'bundle-malformed', culprit);
    });

  it('a signed ignore_paths does not exempt a file from the listing', async () => {
    const dir = await signedPackage();
    await writeFile(join(dir, 'notes.txt'), 'unsigned');
    await resign(dir, (s) => {
      s.predicate.serialization.ignore_paths = ['model.sig', 'notes.txt'];
    });
    await expectRejected(verifyPackage(dir, keyTrust()), 'file-unlisted', 'notes.txt');
  });
});
