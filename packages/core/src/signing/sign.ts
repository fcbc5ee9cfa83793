import { randomBytes, type KeyObject } from 'node:crypto';
import { open, readFile, rename, rm } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { z } from 'zod';
import { parseCertificatePem, type ParsedCertificate } from './certificates.js';
import { digestFiles, type DigestProgressListener, type FileDigest } from './digest.js';
import { SigningError } from './errors.js';
import {
  BUNDLE_MEDIA_TYPE,
  IN_TOTO_PAYLOAD_TYPE,
  SIGNATURE_FILE,
  buildStatement,
  preAuthenticationEncoding,
  type SignatureBundle,
} from './format.js';
import {
  loadSigningKey,
  publicKeyFingerprint,
  publicKeyHint,
  samePublicKey,
  signBytes,
  signingKeyType,
  type SigningKeyType,
} from './keys.js';

/** Who signs: a bare key (verifiers trust the public key) or a key with its certificate chain (leaf first). */
export const SignerSchema = z.discriminatedUnion('method', [
  z.strictObject({ method: z.literal('key'), privateKeyPem: z.string().min(1) }),
  z.strictObject({
    method: z.literal('certificate'),
    privateKeyPem: z.string().min(1),
    certificateChainPem: z.array(z.string().min(1)).min(1),
  }),
]);
export type Signer = z.infer<typeof SignerSchema>;

/** Who signed, as people and logs should see it. */
export type SignerDescription =
  | {
      method: 'key';
      keyType: SigningKeyType;
      /** Hex SHA-256 of the public key's SubjectPublicKeyInfo DER. */
      fingerprint: string;
    }
  | {
      method: 'certificate';
      keyType: SigningKeyType;
      fingerprint: string;
      subject: string;
      issuer: string;
      serialNumber: string;
      /** ISO 8601. */
      notAfter: string;
    };

export interface SignatureSummary {
  modelName: string;
  method: Signer['method'];
  signer: SignerDescription;
  /** The statement's subject digest: SHA-256 over all file digests. */
  subjectDigest: string;
  files: FileDigest[];
  /** Absolute path of the written model.sig. */
  bundlePath: string;
}

export interface SignPackageOptions {
  /** The statement's subject name; default: the folder's name (as the reference implementation does). */
  modelName?: string;
  onProgress?: DigestProgressListener;
  /** Aborts the hashing (a stopping server) between reads: rejects with its reason, writing no model.sig. */
  signal?: AbortSignal;
}

/**
 * Signs every regular file in `dir` (except an existing model.sig) and writes `dir/model.sig` atomically.
 * Rejects symlinks and special files (`UnsupportedFileError`) and signers that cannot sign (`SigningError`).
 */
export async function signPackage(
  dir: string,
  signer: Signer,
  opts: SignPackageOptions = {},
): Promise<SignatureSummary> {
  const absolute = resolve(dir);
  const prepared = prepareSigner(signer);
  const { signal, onProgress } = opts;
  signal?.throwIfAborted();
  const files = await digestFiles(absolute, {
    ignore: [SIGNATURE_FILE],
    // Progress comes after each read: a listener that throws stops the hashing there (digest.ts waits for
    // the read in flight before closing the file).
    ...((onProgress !== undefined || signal !== undefined) && {
      onProgress: (progress) => {
        signal?.throwIfAborted();
        onProgress?.(progress);
      },
    }),
  });
  signal?.throwIfAborted();
  if (files.length === 0) throw new SigningError(`${absolute} holds no files to sign`);
  const modelName = opts.modelName ?? basename(absolute);
  const statement = buildStatement(modelName, files);
  const payload = Buffer.from(JSON.stringify(statement, null, 2), 'utf8');
  const sig = signBytes(prepared.key, preAuthenticationEncoding(IN_TOTO_PAYLOAD_TYPE, payload));
  const bundle: SignatureBundle = {
    mediaType: BUNDLE_MEDIA_TYPE,
    verificationMaterial: { ...prepared.material, tlogEntries: [] },
    dsseEnvelope: {
      payload: payload.toString('base64'),
      payloadType: IN_TOTO_PAYLOAD_TYPE,
      signatures: [{ sig: sig.toString('base64') }],
    },
  };
  const bundlePath = join(absolute, SIGNATURE_FILE);
  await writeFileAtomically(bundlePath, `${JSON.stringify(bundle, null, 2)}\n`);
  return {
    modelName,
    method: signer.method,
    signer: prepared.description,
    subjectDigest: statement.subject[0]?.digest.sha256 ?? '',
    files, // digestFiles sorts as the statement does
    bundlePath,
  };
}

interface PreparedSigner {
  key: KeyObject;
  material: Pick<SignatureBundle['verificationMaterial'], 'publicKey' | 'x509CertificateChain'>;
  description: SignerDescription;
}

/** Checks the signer before any hashing: key usable, certificate for this very key. */
function prepareSigner(input: Signer): PreparedSigner {
  const parsed = SignerSchema.safeParse(input);
  if (!parsed.success) throw new SigningError(`invalid signer: ${parsed.error.issues[0]?.message ?? ''}`);
  const signer = parsed.data;
  let key: KeyObject;
  try {
    key = loadSigningKey(signer.privateKeyPem);
  } catch (error) {
    throw new SigningError(`signing key: ${(error as Error).message}`);
  }
  const keyType = signingKeyType(key) as SigningKeyType;
  const fingerprint = publicKeyFingerprint(key);
  if (signer.method === 'key')
    return {
      key,
      material: { publicKey: { hint: publicKeyHint(key) } },
      description: { method: 'key', keyType, fingerprint },
    };

  let chain: ParsedCertificate[];
  try {
    chain = signer.certificateChainPem.map(parseCertificatePem);
  } catch (error) {
    throw new SigningError(`certificate chain: not a PEM certificate (${(error as Error).message})`);
  }
  const leaf = chain[0] as ParsedCertificate;
  if (!samePublicKey(leaf.x509.publicKey, key))
    throw new SigningError(
      `the signing certificate ${leaf.subject} certifies a different key than the private key given ` +
        `(certificate key ${publicKeyFingerprint(leaf.x509.publicKey)}, private key's ${fingerprint})`,
    );
  return {
    key,
    material: {
      x509CertificateChain: { certificates: chain.map((c) => ({ rawBytes: c.der.toString('base64') })) },
    },
    description: {
      method: 'certificate',
      keyType,
      fingerprint,
      subject: leaf.subject,
      issuer: leaf.issuer,
      serialNumber: leaf.serialNumber,
      notAfter: leaf.notAfter.toISOString(),
    },
  };
}

/** Writes a temporary file next to `path`, flushes it, renames it over `path`, and flushes the folder. */
async function writeFileAtomically(path: string, text: string): Promise<void> {
  const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  try {
    const handle = await open(tmp, 'wx', 0o644);
    try {
      await handle.writeFile(text, 'utf8');
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(tmp, path);
  } catch (error) {
    await rm(tmp, { force: true });
    throw error;
  }
  // Make the rename itself durable; folders cannot be opened for sync on every platform.
  const folder = await open(join(path, '..'), 'r').catch(() => undefined);
  await folder
    ?.sync()
    .catch(() => undefined)
    .finally(() => folder.close());
}

export interface LoadSignerOptions {
  /** PEM private key (PKCS#8 or SEC1). */
  keyPath: string;
  /** PEM signing certificate: selects the certificate method. */
  certPath?: string;
  /** PEM file with the rest of the chain (intermediates, optionally the root). Needs `certPath`. */
  chainPath?: string;
}

/** Reads a signer from files; with `certPath` the certificate method, otherwise the key method. */
export async function loadSigner(opts: LoadSignerOptions): Promise<Signer> {
  if (opts.chainPath && !opts.certPath)
    throw new SigningError('a certificate chain was given without the signing certificate (certPath)');
  const privateKeyPem = await readText(opts.keyPath, 'private key');
  let signer: Signer;
  if (!opts.certPath) signer = { method: 'key', privateKeyPem };
  else {
    const leaf = splitPem(await readText(opts.certPath, 'signing certificate'), 'CERTIFICATE');
    if (leaf.length !== 1)
      throw new SigningError(
        `${opts.certPath} holds ${leaf.length} certificates; expected exactly one (the signer's)`,
      );
    const rest = opts.chainPath
      ? splitPem(await readText(opts.chainPath, 'certificate chain'), 'CERTIFICATE')
      : [];
    if (opts.chainPath && rest.length === 0)
      throw new SigningError(`${opts.chainPath} holds no PEM certificates`);
    signer = { method: 'certificate', privateKeyPem, certificateChainPem: [...leaf, ...rest] };
  }
  prepareSigner(signer);
  return signer;
}

async function readText(path: string, what: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (error) {
    throw new SigningError(
      `cannot read the ${what} at ${path}: ${(error as NodeJS.ErrnoException).code ?? error}`,
    );
  }
}

/** The PEM blocks with this label, in order. */
export function splitPem(text: string, label: string): string[] {
  const re = new RegExp(`-----BEGIN ${label}-----[\\s\\S]*?-----END ${label}-----`, 'g');
  return (text.match(re) ?? []).map((block) => `${block}\n`);
}
