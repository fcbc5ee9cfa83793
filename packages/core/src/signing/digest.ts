import { createHash } from 'node:crypto';
import type { Dirent } from 'node:fs';
import { lstat, readdir, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { PackageFileError } from '../package/errors.js';
import { applyFileCheck, type PackageFileCheck } from '../package/package-file.js';
import { badPackagePathReason, openPackagePath } from '../package/package-path.js';
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
 * Read size for hashing. Measured (bench/hashing.bench.mjs, page cache, shared 2-core machine): with two
 * buffers in flight, 1 MiB reads hash a 256 MiB file at ~0.9 of the speed of hashing the same bytes already
 * in memory (many 1.8 MB files: ~0.7), where a read stream's default 64 KiB chunks reach ~0.5; 4–16 MiB
 * reads measured no faster and cost memory on small devices.
 */
const READ_SIZE = 1024 * 1024;

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
    const entries = await readdir(rel ? join(dir, rel) : dir, { withFileTypes: true }).catch(
      (error: unknown) => {
        throw listingFailure(error, rel || '.', 'folder');
      },
    );
    const files: string[] = [];
    const folders: string[] = [];
    for (const entry of entries) {
      const relPath = rel ? `${rel}/${entry.name}` : entry.name;
      if (ignored.has(relPath)) continue;
      if (entry.isDirectory()) folders.push(relPath);
      else if (entry.isFile()) files.push(relPath);
      else throw new UnsupportedFileError(relPath, kindOf(entry));
    }
    // Sizes (for progress totals) of a folder's files in one go rather than one round trip each.
    const sizes = await Promise.all(
      files.map(async (f) => {
        try {
          return (await lstat(join(dir, f))).size;
        } catch (error) {
          throw listingFailure(error, f, 'file');
        }
      }),
    );
    files.forEach((path, i) => out.push({ path, size: sizes[i] as number }));
    for (const folder of folders) await walk(folder);
  };
  await walk('');
  return out.sort((a, b) => compareResourcePaths(a.path, b.path));
}

/**
 * A folder that cannot be listed, or a file gone or unreadable between the listing and its lstat: the package's
 * fault, named (a PackageFileError, as opening a file for hashing gives), not an anonymous I/O error.
 */
function listingFailure(error: unknown, path: string, what: 'file' | 'folder'): unknown {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'ENOENT' || code === 'ENOTDIR')
    return new PackageFileError(
      'missing',
      path,
      `${what} ${path} does not exist (it was removed while being listed)`,
    );
  if (code === 'EACCES' || code === 'EPERM')
    return new PackageFileError(
      'unreadable',
      path,
      `${what} ${path} cannot be read (${code}); expected the package's files readable by the agent`,
    );
  return error;
}

/** Hashes the given files (already listed, in order), reporting progress over all of them. */
export async function hashListedFiles(
  dir: string,
  files: readonly ListedFile[],
  onProgress?: DigestProgressListener,
  /** Called as each file is done; throwing stops the run (verification stops at the first bad file). */
  onFile?: (digest: FileDigest) => void,
  /** Asked about each file on its descriptor before it is read (see PackageFileCheck). */
  fileCheck?: PackageFileCheck,
): Promise<FileDigest[]> {
  const bytesTotal = files.reduce((sum, f) => sum + f.size, 0);
  let bytesBefore = 0;
  const out: FileDigest[] = [];
  const reader = new PipelinedReader(
    dir,
    files.map((f) => f.path),
    fileCheck,
  );
  try {
    for (const [i, file] of files.entries()) {
      const report = onProgress
        ? (done: number) => onProgress({ file: file.path, bytesDone: bytesBefore + done, bytesTotal })
        : undefined;
      const { sha256, size } = await reader.hash(i, report);
      const digest = { path: file.path, sha256, size };
      onFile?.(digest);
      out.push(digest);
      bytesBefore += file.size;
    }
  } finally {
    await reader.dispose();
  }
  return out;
}

type ReadResult = { bytesRead: number };

/** A file opened ahead of its turn, with its first read already in flight. */
interface Prefetched {
  handle: FileHandle;
  first: Promise<ReadResult>;
}

/**
 * Streams files through SHA-256 with two buffers: the next read is issued before the current piece is
 * hashed, so reading and hashing overlap; while the last piece of one file is hashed, the next file is
 * opened and its first piece read. Reads to end of file (not to the size seen when listing); a short read
 * is the end, as POSIX guarantees for regular files.
 */
class PipelinedReader {
  readonly #dir: string;
  readonly #paths: readonly string[];
  readonly #buffers: [Buffer, Buffer] = [Buffer.allocUnsafe(READ_SIZE), Buffer.allocUnsafe(READ_SIZE)];
  /** Which buffer the next file's first read goes into. */
  #nextBuffer = 0;
  #prefetched: Promise<Prefetched> | undefined;

  readonly #fileCheck: PackageFileCheck | undefined;

  /** `paths`: package-relative, under `dir`. */
  constructor(dir: string, paths: readonly string[], fileCheck?: PackageFileCheck) {
    this.#dir = dir;
    this.#paths = paths;
    this.#fileCheck = fileCheck;
  }

  async hash(index: number, report?: (bytesDone: number) => void): Promise<{ sha256: string; size: number }> {
    const opened = this.#prefetched ?? this.#prefetch(index);
    this.#prefetched = undefined;
    const { handle, first } = await opened;
    const hash = createHash('sha256');
    let pending: Promise<ReadResult> | undefined = first;
    let which = this.#nextBuffer;
    let position = 0;
    try {
      while (pending) {
        const { bytesRead }: ReadResult = await pending;
        pending = undefined;
        const current = this.#buffers[which as 0 | 1];
        which ^= 1;
        position += bytesRead;
        if (bytesRead === READ_SIZE)
          pending = handle.read(this.#buffers[which as 0 | 1], 0, READ_SIZE, position);
        else if (index + 1 < this.#paths.length) {
          // Last piece of this file: the other buffer is free, so start on the next file now.
          this.#nextBuffer = which;
          this.#prefetched = this.#prefetch(index + 1);
        }
        hash.update(current.subarray(0, bytesRead));
        if (bytesRead > 0 || position === 0) report?.(position);
      }
      return { sha256: hash.digest('hex'), size: position };
    } finally {
      // A listener that throws leaves a read in flight; let it land before the descriptor goes away.
      await pending?.catch(() => undefined);
      await handle.close();
    }
  }

  /** Lets any prefetch land and closes its file. */
  async dispose(): Promise<void> {
    const prefetched = await this.#prefetched?.catch(() => undefined);
    this.#prefetched = undefined;
    if (!prefetched) return;
    await prefetched.first.catch(() => undefined);
    await prefetched.handle.close();
  }

  #prefetch(index: number): Promise<Prefetched> {
    const buffer = this.#buffers[this.#nextBuffer as 0 | 1];
    // Never through a symlink swapped in after listing, the file's or a folder's on its way (openPackagePath);
    // never blocking on a FIFO or reading a device swapped in (refused by fstat before a byte is read).
    const path = this.#paths[index] as string;
    const prefetched = openPackagePath(this.#dir, path).then(async (handle) => {
      const st = await handle.stat().catch(async (error: unknown) => {
        await handle.close();
        throw error;
      });
      if (!st.isFile()) {
        await handle.close();
        throw new PackageFileError(
          'not-regular',
          path,
          `${path} is not a regular file; expected a regular file`,
        );
      }
      try {
        applyFileCheck(this.#fileCheck, st, path);
      } catch (error) {
        await handle.close();
        throw error;
      }
      const first = handle.read(buffer, 0, READ_SIZE, 0);
      first.catch(() => undefined); // handled when awaited; until then, not an unhandled rejection
      return { handle, first };
    });
    prefetched.catch(() => undefined);
    return prefetched;
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
  return badPackagePathReason(name);
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
