import { createHash } from 'node:crypto';
import { constants, type Dirent, type Stats } from 'node:fs';
import { lstat, open, opendir, readdir, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { PackageFileError } from '../package/errors.js';
import { applyFileCheck, type PackageFileCheck } from '../package/package-file.js';
import {
  badPackagePathReason,
  descriptorLookupWorks,
  openFolderByDescriptors,
  openPackagePath,
} from '../package/package-path.js';
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

/** Where Linux shows this process's descriptors, each as a link to what it holds. */
const PROC_SELF_FD = '/proc/self/fd';
/** The package folder itself may be a link (whoever names it could name its target), as in package-path.ts. */
const ROOT_FOLDER_FLAGS = constants.O_RDONLY | (constants.O_DIRECTORY ?? 0) | (constants.O_NONBLOCK ?? 0);

/**
 * SHA-256 of every regular file under `dir` (recursive), sorted as the OpenSSF Model Signing reference sorts
 * resources. Files are read in 1 MiB pieces, never whole. Rejects with `UnsupportedFileError` on the first
 * symlink or special file, naming it.
 */
export async function digestFiles(dir: string, opts: DigestOptions = {}): Promise<FileDigest[]> {
  const files = await listFiles(dir, opts.ignore ?? []);
  return hashListedFiles(dir, files, opts.onProgress);
}

/** Bounds on a listing: more entries (files and folders, the whole tree) or deeper folders are refused. */
export interface ListingLimits {
  maxEntries: number;
  /** Deepest folder listed; the package folder is depth 0. */
  maxDepth: number;
}

export interface ListFilesOptions {
  /**
   * Asked about each folder (its fstat, on the descriptor it is listed through) before it is listed, `dir`
   * first: the reason it may not be listed, or undefined. A refusal is PackageFileError 'unreadable'.
   */
  folderCheck?: PackageFolderCheck;
  /** Asked about each file (its lstat inside the held folder) as it is listed; see PackageFileCheck. */
  fileCheck?: PackageFileCheck;
  /** Refused past these with PackageFileError 'too-large'; unbounded without. */
  limits?: ListingLimits;
  /** Where this process's descriptors appear as links (default /proc/self/fd). */
  descriptors?: string;
  /**
   * Pass over links and special files rather than refusing the first (UnsupportedFileError): for a check of a
   * whole tree whose reader refuses them itself.
   */
  skipUnsupported?: boolean;
}

/** Like PackageFileCheck, for a folder: the caller needs to list it and look names up in it. */
export type PackageFolderCheck = (folder: Stats) => string | undefined;

/**
 * Lists the regular files under `dir` without hashing them (sorted, ignore rules as in `digestFiles`).
 *
 * Where the kernel shows descriptors (Linux /proc), each folder is held open and listed through its descriptor,
 * and each subfolder opened inside the folder held before it (`O_DIRECTORY | O_NOFOLLOW`, see package-path.ts):
 * a subfolder swapped for a link after its parent was listed is refused, never followed, so no name from
 * wherever it leads is listed (and told in an error). Elsewhere folders are listed by name.
 */
export async function listFiles(
  dir: string,
  ignore: readonly string[],
  options: ListFilesOptions = {},
): Promise<ListedFile[]> {
  const ignored = new Set(ignore.map(normalizeIgnorePath));
  const descriptors = options.descriptors ?? PROC_SELF_FD;
  let root: FileHandle | undefined;
  try {
    root = await open(dir, ROOT_FOLDER_FLAGS);
  } catch (error) {
    throw listingFailure(error, '.', 'folder');
  }
  try {
    if (!(await descriptorLookupWorks(root, descriptors))) {
      await root.close();
      root = undefined;
      return await listFilesByName(dir, ignored, options.skipUnsupported ?? false, options.fileCheck);
    }
    const out: ListedFile[] = [];
    const counter = { entries: 0 };
    await listHeldFolder(root, '', 0, ignored, { ...options, descriptors }, counter, out);
    return out.sort((a, b) => compareResourcePaths(a.path, b.path));
  } finally {
    await root?.close();
  }
}

/** One folder held open (`folder`, at package-relative `rel`): listed, its files sized, its subfolders walked. */
async function listHeldFolder(
  folder: FileHandle,
  rel: string,
  depth: number,
  ignored: ReadonlySet<string>,
  options: ListFilesOptions & { descriptors: string },
  counter: { entries: number },
  out: ListedFile[],
): Promise<void> {
  const shown = rel || '.';
  const here = `${options.descriptors}/${folder.fd}`;
  if (options.folderCheck) {
    const st = await folder.stat().catch((error: unknown) => {
      throw listingFailure(error, shown, 'folder');
    });
    const reason = options.folderCheck(st);
    if (reason !== undefined)
      throw new PackageFileError('unreadable', shown, `folder ${shown} cannot be read: ${reason}`);
  }
  const files: string[] = [];
  const folders: string[] = [];
  try {
    // opendir: a few entries at a time, so a bounded listing never holds a huge folder's names at once.
    for await (const entry of await opendir(here)) {
      const relPath = rel ? `${rel}/${entry.name}` : entry.name;
      if (ignored.has(relPath)) continue;
      if (options.limits && ++counter.entries > options.limits.maxEntries)
        throw new PackageFileError(
          'too-large',
          shown,
          `the package holds more than ${options.limits.maxEntries} files and folders, more than a model package may`,
        );
      if (entry.isDirectory()) folders.push(entry.name);
      else if (entry.isFile()) files.push(entry.name);
      else if (!options.skipUnsupported) throw new UnsupportedFileError(relPath, kindOf(entry));
    }
  } catch (error) {
    if (error instanceof PackageFileError || error instanceof UnsupportedFileError) throw error;
    throw listingFailure(error, shown, 'folder');
  }
  const sizes = await Promise.all(
    files.map(async (name) => {
      const relPath = rel ? `${rel}/${name}` : name;
      // lstat inside the held folder: a file swapped for a link is seen as one, not followed.
      const st = await lstat(`${here}/${name}`).catch((error: unknown) => {
        throw listingFailure(error, relPath, 'file');
      });
      // Swapped for something else since the listing: hashing refuses it, as it always has.
      if (st.isFile()) applyFileCheck(options.fileCheck, st, relPath);
      return st.size;
    }),
  );
  files.forEach((name, i) => out.push({ path: rel ? `${rel}/${name}` : name, size: sizes[i] as number }));
  if (folders.length > 0 && options.limits && depth + 1 > options.limits.maxDepth)
    throw new PackageFileError(
      'too-large',
      shown,
      `the package's folders are nested more than ${options.limits.maxDepth} deep, deeper than a model package needs`,
    );
  for (const name of folders) {
    const relPath = rel ? `${rel}/${name}` : name;
    // Opened inside the folder held, never following a link: what is listed below is what was there.
    const child = await openFolderByDescriptors(folder, [name], {
      descriptors: options.descriptors,
      label: relPath,
    }).catch((error: unknown) => {
      // Gone or unreadable: the messages a listing by name gave. A link now (swapped in): refused as one.
      if (error instanceof PackageFileError && error.problem === 'symlink') throw error;
      if (!(error instanceof PackageFileError)) throw listingFailure(error, relPath, 'folder');
      const gone = error.problem === 'missing' || error.problem === 'not-regular';
      throw listingFailure({ code: gone ? 'ENOENT' : error.code }, relPath, 'folder');
    });
    try {
      await listHeldFolder(child, relPath, depth + 1, ignored, options, counter, out);
    } finally {
      await child.close();
    }
  }
}

/** listFiles without /proc: folders listed by name (see listFiles); no folderCheck (nothing is held to ask about). */
async function listFilesByName(
  dir: string,
  ignored: ReadonlySet<string>,
  skipUnsupported: boolean,
  fileCheck: PackageFileCheck | undefined,
): Promise<ListedFile[]> {
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
      else if (!skipUnsupported) throw new UnsupportedFileError(relPath, kindOf(entry));
    }
    // Sizes (for progress totals) of a folder's files in one go rather than one round trip each.
    const sizes = await Promise.all(
      files.map(async (f) => {
        let st: Stats;
        try {
          st = await lstat(join(dir, f));
        } catch (error) {
          throw listingFailure(error, f, 'file');
        }
        if (st.isFile()) applyFileCheck(fileCheck, st, f);
        return st.size;
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
      code,
    );
  // Not a file system's error (no errno code): a bug, not an unreadable package; it stays what it is.
  if (typeof code !== 'string') return error;
  // Only the code: the errno error's message names the path opened, which may be a descriptor's /proc path.
  return new PackageFileError('unreadable', path, `${what} ${path} cannot be read (${code})`, code);
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
