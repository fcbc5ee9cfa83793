import type { KeyObject } from 'node:crypto';
import { resolve } from 'node:path';
import {
  parseCertificate,
  parseCertificatePem,
  verifyCertificateChain,
  type ParsedCertificate,
} from './certificates.js';
import {
  hashListedFiles,
  listFiles,
  type ListingLimits,
  type PackageFolderCheck,
  type DigestProgressListener,
  type FileDigest,
  type ListedFile,
} from './digest.js';
import { PackageVerificationError, UnsupportedFileError } from './errors.js';
import { PackageFileError } from '../package/errors.js';
import { jsonSyntaxErrorPosition, readPackageFile, type PackageFileCheck } from '../package/package-file.js';
import {
  ModelSignatureStatementSchema,
  SIGNATURE_FILE,
  SignatureBundleSchema,
  describeIssues,
  preAuthenticationEncoding,
  rootDigest,
  type ModelSignatureStatement,
  type SignatureBundle,
} from './format.js';
import {
  loadVerificationKey,
  publicKeyFingerprint,
  publicKeyHint,
  signingKeyType,
  verifyBytes,
  type SigningKeyType,
} from './keys.js';
import type { SignerDescription } from './sign.js';
import { TrustPolicySchema, type TrustPolicy } from './trust.js';

export interface VerifiedSignature {
  method: 'key' | 'certificate';
  signer: SignerDescription;
  /** The statement's subject name. */
  modelName: string;
  /** The statement's subject digest (SHA-256 over all file digests). */
  subjectDigest: string;
  /** Every signed file, as found on disk (all matched the statement). */
  files: FileDigest[];
}

export interface VerifyPackageOptions {
  /** The time certificates must be valid at; default: now. */
  now?: Date;
  onProgress?: DigestProgressListener;
  /** How messages name the folder where `dir` is no name for people (a held descriptor's path); default `dir`. */
  shownDir?: string;
  /** Asked about each file read (model.sig, every file hashed) on its descriptor; see PackageFileCheck. */
  fileCheck?: PackageFileCheck;
  /** Asked about each folder listed, on its descriptor; see listFiles. */
  folderCheck?: PackageFolderCheck;
  /** Bounds on the listing of the package's files; unbounded without. */
  listingLimits?: ListingLimits;
}

/** Largest model.sig we read; a bundle listing 100 000 files is ~20 MB. */
const MAX_BUNDLE_BYTES = 64 * 1024 * 1024;

/**
 * The check every component runs before trusting a package folder. In order, cheapest first: model.sig
 * exists and is a well-formed bundle; the signer is trusted (key in the policy, or a certificate chain
 * valid at `now` to a trusted root, leaf allowed to sign code); the signature verifies over the DSSE PAE;
 * the statement is a consistent v1.0 model signature; the files on disk are exactly the listed ones
 * (model.sig aside) and each has its listed SHA-256.
 *
 * Resolves with what was verified; rejects with `PackageVerificationError` for any package it will not
 * trust. Only a broken trust policy (TypeError) or I/O failures unrelated to the package's content
 * reject otherwise.
 */
export async function verifyPackage(
  dir: string,
  trust: TrustPolicy,
  opts: VerifyPackageOptions = {},
): Promise<VerifiedSignature> {
  const absolute = resolve(dir);
  const now = opts.now ?? new Date();
  const policy = TrustPolicySchema.parse(trust);

  const bundle = await readBundle(absolute, opts.shownDir ?? absolute, opts.fileCheck);
  const envelope = bundle.dsseEnvelope;
  const payload = Buffer.from(envelope.payload, 'base64');
  const signature = Buffer.from(envelope.signatures[0]?.sig ?? '', 'base64');
  const pae = preAuthenticationEncoding(envelope.payloadType, payload);

  const signer = bundle.verificationMaterial.publicKey
    ? verifyKeySignature(bundle.verificationMaterial.publicKey.hint, policy, pae, signature)
    : verifyCertificateSignature(bundle, policy, now, pae, signature);

  const statement = parseStatement(payload);
  const expected = new Map(statement.predicate.resources.map((r) => [r.name, r.digest]));

  let onDisk: ListedFile[];
  try {
    onDisk = await listFiles(absolute, [SIGNATURE_FILE], {
      ...(opts.folderCheck && { folderCheck: opts.folderCheck }),
      ...(opts.fileCheck && { fileCheck: opts.fileCheck }),
      ...(opts.listingLimits && { limits: opts.listingLimits }),
    });
  } catch (error) {
    if (error instanceof UnsupportedFileError)
      throw new PackageVerificationError('file-unsupported', `${error.message} (found while verifying)`, {
        path: error.path,
      });
    throw changedWhileVerifying(error);
  }
  const present = new Set(onDisk.map((f) => f.path));
  for (const name of [...expected.keys()].sort())
    if (!present.has(name))
      throw new PackageVerificationError(
        'file-missing',
        `file ${name} is listed in the signature but missing from the package`,
        { path: name },
      );
  for (const file of onDisk)
    if (!expected.has(file.path))
      throw new PackageVerificationError(
        'file-unlisted',
        `file ${file.path} is in the package but not in the signature; expected only the ${expected.size} signed file(s)`,
        { path: file.path },
      );

  const files = await hashListedFiles(
    absolute,
    onDisk,
    opts.onProgress,
    (file) => {
      const want = expected.get(file.path);
      if (file.sha256 !== want)
        throw new PackageVerificationError(
          'file-modified',
          `file ${file.path} was modified: its SHA-256 is ${file.sha256}, the signature expects ${want}`,
          { path: file.path },
        );
    },
    opts.fileCheck,
  ).catch((error: unknown) => {
    throw changedWhileVerifying(error);
  });

  const subject = statement.subject[0] as ModelSignatureStatement['subject'][number];
  return {
    method: signer.method,
    signer,
    modelName: subject.name,
    subjectDigest: subject.digest.sha256,
    files,
  };
}

/**
 * A file removed, or replaced by a symlink (itself or a folder on its way), between listing and hashing, or one
 * the agent may not read: still a verdict on the package, naming the file.
 */
function changedWhileVerifying(error: unknown): unknown {
  if (!(error instanceof PackageFileError)) return error;
  if (error.problem === 'missing')
    return new PackageVerificationError(
      'file-missing',
      `file ${error.file} disappeared while the package was being verified`,
      { path: error.file },
    );
  if (error.problem === 'symlink' || error.problem === 'not-regular')
    return new PackageVerificationError(
      'file-unsupported',
      `file ${error.file} became ${error.problem === 'symlink' ? 'a symlink' : 'something other than a regular file'} while the package was being verified: ${error.message}`,
      { path: error.file },
    );
  if (error.problem === 'unreadable')
    return new PackageVerificationError('file-unreadable', `${error.message} (found while verifying)`, {
      path: error.file,
    });
  return error;
}

/** model.sig of the package at `dir`, which messages call `shownDir`. */
async function readBundle(
  dir: string,
  shownDir: string,
  fileCheck: PackageFileCheck | undefined,
): Promise<SignatureBundle> {
  const bytes = await readPackageFile(dir, SIGNATURE_FILE, {
    maxBytes: MAX_BUNDLE_BYTES,
    ...(fileCheck && { fileCheck }),
  }).catch((error: unknown) => {
    if (!(error instanceof PackageFileError)) throw error;
    if (error.problem === 'missing')
      throw new PackageVerificationError(
        'bundle-missing',
        `${shownDir} has no ${SIGNATURE_FILE}; every package must carry its signature bundle`,
        { path: SIGNATURE_FILE },
      );
    if (error.problem === 'too-large')
      throw new PackageVerificationError('bundle-malformed', error.message, { path: SIGNATURE_FILE });
    if (error.problem === 'unreadable') throw error;
    throw new PackageVerificationError(
      'file-unsupported',
      `${SIGNATURE_FILE} is not a regular file (a symlink or special file); expected the signature bundle JSON`,
      { path: SIGNATURE_FILE },
    );
  });
  let json: unknown;
  try {
    json = JSON.parse(bytes.toString('utf8'));
  } catch (error) {
    throw new PackageVerificationError(
      'bundle-malformed',
      `${SIGNATURE_FILE} is not JSON${jsonSyntaxErrorPosition(error)}; expected a Sigstore bundle`,
      { path: SIGNATURE_FILE },
    );
  }
  const parsed = SignatureBundleSchema.safeParse(json);
  if (!parsed.success)
    throw new PackageVerificationError(
      'bundle-malformed',
      `${SIGNATURE_FILE} is not a valid model signature bundle: ${describeIssues(parsed.error)}`,
      { path: SIGNATURE_FILE },
    );
  return parsed.data;
}

function verifyKeySignature(
  hint: string,
  policy: TrustPolicy,
  pae: Buffer,
  signature: Buffer,
): SignerDescription {
  const trusted = (policy.publicKeysPem ?? []).map((pem, i) => {
    try {
      return loadVerificationKey(pem);
    } catch (error) {
      throw new TypeError(`trust policy public key #${i + 1}: ${(error as Error).message}`);
    }
  });
  if (trusted.length === 0)
    throw new PackageVerificationError(
      'untrusted-key',
      `${SIGNATURE_FILE} is signed with a key (hint ${hint}), but the trust policy holds no public keys`,
      { path: SIGNATURE_FILE },
    );
  const key = trusted.find((k) => publicKeyHint(k) === hint);
  if (!key)
    throw new PackageVerificationError(
      'untrusted-key',
      `${SIGNATURE_FILE} is signed with an untrusted key: its hint ${hint} matches none of the ` +
        `${trusted.length} trusted public key(s) (fingerprints ${trusted.map(publicKeyFingerprint).join(', ')})`,
      { path: SIGNATURE_FILE },
    );
  return checkSignature(key, pae, signature, () => ({
    method: 'key',
    keyType: signingKeyType(key) as SigningKeyType,
    fingerprint: publicKeyFingerprint(key),
  }));
}

function verifyCertificateSignature(
  bundle: SignatureBundle,
  policy: TrustPolicy,
  now: Date,
  pae: Buffer,
  signature: Buffer,
): SignerDescription {
  const material = bundle.verificationMaterial;
  const raw =
    material.x509CertificateChain?.certificates ?? (material.certificate ? [material.certificate] : []);
  const chain = raw.map((c, i) => {
    try {
      return parseCertificate(Buffer.from(c.rawBytes, 'base64'));
    } catch (error) {
      throw new PackageVerificationError(
        'bundle-malformed',
        `${SIGNATURE_FILE}: certificate #${i + 1} of the chain is not a DER X.509 certificate (${(error as Error).message})`,
        { path: SIGNATURE_FILE },
      );
    }
  });
  const roots = (policy.rootCertificatesPem ?? []).map((pem, i) => {
    try {
      return parseCertificatePem(pem);
    } catch (error) {
      throw new TypeError(
        `trust policy root certificate #${i + 1} does not parse: ${(error as Error).message}`,
      );
    }
  });
  const leaf: ParsedCertificate = verifyCertificateChain(chain, roots, now);
  const key = leaf.x509.publicKey;
  const keyType = signingKeyType(key);
  if (typeof keyType !== 'string')
    throw new PackageVerificationError(
      'untrusted-chain',
      `signing certificate ${leaf.subject} certifies ${keyType.unsupported}; expected ECDSA (P-256, P-384, P-521) or Ed25519`,
      { path: SIGNATURE_FILE, certificate: leaf.subject },
    );
  return checkSignature(key, pae, signature, () => ({
    method: 'certificate',
    keyType,
    fingerprint: publicKeyFingerprint(key),
    subject: leaf.subject,
    issuer: leaf.issuer,
    serialNumber: leaf.serialNumber,
    notAfter: leaf.notAfter.toISOString(),
  }));
}

function checkSignature(
  key: KeyObject,
  pae: Buffer,
  signature: Buffer,
  describe: () => SignerDescription,
): SignerDescription {
  if (!verifyBytes(key, pae, signature))
    throw new PackageVerificationError(
      'signature-invalid',
      `the signature in ${SIGNATURE_FILE} does not verify over its statement with the signer's key ` +
        `(${publicKeyFingerprint(key)}): the bundle was altered after signing`,
      { path: SIGNATURE_FILE },
    );
  return describe();
}

function parseStatement(payload: Buffer): ModelSignatureStatement {
  const malformed = (what: string) =>
    new PackageVerificationError('bundle-malformed', `${SIGNATURE_FILE}: the signed statement ${what}`, {
      path: SIGNATURE_FILE,
    });
  let json: unknown;
  try {
    json = JSON.parse(payload.toString('utf8'));
  } catch (error) {
    throw malformed(`is not JSON (${(error as Error).message})`);
  }
  const parsed = ModelSignatureStatementSchema.safeParse(json);
  if (!parsed.success)
    throw malformed(`is not an OpenSSF model signature v1.0 statement: ${describeIssues(parsed.error)}`);
  const statement = parsed.data;
  const resources = statement.predicate.resources;
  const names = new Set<string>();
  for (const r of resources) {
    if (names.has(r.name)) throw malformed(`lists file ${r.name} twice`);
    if (r.name === SIGNATURE_FILE) throw malformed(`lists ${SIGNATURE_FILE}, the signature's own file`);
    names.add(r.name);
  }
  const subject = statement.subject[0] as ModelSignatureStatement['subject'][number];
  const computed = rootDigest(resources.map((r) => r.digest));
  if (computed !== subject.digest.sha256)
    throw malformed(
      `is inconsistent: its subject digest is ${subject.digest.sha256} but its resources hash to ${computed}`,
    );
  return statement;
}
