/**
 * Signing and verification of EdgeFleet model packages: OpenSSF Model Signing v1.0 (in-toto statement of
 * per-file SHA-256 digests, DSSE envelope, Sigstore bundle in `model.sig`), key and certificate methods,
 * verified offline. See format.ts for the exact format and where we chose something the reference leaves open.
 */
export {
  SIGNATURE_FILE,
  BUNDLE_MEDIA_TYPE,
  IN_TOTO_PAYLOAD_TYPE,
  MODEL_SIGNING_PREDICATE_TYPE,
} from './format.js';
export type { SignatureBundle, ModelSignatureStatement } from './format.js';
export { digestFiles, compareResourcePaths, listFiles } from './digest.js';
export type {
  FileDigest,
  DigestOptions,
  DigestProgress,
  DigestProgressListener,
  ListFilesOptions,
  ListedFile,
  ListingLimits,
  PackageFolderCheck,
} from './digest.js';
export { signPackage, loadSigner, SignerSchema } from './sign.js';
export type {
  Signer,
  SignerDescription,
  SignatureSummary,
  SignPackageOptions,
  LoadSignerOptions,
} from './sign.js';
export { verifyPackage } from './verify.js';
export { certificatePath, parseCertificate, pathRole } from './certificates.js';
export type { ParsedCertificate } from './certificates.js';
export type { VerifiedSignature, VerifyPackageOptions } from './verify.js';
export { loadTrustFolder, TrustPolicySchema } from './trust.js';
export type { TrustPolicy } from './trust.js';
export { PackageVerificationError, UnsupportedFileError, SigningError, TrustPolicyError } from './errors.js';
export type { PackageVerificationReason, UnsupportedFileKind } from './errors.js';
export { publicKeyFingerprint } from './keys.js';
export type { SigningKeyType } from './keys.js';
export {
  generateKeyPair,
  createRootCa,
  createIntermediateCa,
  issueCodeSigningCertificate,
  issueCertificate,
  IssueCertificateOptionsSchema,
} from './pki.js';
export type {
  KeyType,
  KeyPairPem,
  CertifiedKeyPair,
  CertificateAuthority,
  DistinguishedName,
  IssueCertificateOptions,
  CreateRootCaOptions,
  CreateIntermediateCaOptions,
  IssueCodeSigningCertificateOptions,
} from './pki.js';
