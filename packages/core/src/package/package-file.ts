import type { Stats } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { PackageFileError } from './errors.js';
import { openPackagePath } from './package-path.js';

/** Largest manifest.json read: a manifest holds names, shapes and a few labels, each bounded by its schema. */
export const MAX_MANIFEST_BYTES = 1024 * 1024;

export interface ReadPackageFileOptions {
  /** Most bytes accepted; a larger file is refused before anything is read. */
  maxBytes: number;
  /** How messages name the file; default its package-relative path. */
  label?: string;
  /** Asked about the file opened (its fstat) before a byte is read; see PackageFileCheck. */
  fileCheck?: PackageFileCheck;
}

/**
 * A check of each package file on the descriptor it is read from (owner, group, mode), for a reader acting for
 * someone else: the reason it may not be read (the message then says "`<file>` cannot be read: <reason>"), or
 * undefined. It sees the very file read, whatever was moved into the folder after any check by name.
 */
export type PackageFileCheck = (file: Stats) => string | undefined;

/** PackageFileError 'unreadable' where `check` refuses `st`. */
export function applyFileCheck(check: PackageFileCheck | undefined, st: Stats, label: string): void {
  const reason = check?.(st);
  if (reason !== undefined)
    throw new PackageFileError('unreadable', label, `${label} cannot be read: ${reason}`);
}

/**
 * The bytes of a regular file of a package, read safely from a folder someone else may control: `path` is
 * package-relative (plain names: no `..`, nothing absolute), opened under the package folder `root` with no
 * symlink followed anywhere below `root` (a linked folder on the way is refused, not only a linked file: see
 * package-path.ts) and without blocking, checked on the descriptor (fstat: a regular file, at most `maxBytes`),
 * then read from that same descriptor, at most the size fstat gave. So a FIFO, a device, or a link to either (or
 * to a file or folder outside the package) is refused without a byte being read, and no path swap between check
 * and read can change what is read. Errors: PackageFileError.
 */
export async function readPackageFile(
  root: string,
  path: string,
  options: ReadPackageFileOptions,
): Promise<Buffer> {
  const label = options.label ?? path;
  const handle = await openPackagePath(root, path, label);
  try {
    const st = await handle.stat();
    if (!st.isFile()) {
      throw new PackageFileError(
        'not-regular',
        label,
        `${label} is not a regular file (it is ${describeType(st)}); expected a regular file`,
      );
    }
    applyFileCheck(options.fileCheck, st, label);
    if (st.size > options.maxBytes) {
      throw new PackageFileError(
        'too-large',
        label,
        `${label} is ${st.size} bytes; expected at most ${options.maxBytes}`,
      );
    }
    return await readWhole(handle, st.size);
  } catch (error) {
    if (error instanceof PackageFileError) throw error;
    const code = (error as NodeJS.ErrnoException).code ?? 'an I/O error';
    throw new PackageFileError('unreadable', label, `${label} cannot be read (${code})`);
  } finally {
    await handle.close();
  }
}

/**
 * The size of a regular file of a package, found as readPackageFile would open it (no symlink below `root`):
 * for checks made before reading it. Errors: PackageFileError, as readPackageFile's.
 */
export async function packageFileSize(
  root: string,
  path: string,
  label = path,
  fileCheck?: PackageFileCheck,
): Promise<number> {
  const handle = await openPackagePath(root, path, label);
  try {
    const st = await handle.stat();
    if (!st.isFile())
      throw new PackageFileError(
        'not-regular',
        label,
        `${label} is not a regular file (it is ${describeType(st)}); expected a regular file`,
      );
    applyFileCheck(fileCheck, st, label);
    return st.size;
  } finally {
    await handle.close();
  }
}

/** Up to `size` bytes from the start of the file; fewer when it shrank since fstat (the caller checks them). */
async function readWhole(handle: FileHandle, size: number): Promise<Buffer> {
  const bytes = Buffer.allocUnsafe(size);
  let filled = 0;
  while (filled < bytes.length) {
    const { bytesRead } = await handle.read(bytes, filled, bytes.length - filled, filled);
    if (bytesRead === 0) break;
    filled += bytesRead;
  }
  return filled === bytes.length ? bytes : bytes.subarray(0, filled);
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
