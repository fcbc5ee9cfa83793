import { createHash } from 'node:crypto';
import { constants } from 'node:fs';
import type { Dirent } from 'node:fs';
import { lstat, open, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { UnsupportedFileError, type UnsupportedFileKind } from './errors.js';

/** One regular file of a package and its SHA-256. */
export interface FileDigest {
  /** Path relative to the package folder, posix separators (`weights/part-1.bin`). */
  path: string;
  /** Lower-case hex SHA-256 of the file's bytes. */
  sha256: string;
  /** Size in bytes when it was hashed. */
  size: number;
}

/** Progress over a whole digest run: `bytesDone` of `bytesTotal` across all files, now inside `file`. */
export interface DigestProgress {
  file: string;
  bytesDone: number;
  bytesTotal: number;
}

export type DigestProgressListener = (progress: DigestProgress) => void;

export interface DigestOptions {
  /**
   * Package-relative posix paths to leave out; a folder leaves out everything under it (as the OpenSSF
   * reference implementation's `ignore_paths`). Ignored paths are not inspected at all.
   */
  ignore?: string[];
  onProgress?: DigestProgressListener;
}

/** A regular file found by `listFiles`, before hashing. */
export interface ListedFile {
  path: string;
  size: number;
}

/**
 * Read size for hashing. Measured on this project's machines (bench/hashing.bench.mjs): with two buffers in
 * flight, 1 MiB reads reach ~95% of hashing the same bytes already in memory, while a stream's default
 * 64 KiB chunks reach ~55%; 16 MiB buys nothing and costs memory on small devices.
 */
const READ_SIZE = 1024 * 1024;

/** Read-only, and never through a symlink swapped in after listing (where the platform can refuse one). */
const OPEN_FLAGS = constants.O_RDONLY | (constants.O_NOFOLLOW ?? 0);

/**
 * SHA-256 of every regular file under `dir` (recursive), sorted as the OpenSSF Model Signing reference sorts
 * resources. Files are read in 1 MiB pieces, never whole. Rejects with `UnsupportedFileError` on the first
 * symlink or special file, naming it.
 */
export async function digestFiles(dir: string, opts: DigestOptions = {}): Promise<FileDigest[]> {
  const files = await listFiles(dir, opts.ignore ?? []);
  return hashListedFiles(dir, files, opts.onProgress);
}

/** Lists the regular files under `dir` without hashing them (sorted, ignore rules as in `digestFiles`). */
export async function listFiles(dir: string, ignore: readonly string[]): Promise<ListedFile[]> {
  const ignored = new Set(ignore.map(normalizeIgnorePath));
  const out: ListedFile[] = [];
  const walk = async (rel: string): Promise<void> => {
    const entries = await readdir(rel ? join(dir, rel) : dir, { withFileTypes: true });
    for (const entry of entries) {
      const relPath = rel ? `${rel}/${entry.name}` : entry.name;
      if (ignored.has(relPath)) continue;
      if (entry.isDirectory()) await walk(relPath);
      else if (entry.isFile()) out.push({ path: relPath, size: (await lstat(join(dir, relPath))).size });
      else throw new UnsupportedFileError(relPath, kindOf(entry));
    }
  };
  await walk('');
  return out.sort((a, b) => compareResourcePaths(a.path, b.path));
}

/** Hashes the given files (already listed, in order), reporting progress over all of them. */
export async function hashListedFiles(
  dir: string,
  files: readonly ListedFile[],
  onProgress?: DigestProgressListener,
  /** Called as each file is done; throwing stops the run (verification stops at the first bad file). */
  onFile?: (digest: FileDigest) => void,
): Promise<FileDigest[]> {
  const bytesTotal = files.reduce((sum, f) => sum + f.size, 0);
  let bytesBefore = 0;
  const out: FileDigest[] = [];
  // Two buffers shared by all files of this run: one being read into while the other is hashed.
  const buffers: [Buffer, Buffer] = [Buffer.allocUnsafe(READ_SIZE), Buffer.allocUnsafe(READ_SIZE)];
  for (const file of files) {
    const report = onProgress
      ? (done: number) => onProgress({ file: file.path, bytesDone: bytesBefore + done, bytesTotal })
      : undefined;
    const { sha256, size } = await hashFile(join(dir, file.path), buffers, report);
    const digest = { path: file.path, sha256, size };
    onFile?.(digest);
    out.push(digest);
    bytesBefore += file.size;
  }
  return out;
}

/**
 * Streams one file through SHA-256 with double buffering: the next read is issued before the current piece
 * is hashed, so disk and hash overlap. Reads to end of file (not to the size seen when listing).
 */
async function hashFile(
  path: string,
  buffers: [Buffer, Buffer],
  report?: (bytesDone: number) => void,
): Promise<{ sha256: string; size: number }> {
  const hash = createHash('sha256');
  const handle = await open(path, OPEN_FLAGS);
  let pending: Promise<{ bytesRead: number }> | undefined;
  try {
    let position = 0;
    let which = 0;
    pending = handle.read(buffers[0], 0, READ_SIZE, 0);
    for (;;) {
      const { bytesRead } = await pending;
      pending = undefined;
      if (bytesRead === 0) break;
      const current = buffers[which as 0 | 1];
      position += bytesRead;
      which ^= 1;
      pending = handle.read(buffers[which as 0 | 1], 0, READ_SIZE, position);
      hash.update(current.subarray(0, bytesRead));
      report?.(position);
    }
    if (position === 0) report?.(0);
    return { sha256: hash.digest('hex'), size: position };
  } finally {
    // A listener that throws leaves a read in flight; let it land before the descriptor goes away.
    await pending?.catch(() => undefined);
    await handle.close();
  }
}

/**
 * Orders resource names as the reference implementation does (Python sorts `PurePosixPath`s component by
 * component, each by code point): `a/b` comes before `a-b`, unlike a plain string sort.
 */
export function compareResourcePaths(a: string, b: string): number {
  const pa = a.split('/');
  const pb = b.split('/');
  for (let i = 0; i < Math.min(pa.length, pb.length); i++) {
    const c = compareCodePoints(pa[i] as string, pb[i] as string);
    if (c !== 0) return c;
  }
  return pa.length - pb.length;
}

function compareCodePoints(a: string, b: string): number {
  if (a === b) return 0;
  const ca = Array.from(a, (ch) => ch.codePointAt(0) as number);
  const cb = Array.from(b, (ch) => ch.codePointAt(0) as number);
  for (let i = 0; i < Math.min(ca.length, cb.length); i++) {
    const d = (ca[i] as number) - (cb[i] as number);
    if (d !== 0) return d;
  }
  return ca.length - cb.length;
}

/**
 * Why `name` cannot be a resource name (a package-relative posix path of a file), or undefined when it can.
 * Guards verification against names that would reach outside the package folder.
 */
export function invalidResourcePathReason(name: string): string | undefined {
  if (name.length === 0) return 'it is empty';
  if (name.includes('\0')) return 'it contains a NUL character';
  if (name.includes('\\')) return 'it contains a backslash';
  if (name.startsWith('/')) return 'it is absolute';
  if (name.split('/').some((part) => part === '' || part === '.' || part === '..'))
    return 'it has an empty, "." or ".." component';
  return undefined;
}

function normalizeIgnorePath(path: string): string {
  const trimmed = path.replace(/^\.\//, '').replace(/\/+$/, '');
  const reason = invalidResourcePathReason(trimmed);
  if (reason)
    throw new TypeError(`ignore path ${JSON.stringify(path)} is not a package-relative path: ${reason}`);
  return trimmed;
}

function kindOf(entry: Dirent): UnsupportedFileKind {
  if (entry.isSymbolicLink()) return 'symlink';
  if (entry.isFIFO()) return 'fifo';
  if (entry.isSocket()) return 'socket';
  if (entry.isBlockDevice()) return 'block-device';
  if (entry.isCharacterDevice()) return 'character-device';
  return 'unknown';
}
