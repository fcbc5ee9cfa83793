/*
 * The on-disk signature format: OpenSSF Model Signing v1.0, as written by sigstore/model-transparency
 * (`model_signing`, the reference implementation), checked against its source:
 *
 *   model.sig = Sigstore bundle JSON (protobuf JSON names)
 *     { mediaType: "application/vnd.dev.sigstore.bundle.v0.3+json",
 *       verificationMaterial: { publicKey: { hint } | x509CertificateChain: { certificates: [{ rawBytes }] },
 *                               tlogEntries: [] },
 *       dsseEnvelope: { payload: base64(statement), payloadType: "application/vnd.in-toto+json",
 *                       signatures: [{ sig: base64(signature over PAE(payloadType, payload)) }] } }
 *   statement = in-toto Statement v1
 *     { _type: "https://in-toto.io/Statement/v1",
 *       subject: [{ name: <model name>, digest: { sha256: SHA-256(concatenation of every resource's raw
 *                                                              32-byte digest, in resource order) } }],
 *       predicateType: "https://model_signing/signature/v1.0",
 *       predicate: { serialization: { method: "files", hash_type: "sha256", allow_symlinks: false,
 *                                     ignore_paths: ["model.sig"] },
 *                    resources: [{ name: <posix path>, algorithm: "sha256", digest: <hex> }, …] } }
 *
 * Matches the reference: the root digest (hasher over each resource's digest bytes, in order); resource order
 * (path components compared one by one, `compareResourcePaths`); PAE `DSSEv1 <len> <type> <len> <body>`;
 * ECDSA signatures DER-encoded with the hash matching the curve (P-256 → SHA-256); the key method's
 * `publicKey.hint` = hex SHA-256 of the public key's SubjectPublicKeyInfo PEM text; the certificate method's
 * `x509CertificateChain` = leaf first, then the rest of the chain, DER in `rawBytes`; `keyid` left out.
 *
 * Our choices where the reference's output is not observable or where we differ on purpose:
 * - Statement JSON: two-space indented, keys in the order above (the reference's protobuf JSON key order
 *   within the predicate is not specified). The payload is signed as bytes, so any order verifies.
 * - Ed25519 keys are accepted for both methods (signature = raw 64 bytes, per RFC 8032). The reference signs
 *   with EC keys only, so its verifier will not accept our Ed25519 bundles; P-256 bundles interoperate.
 * - Verification is stricter than the reference: certificates are checked at the verifier's `now` (the
 *   reference checks at the leaf's notBefore), the leaf needs keyUsage digitalSignature AND extendedKeyUsage
 *   codeSigning (the reference accepts either), exactly one signature, a key hint, no transparency-log
 *   entries (we are offline and cannot check them), canonical base64, and no unknown fields in the bundle.
 *   Every file except model.sig must be listed: a signed `ignore_paths` never exempts other files here.
 * - Offline only: `tlogEntries` is always empty; no Rekor, no Fulcio, no timestamps.
 */
import { createHash } from 'node:crypto';
import { z } from 'zod';
import { compareResourcePaths, invalidResourcePathReason, type FileDigest } from './digest.js';

/** The bundle's file name inside a package folder. */
export const SIGNATURE_FILE = 'model.sig';
export const BUNDLE_MEDIA_TYPE = 'application/vnd.dev.sigstore.bundle.v0.3+json';
export const IN_TOTO_PAYLOAD_TYPE = 'application/vnd.in-toto+json';
export const IN_TOTO_STATEMENT_TYPE = 'https://in-toto.io/Statement/v1';
export const MODEL_SIGNING_PREDICATE_TYPE = 'https://model_signing/signature/v1.0';

/** DSSE v1 Pre-Authentication Encoding: what the signature actually covers. */
export function preAuthenticationEncoding(payloadType: string, payload: Buffer): Buffer {
  const type = Buffer.from(payloadType, 'utf8');
  return Buffer.concat([
    Buffer.from(`DSSEv1 ${type.length} `, 'utf8'),
    type,
    Buffer.from(` ${payload.length} `, 'utf8'),
    payload,
  ]);
}

/** Base64 that decodes to exactly one byte string (canonical padding, no stray characters). */
const canonicalBase64 = z
  .string()
  .min(1)
  .refine((s) => Buffer.from(s, 'base64').toString('base64') === s, 'expected canonical base64');

const hexSha256 = z.string().regex(/^[0-9a-f]{64}$/, 'expected 64 lower-case hex digits (a SHA-256)');

const CertificateRawSchema = z.strictObject({ rawBytes: canonicalBase64 });

const VerificationMaterialSchema = z
  .strictObject({
    publicKey: z.strictObject({ hint: hexSha256 }).optional(),
    x509CertificateChain: z
      .strictObject({ certificates: z.array(CertificateRawSchema).min(1).max(10) })
      .optional(),
    certificate: CertificateRawSchema.optional(),
    tlogEntries: z
      .array(z.unknown())
      .max(0, 'transparency log entries cannot be verified offline; expected none')
      .optional(),
  })
  .superRefine((material, ctx) => {
    const present = (['publicKey', 'x509CertificateChain', 'certificate'] as const).filter(
      (k) => material[k] !== undefined,
    );
    if (present.length !== 1)
      ctx.addIssue({
        code: 'custom',
        message: `expected exactly one of publicKey, x509CertificateChain, certificate; found ${
          present.length === 0 ? 'none' : present.join(', ')
        }`,
      });
  });

export const SignatureBundleSchema = z.strictObject({
  mediaType: z.literal(BUNDLE_MEDIA_TYPE),
  verificationMaterial: VerificationMaterialSchema,
  dsseEnvelope: z.strictObject({
    payload: canonicalBase64,
    payloadType: z.literal(IN_TOTO_PAYLOAD_TYPE),
    signatures: z
      .array(z.strictObject({ sig: canonicalBase64, keyid: z.string().optional() }))
      .length(1, 'expected exactly one signature'),
  }),
});
export type SignatureBundle = z.infer<typeof SignatureBundleSchema>;

const resourceName = z.string().superRefine((name, ctx) => {
  const reason = invalidResourcePathReason(name);
  if (reason) ctx.addIssue({ code: 'custom', message: `resource name ${JSON.stringify(name)}: ${reason}` });
});

/** The signed statement. Unknown fields are ignored, as v1.0 tells verifiers to; it is signed, so harmless. */
export const ModelSignatureStatementSchema = z.object({
  _type: z.literal(IN_TOTO_STATEMENT_TYPE),
  subject: z
    .array(z.object({ name: z.string(), digest: z.object({ sha256: hexSha256 }) }))
    .length(1, 'expected exactly one subject (the model)'),
  predicateType: z.literal(MODEL_SIGNING_PREDICATE_TYPE),
  predicate: z.object({
    serialization: z.object({
      method: z.literal('files'),
      hash_type: z.literal('sha256'),
      allow_symlinks: z.boolean(),
      ignore_paths: z.array(z.string()).optional(),
    }),
    resources: z
      .array(z.object({ name: resourceName, algorithm: z.literal('sha256'), digest: hexSha256 }))
      .min(1, 'expected at least one resource'),
  }),
});
export type ModelSignatureStatement = z.infer<typeof ModelSignatureStatementSchema>;

/** The subject digest: SHA-256 over the resources' raw digests, in the statement's order. */
export function rootDigest(resourceDigestsHex: readonly string[]): string {
  const hash = createHash('sha256');
  for (const digest of resourceDigestsHex) hash.update(Buffer.from(digest, 'hex'));
  return hash.digest('hex');
}

export function buildStatement(modelName: string, files: readonly FileDigest[]): ModelSignatureStatement {
  const sorted = [...files].sort((a, b) => compareResourcePaths(a.path, b.path));
  return {
    _type: IN_TOTO_STATEMENT_TYPE,
    subject: [{ name: modelName, digest: { sha256: rootDigest(sorted.map((f) => f.sha256)) } }],
    predicateType: MODEL_SIGNING_PREDICATE_TYPE,
    predicate: {
      serialization: {
        method: 'files',
        hash_type: 'sha256',
        allow_symlinks: false,
        ignore_paths: [SIGNATURE_FILE],
      },
      resources: sorted.map((f) => ({ name: f.path, algorithm: 'sha256', digest: f.sha256 })),
    },
  };
}

/** One line per zod issue: where in the document, and what was wrong. */
export function describeIssues(error: z.ZodError): string {
  return error.issues
    .slice(0, 5)
    .map((issue) => `${issue.path.length ? issue.path.join('.') : '(root)'}: ${issue.message}`)
    .join('; ');
}
