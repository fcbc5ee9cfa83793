/** Why a package failed verification; each value names one check of `verifyPackage`. */
export type PackageVerificationReason =
  /** The package folder has no `model.sig`. */
  | 'bundle-missing'
  /** `model.sig` is not JSON, not a well-formed bundle, or its signed statement is not a v1.0 model signature. */
  | 'bundle-malformed'
  /** The DSSE signature does not verify over the statement with the signer's key. */
  | 'signature-invalid'
  /** A signed file's SHA-256 differs from the one in the statement. */
  | 'file-modified'
  /** A file the statement lists is not in the package. */
  | 'file-missing'
  /** The package holds a file the statement does not list. */
  | 'file-unlisted'
  /** The package holds a symbolic link or special file (only regular files can be signed). */
  | 'file-unsupported'
  /** A file or folder of the package cannot be read (its permissions, or an I/O error). */
  | 'file-unreadable'
  /** Key method: the signing key is none of the trusted public keys. */
  | 'untrusted-key'
  /** Certificate method: the chain does not lead to a trusted root, or a link in it is not a valid CA. */
  | 'untrusted-chain'
  /** A certificate in the chain expired before `now`. */
  | 'certificate-expired'
  /** A certificate in the chain is not valid until after `now`. */
  | 'certificate-not-yet-valid'
  /** The signing certificate lacks keyUsage digitalSignature or extendedKeyUsage codeSigning. */
  | 'certificate-not-code-signing';

/**
 * The one error `verifyPackage` throws for a package it will not trust. `reason` is for programs, the message
 * for people: it names the file or certificate at fault and what was expected.
 */
export class PackageVerificationError extends Error {
  override readonly name = 'PackageVerificationError';
  /** The package-relative path of the file at fault, when one is (`model.sig` for bundle faults). */
  readonly path?: string;
  /** The subject of the certificate at fault, when one is. */
  readonly certificate?: string;

  constructor(
    readonly reason: PackageVerificationReason,
    message: string,
    culprit: { path?: string; certificate?: string } = {},
  ) {
    super(message);
    if (culprit.path !== undefined) this.path = culprit.path;
    if (culprit.certificate !== undefined) this.certificate = culprit.certificate;
  }
}

/** The kind of a directory entry that is not a regular file or a folder. */
export type UnsupportedFileKind =
  'symlink' | 'fifo' | 'socket' | 'block-device' | 'character-device' | 'unknown';

/** `digestFiles` met something other than a regular file or folder; models are signed file by file. */
export class UnsupportedFileError extends Error {
  override readonly name = 'UnsupportedFileError';

  constructor(
    /** Path relative to the digested folder, posix separators. */
    readonly path: string,
    readonly kind: UnsupportedFileKind,
  ) {
    super(`${path} is a ${kind.replace('-', ' ')}; a model package may hold only regular files and folders`);
  }
}

/** Signing could not start: bad key, certificate that does not match the key, empty package. */
export class SigningError extends Error {
  override readonly name = 'SigningError';
}

/** A trust folder or trust policy that cannot be used. */
export class TrustPolicyError extends Error {
  override readonly name = 'TrustPolicyError';
}
