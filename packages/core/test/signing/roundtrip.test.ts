import { createPublicKey, verify as cryptoVerify } from 'node:crypto';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  BUNDLE_MEDIA_TYPE,
  IN_TOTO_PAYLOAD_TYPE,
  MODEL_SIGNING_PREDICATE_TYPE,
  SIGNATURE_FILE,
  SigningError,
  TrustPolicyError,
  createIntermediateCa,
  createRootCa,
  digestFiles,
  generateKeyPair,
  loadSigner,
  loadTrustFolder,
  publicKeyFingerprint,
  signPackage,
  verifyPackage,
  type KeyType,
} from '../../src/signing/index.js';
import {
  certificateSigner,
  codeSigningLeaf,
  editBundle,
  readJson,
  sha256Hex,
  tempDirs,
  writeSamplePackage,
  writeTree,
} from './helpers.js';

const dirs = tempDirs();
afterEach(() => dirs.cleanup());

describe.each<KeyType>(['ecdsa-p256', 'ed25519'])('key method, %s', (keyType) => {
  it('signs and verifies; the result names the key and every file', async () => {
    const dir = await dirs.make();
    await writeSamplePackage(dir);
    const keys = generateKeyPair(keyType);
    const summary = await signPackage(
      dir,
      { method: 'key', privateKeyPem: keys.privateKeyPem },
      { modelName: 'resnet' },
    );
    const verified = await verifyPackage(dir, { publicKeysPem: [keys.publicKeyPem] });

    const fingerprint = publicKeyFingerprint(createPublicKey(keys.publicKeyPem));
    expect(verified.method).toBe('key');
    expect(verified.signer).toEqual({ method: 'key', keyType, fingerprint });
    expect(verified.modelName).toBe('resnet');
    expect(verified.files).toEqual(await digestFiles(dir, { ignore: [SIGNATURE_FILE] }));
    expect(verified.files.map((f) => f.path)).toEqual([
      'manifest.json',
      'model.onnx',
      'sagemaker_edge_manifest',
      'weights/part-1.bin',
      'weights/part-2.bin',
    ]);
    expect(summary).toMatchObject({
      modelName: 'resnet',
      method: 'key',
      signer: verified.signer,
      subjectDigest: verified.subjectDigest,
      files: verified.files,
      bundlePath: join(dir, SIGNATURE_FILE),
    });
  });
});

describe('bundle format (OpenSSF Model Signing v1.0, checked independently of our verifier)', () => {
  it('is a Sigstore v0.3 bundle with a DSSE envelope over an in-toto statement, as the reference writes it', async () => {
    const dir = await dirs.make();
    await writeSamplePackage(dir);
    const keys = generateKeyPair('ecdsa-p256');
    await signPackage(dir, { method: 'key', privateKeyPem: keys.privateKeyPem });
    const bundle = (await readJson(join(dir, SIGNATURE_FILE))) as {
      mediaType: string;
      verificationMaterial: { publicKey: { hint: string }; tlogEntries: unknown[] };
      dsseEnvelope: { payload: string; payloadType: string; signatures: { sig: string }[] };
    };
    expect(bundle.mediaType).toBe(BUNDLE_MEDIA_TYPE);
    // The reference's key hint: SHA-256 of the public key's PEM text.
    expect(bundle.verificationMaterial).toEqual({
      publicKey: { hint: sha256Hex(Buffer.from(keys.publicKeyPem)) },
      tlogEntries: [],
    });
    expect(bundle.dsseEnvelope.payloadType).toBe(IN_TOTO_PAYLOAD_TYPE);

    // DSSE PAE, built by hand; ECDSA P-256 with SHA-256, DER signature.
    const payload = Buffer.from(bundle.dsseEnvelope.payload, 'base64');
    const pae = Buffer.concat([
      Buffer.from(`DSSEv1 ${IN_TOTO_PAYLOAD_TYPE.length} ${IN_TOTO_PAYLOAD_TYPE} ${payload.length} `),
      payload,
    ]);
    const sig = Buffer.from(bundle.dsseEnvelope.signatures[0]?.sig ?? '', 'base64');
    expect(sig[0]).toBe(0x30); // DER SEQUENCE
    expect(cryptoVerify('sha256', pae, keys.publicKeyPem, sig)).toBe(true);

    const statement = JSON.parse(payload.toString('utf8')) as {
      _type: string;
      subject: { name: string; digest: { sha256: string } }[];
      predicateType: string;
      predicate: { serialization: unknown; resources: { name: string; algorithm: string; digest: string }[] };
    };
    expect(statement._type).toBe('https://in-toto.io/Statement/v1');
    expect(statement.predicateType).toBe(MODEL_SIGNING_PREDICATE_TYPE);
    expect(statement.predicate.serialization).toEqual({
      method: 'files',
      hash_type: 'sha256',
      allow_symlinks: false,
      ignore_paths: ['model.sig'],
    });
    for (const resource of statement.predicate.resources) {
      expect(resource.algorithm).toBe('sha256');
      expect(resource.digest).toBe(sha256Hex(await readFile(join(dir, ...resource.name.split('/')))));
    }
    // Subject: the folder name, and SHA-256 over the resources' raw digests in order.
    const root = sha256Hex(
      Buffer.concat(statement.predicate.resources.map((r) => Buffer.from(r.digest, 'hex'))),
    );
    expect(statement.subject).toEqual([{ name: dir.split('/').at(-1), digest: { sha256: root } }]);
  });

  it('writes model.sig atomically: no temporary file is left behind, and re-signing replaces it', async () => {
    const dir = await dirs.make();
    await writeTree(dir, { 'a.bin': 'a' });
    const first = generateKeyPair('ed25519');
    const second = generateKeyPair('ed25519');
    await signPackage(dir, { method: 'key', privateKeyPem: first.privateKeyPem });
    await signPackage(dir, { method: 'key', privateKeyPem: second.privateKeyPem });
    expect((await readdir(dir)).sort()).toEqual(['a.bin', 'model.sig']);
    await verifyPackage(dir, { publicKeysPem: [second.publicKeyPem] });
  });
});

describe('certificate method', () => {
  it('root → leaf', async () => {
    const dir = await dirs.make();
    await writeSamplePackage(dir);
    const root = createRootCa({ commonName: 'EdgeFleet Test Root', validityDays: 30, keyType: 'ecdsa-p256' });
    const leaf = codeSigningLeaf(root, 'Model Publisher');
    await signPackage(dir, certificateSigner(leaf));
    const verified = await verifyPackage(dir, { rootCertificatesPem: [root.certificatePem] });
    expect(verified.method).toBe('certificate');
    expect(verified.signer).toMatchObject({
      method: 'certificate',
      keyType: 'ecdsa-p256',
      subject: 'CN=Model Publisher',
      issuer: 'CN=EdgeFleet Test Root',
      fingerprint: publicKeyFingerprint(createPublicKey(leaf.publicKeyPem)),
    });
    const bundle = await readJson(join(dir, SIGNATURE_FILE));
    expect(bundle.verificationMaterial).toMatchObject({ x509CertificateChain: { certificates: [{}] } });
  });

  it('also accepts the bundle v0.3 single `certificate` form (leaf only, no chain)', async () => {
    const dir = await dirs.make();
    await writeSamplePackage(dir);
    const root = createRootCa({ commonName: 'Root', validityDays: 30, keyType: 'ecdsa-p256' });
    const leaf = codeSigningLeaf(root, 'Pub');
    await signPackage(dir, certificateSigner(leaf));
    await editBundle(dir, (b) => {
      const rawBytes = b.verificationMaterial.x509CertificateChain?.certificates[0]?.rawBytes ?? '';
      b.verificationMaterial = { certificate: { rawBytes } };
    });
    const verified = await verifyPackage(dir, { rootCertificatesPem: [root.certificatePem] });
    expect(verified.signer).toMatchObject({ subject: 'CN=Pub', issuer: 'CN=Root' });
  });

  it('root → intermediate → leaf, mixing Ed25519 and P-256, chain file including the root', async () => {
    const dir = await dirs.make();
    await writeSamplePackage(dir);
    const root = createRootCa({ commonName: 'Root', validityDays: 30, keyType: 'ed25519', pathLength: 1 });
    const intermediate = createIntermediateCa({
      issuer: root,
      commonName: 'Intermediate',
      validityDays: 20,
      keyType: 'ecdsa-p256',
      pathLength: 0,
    });
    const leaf = codeSigningLeaf(intermediate, 'Publisher', { keyType: 'ed25519' });
    await signPackage(dir, certificateSigner(leaf, intermediate, root));
    const verified = await verifyPackage(dir, { rootCertificatesPem: [root.certificatePem] });
    expect(verified.signer).toMatchObject({
      keyType: 'ed25519',
      subject: 'CN=Publisher',
      issuer: 'CN=Intermediate',
    });
  });
});

describe('loadSigner and loadTrustFolder (files as operators keep them)', () => {
  it('key method from a key file; trust from a folder of public keys', async () => {
    const dir = await dirs.make();
    const secrets = await dirs.make();
    const trust = await dirs.make();
    await writeSamplePackage(dir);
    const keys = generateKeyPair('ecdsa-p256');
    await writeFile(join(secrets, 'signing.key'), keys.privateKeyPem);
    await writeFile(join(trust, 'publisher.pem'), keys.publicKeyPem);
    await writeFile(join(trust, 'README.txt'), 'ignored: not .pem or .crt');
    const signer = await loadSigner({ keyPath: join(secrets, 'signing.key') });
    expect(signer.method).toBe('key');
    await signPackage(dir, signer);
    const policy = await loadTrustFolder(trust);
    expect(policy.publicKeysPem).toHaveLength(1);
    await verifyPackage(dir, policy);
  });

  it('certificate method from key, certificate and chain files; trust from PEM and DER root files', async () => {
    const dir = await dirs.make();
    const secrets = await dirs.make();
    const trust = await dirs.make();
    await writeSamplePackage(dir);
    const root = createRootCa({ commonName: 'Root', validityDays: 30, keyType: 'ecdsa-p256' });
    const otherRoot = createRootCa({ commonName: 'Other Root', validityDays: 30, keyType: 'ed25519' });
    const intermediate = createIntermediateCa({
      issuer: root,
      commonName: 'Int',
      validityDays: 30,
      keyType: 'ecdsa-p256',
    });
    const leaf = codeSigningLeaf(intermediate, 'Pub');
    await writeFile(join(secrets, 'key.pem'), leaf.privateKeyPem);
    await writeFile(join(secrets, 'cert.pem'), leaf.certificatePem);
    await writeFile(join(secrets, 'chain.pem'), intermediate.certificatePem + root.certificatePem);
    // One root as DER .crt (as some distributions ship them), the other as PEM.
    const der = Buffer.from(root.certificatePem.replace(/-----[A-Z ]+-----|\s/g, ''), 'base64');
    await writeFile(join(trust, 'edgefleet-root.crt'), der);
    await writeFile(join(trust, 'other.pem'), otherRoot.certificatePem);

    const signer = await loadSigner({
      keyPath: join(secrets, 'key.pem'),
      certPath: join(secrets, 'cert.pem'),
      chainPath: join(secrets, 'chain.pem'),
    });
    expect(signer).toMatchObject({
      method: 'certificate',
      certificateChainPem: [{}, {}, {}].map(() => expect.any(String)),
    });
    await signPackage(dir, signer);
    const policy = await loadTrustFolder(trust);
    expect(policy.rootCertificatesPem).toHaveLength(2);
    const verified = await verifyPackage(dir, policy);
    expect(verified.signer).toMatchObject({ subject: 'CN=Pub', issuer: 'CN=Int' });
  });

  it('refuses a certificate that certifies a different key than the one given', async () => {
    const root = createRootCa({ commonName: 'Root', validityDays: 30, keyType: 'ecdsa-p256' });
    const leaf = codeSigningLeaf(root, 'Pub');
    const other = generateKeyPair('ecdsa-p256');
    const dir = await dirs.make();
    await writeTree(dir, { 'a.bin': 'a' });
    const mismatched = certificateSigner({ ...leaf, privateKeyPem: other.privateKeyPem });
    await expect(signPackage(dir, mismatched)).rejects.toThrow(SigningError);
    await expect(signPackage(dir, mismatched)).rejects.toThrow(/CN=Pub certifies a different key/);
  });

  it('refuses an RSA key and an empty package, saying why', async () => {
    const { generateKeyPairSync } = await import('node:crypto');
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({
      type: 'pkcs8',
      format: 'pem',
    });
    const dir = await dirs.make();
    await writeTree(dir, { 'a.bin': 'a' });
    await expect(signPackage(dir, { method: 'key', privateKeyPem: rsa as string })).rejects.toThrow(
      /a rsa key; expected ECDSA \(P-256, P-384, P-521\) or Ed25519/,
    );
    const empty = await dirs.make();
    await expect(
      signPackage(empty, { method: 'key', privateKeyPem: generateKeyPair('ed25519').privateKeyPem }),
    ).rejects.toThrow(/holds no files to sign/);
  });

  it('trust folder errors name the folder or file and what was expected', async () => {
    const base = await dirs.make();
    await expect(loadTrustFolder(join(base, 'missing'))).rejects.toThrow(TrustPolicyError);
    await expect(loadTrustFolder(join(base, 'missing'))).rejects.toThrow(
      /does not exist; expected a folder of root certificates/,
    );
    await expect(loadTrustFolder(base)).rejects.toThrow(/holds no \*\.pem or \*\.crt files/);

    const withPrivate = await dirs.make();
    await writeFile(join(withPrivate, 'oops.pem'), generateKeyPair('ed25519').privateKeyPem);
    await expect(loadTrustFolder(withPrivate)).rejects.toThrow(
      /oops\.pem holds a PRIVATE KEY.*never private keys/,
    );

    const withLeaf = await dirs.make();
    const root = createRootCa({ commonName: 'Root', validityDays: 30, keyType: 'ecdsa-p256' });
    const leaf = codeSigningLeaf(root, 'Pub');
    await writeFile(join(withLeaf, 'leaf.pem'), leaf.certificatePem);
    await expect(loadTrustFolder(withLeaf)).rejects.toThrow(
      /leaf\.pem holds certificate CN=Pub, issued by CN=Root: not self-signed/,
    );

    const garbage = await dirs.make();
    await writeFile(join(garbage, 'x.pem'), 'hello');
    await expect(loadTrustFolder(garbage)).rejects.toThrow(/x\.pem holds no PEM blocks/);
  });
});
