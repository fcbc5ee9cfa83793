import { constants, type Stats } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';

/** Largest manifest.json read: a manifest holds names, shapes and a few labels, each bounded by its schema. */
export const MAX_MANIFEST_BYTES = 1024 * 1024;

/**
 * Read-only; never through a symlink (the last path component); and an open that cannot block: a FIFO opens at
 * once (and is then refused as not a regular file) instead of holding a libuv thread until a writer appears.
 */
const PACKAGE_FILE_FLAGS = constants.O_RDONLY | (constants.O_NOFOLLOW ?? 0) | (constants.O_NONBLOCK ?? 0);

export type PackageFileProblem = 'missing' | 'symlink' | 'not-regular' | 'too-large' | 'unreadable';

/** A package file that cannot be read as one. The message names the file and what was expected, never its bytes. */
export class PackageFileError extends Error {
  override readonly name = 'PackageFileError';
  constructor(
    readonly problem: PackageFileProblem,
    /** The path as the caller named it (package-relative where the caller gave one). */
    readonly file: string,
    message: string,
  ) {
    super(message);
  }
}

export interface ReadPackageFileOptions {
  /** Most bytes accepted; a larger file is refused before anything is read. */
  maxBytes: number;
  /** How messages name the file (e.g. its package-relative path); default the path. */
  label?: string;
}

/**
 * The bytes of a regular file of a package, read safely from a folder someone else may control: opened without
 * following a symlink and without blocking, checked on the descriptor (fstat: a regular file, at most
 * `maxBytes`), then read from that same descriptor, at most the size fstat gave. So a FIFO, a device, or a
 * link to either (or to a file outside the package) is refused without a byte being read, and no path swap
 * between check and read can change what is read. Errors: PackageFileError.
 */
export async function readPackageFile(path: string, options: ReadPackageFileOptions): Promise<Buffer> {
  const label = options.label ?? path;
  let handle: FileHandle;
  try {
    handle = await open(path, PACKAGE_FILE_FLAGS);
  } catch (error) {
    throw openFailure(error as NodeJS.ErrnoException, label);
  }
  try {
    const st = await handle.stat();
    if (!st.isFile()) {
      throw new PackageFileError(
        'not-regular',
        label,
        `${label} is not a regular file (it is ${describeType(st)}); expected a regular file`,
      );
    }
    if (st.size > options.maxBytes) {
      throw new PackageFileError(
        'too-large',
        label,
        `${label} is ${st.size} bytes; expected at most ${options.maxBytes}`,
      );
    }
    const bytes = Buffer.allocUnsafe(st.size);
    let filled = 0;
    while (filled < bytes.length) {
      const { bytesRead } = await handle.read(bytes, filled, bytes.length - filled, filled);
      if (bytesRead === 0) break; // shrank since fstat: what is there is read, and checked by the caller
      filled += bytesRead;
    }
    return filled === bytes.length ? bytes : bytes.subarray(0, filled);
  } catch (error) {
    if (error instanceof PackageFileError) throw error;
    const code = (error as NodeJS.ErrnoException).code ?? 'an I/O error';
    throw new PackageFileError('unreadable', label, `${label} cannot be read (${code})`);
  } finally {
    await handle.close();
  }
}

function openFailure(error: NodeJS.ErrnoException, label: string): PackageFileError {
  switch (error.code) {
    case 'ENOENT':
    case 'ENOTDIR':
      return new PackageFileError('missing', label, `${label} does not exist; expected a regular file`);
    case 'ELOOP':
      return new PackageFileError(
        'symlink',
        label,
        `${label} is a symbolic link; expected a regular file (links are not followed in a package)`,
      );
    default:
      return new PackageFileError(
        'unreadable',
        label,
        `${label} cannot be opened (${error.code ?? 'an I/O error'}); expected a readable regular file`,
      );
  }
}

function describeType(st: Stats): string {
  if (st.isDirectory()) return 'a folder';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isSocket()) return 'a socket';
  return 'not a file';
}

/**
 * Where text stopped being valid JSON (" (at position N)", or "" when JSON.parse did not say), without any of its
 * bytes: JSON.parse's own message quotes the text it choked on, which for a file named by a caller could be
 * another file's first bytes.
 */
export function jsonSyntaxErrorPosition(error: unknown): string {
  const position = /at position (\d+)/.exec((error as Error)?.message ?? '')?.[1];
  return position === undefined ? '' : ` (at position ${position})`;
}
