/** No package where one was expected: the agent maps this to NOT_FOUND. */
export class PackageNotFoundError extends Error {
  override readonly name = 'PackageNotFoundError';
  constructor(
    readonly path: string,
    detail?: string,
  ) {
    super(`no model package at ${path}${detail ? `: ${detail}` : ''}`);
  }
}

/** A package that exists but cannot be used (bad manifest, missing model file): FAILED_PRECONDITION. */
export class PackageInvalidError extends Error {
  override readonly name = 'PackageInvalidError';
  constructor(
    readonly path: string,
    detail: string,
  ) {
    super(`model package ${path} is not valid: ${detail}`);
  }
}

export type ArchiveFailureReason =
  | 'not-found'
  | 'corrupt'
  | 'absolute-path'
  | 'path-traversal'
  | 'bad-path'
  | 'link'
  | 'special-file'
  | 'duplicate-entry'
  | 'too-many-entries'
  | 'entry-too-large'
  | 'too-large'
  | 'destination-exists';

/** A `.tar.gz` refused before anything reached its destination. `entry` names the archive member at fault. */
export class PackageArchiveError extends Error {
  override readonly name = 'PackageArchiveError';
  constructor(
    readonly reason: ArchiveFailureReason,
    message: string,
    readonly entry?: string,
  ) {
    super(message);
  }
}

export type PackageFileProblem =
  'bad-path' | 'missing' | 'symlink' | 'not-regular' | 'too-large' | 'unreadable';

/** A package file that cannot be read as one. The message names the file and what was expected, never its bytes. */
export class PackageFileError extends Error {
  override readonly name = 'PackageFileError';
  constructor(
    readonly problem: PackageFileProblem,
    /** The path as the caller named it (package-relative where the caller gave one). */
    readonly file: string,
    message: string,
    /**
     * The errno code of the failure behind it, where there was one (EMFILE tells a full descriptor table from a
     * missing right). Only the code: the errno error's message would name the path opened, which may be a
     * descriptor's /proc path.
     */
    readonly code?: string,
  ) {
    super(message);
  }
}
