import { createHash, createPublicKey, sign } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { expect } from 'vitest';
import {
  PackageVerificationError,
  SIGNATURE_FILE,
  issueCodeSigningCertificate,
  type CertificateAuthority,
  type CertifiedKeyPair,
  type IssueCodeSigningCertificateOptions,
  type PackageVerificationReason,
  type Signer,
} from '../../src/signing/index.js';

/** Temp folders made by a test file; `cleanup` removes them all. */
export function tempDirs() {
  const made: string[] = [];
  return {
    async make(prefix = 'edgefleet-signing-'): Promise<string> {
      const dir = await mkdtemp(join(tmpdir(), prefix));
      made.push(dir);
      return dir;
    },
    async cleanup(): Promise<void> {
      await Promise.all(made.splice(0).map((d) => rm(d, { recursive: true, force: true })));
    },
  };
}

/** Writes `files` (posix relative path → content) under `dir`, making folders as needed. */
export async function writeTree(dir: string, files: Record<string, string | Uint8Array>): Promise<void> {
  for (const [path, content] of Object.entries(files)) {
    const target = join(dir, ...path.split('/'));
    await mkdir(dirname(target), { recursive: true });
    await writeFile(target, content);
  }
}

/** A small package like the ones EdgeFleet builds: model, manifests, a subfolder of weights. */
export async function writeSamplePackage(dir: string): Promise<void> {
  const weights = Buffer.alloc(300_000);
  for (let i = 0; i < weights.length; i++) weights[i] = (i * 31 + 7) & 0xff;
  await writeTree(dir, {
    'model.onnx': Buffer.from('not really onnx, but bytes all the same'),
    'manifest.json': JSON.stringify({ name: 'resnet', version: '1.0.0' }, null, 2),
    sagemaker_edge_manifest: JSON.stringify({ model_name: 'resnet' }),
    'weights/part-1.bin': weights,
    'weights/part-2.bin': weights.subarray(1000),
  });
}

export function sha256Hex(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Flips one bit of the byte at `offset` in place. */
export async function flipByte(path: string, offset = 0): Promise<void> {
  const bytes = await readFile(path);
  bytes[offset % bytes.length] = (bytes[offset % bytes.length] as number) ^ 0x01;
  await writeFile(path, bytes);
}

/** Asserts `promise` rejects with a PackageVerificationError of `reason` whose message names `culprit`. */
export async function expectRejected(
  promise: Promise<unknown>,
  reason: PackageVerificationReason,
  culprit?: string,
): Promise<PackageVerificationError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error, `expected rejection with ${reason}`).toBeInstanceOf(PackageVerificationError);
  const e = error as PackageVerificationError;
  expect({ reason: e.reason, message: e.message }).toMatchObject({ reason });
  if (culprit) expect(e.message).toContain(culprit);
  return e;
}

export async function readJson(path: string): Promise<Record<string, unknown>> {
  return JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>;
}

/** model.sig as written by signPackage (for tests that tamper with it). */
export interface BundleJson {
  mediaType: string;
  verificationMaterial: {
    publicKey?: { hint: string };
    x509CertificateChain?: { certificates: { rawBytes: string }[] };
    certificate?: { rawBytes: string };
    tlogEntries?: unknown[];
  };
  dsseEnvelope: { payload: string; payloadType: string; signatures: { sig: string; keyid?: string }[] };
}

export interface StatementJson {
  _type: string;
  subject: { name: string; digest: { sha256: string } }[];
  predicateType: string;
  predicate: {
    serialization: Record<string, unknown>;
    resources: { name: string; algorithm: string; digest: string }[];
  };
}

export async function readBundle(dir: string): Promise<BundleJson> {
  return JSON.parse(await readFile(join(dir, SIGNATURE_FILE), 'utf8')) as BundleJson;
}

export async function editBundle(dir: string, edit: (bundle: BundleJson) => void): Promise<void> {
  const bundle = await readBundle(dir);
  edit(bundle);
  await writeFile(join(dir, SIGNATURE_FILE), JSON.stringify(bundle));
}

/**
 * Signs any statement the way the format prescribes, built here by hand (not by signPackage): for tests of
 * statements a trusted but buggy or malicious signer could produce. ECDSA P-256 keys only.
 */
export function handSignedBundle(statement: unknown, privateKeyPem: string): BundleJson {
  const payloadType = 'application/vnd.in-toto+json';
  const payload = Buffer.from(JSON.stringify(statement));
  const pae = Buffer.concat([
    Buffer.from(`DSSEv1 ${payloadType.length} ${payloadType} ${payload.length} `),
    payload,
  ]);
  const publicPem = createPublicKey(privateKeyPem).export({ type: 'spki', format: 'pem' });
  return {
    mediaType: 'application/vnd.dev.sigstore.bundle.v0.3+json',
    verificationMaterial: { publicKey: { hint: sha256Hex(Buffer.from(publicPem)) }, tlogEntries: [] },
    dsseEnvelope: {
      payload: payload.toString('base64'),
      payloadType,
      signatures: [{ sig: sign('sha256', pae, privateKeyPem).toString('base64') }],
    },
  };
}

/** A code-signing leaf of `issuer`, valid 7 days with an ECDSA P-256 key unless `options` say otherwise. */
export function codeSigningLeaf(
  issuer: CertificateAuthority,
  commonName: string,
  options: Partial<Omit<IssueCodeSigningCertificateOptions, 'issuer' | 'commonName'>> = {},
): CertifiedKeyPair {
  return issueCodeSigningCertificate({
    issuer,
    commonName,
    validityDays: 7,
    keyType: 'ecdsa-p256',
    ...options,
  });
}

/** The certificate-method signer of `leaf`; the bundle's chain is the leaf, then `chain` in order. */
export function certificateSigner(
  leaf: { privateKeyPem: string; certificatePem: string },
  ...chain: { certificatePem: string }[]
): Signer {
  return {
    method: 'certificate',
    privateKeyPem: leaf.privateKeyPem,
    certificateChainPem: [leaf.certificatePem, ...chain.map((c) => c.certificatePem)],
  };
}
