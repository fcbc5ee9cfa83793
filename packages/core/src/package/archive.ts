import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readdir, rename, rm, stat, lstat } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { dirname, join, posix } from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip, createGzip } from 'node:zlib';
import * as tar from 'tar-stream';
import { PackageArchiveError } from './errors.js';

export interface ArchiveLimits {
  /** Most members (files and folders) an archive may hold. */
  maxEntries: number;
  /** Most bytes the archive may expand to, counting everything gunzip produces. */
  maxTotalBytes: number;
  /** Most bytes one file may hold. */
  maxEntryBytes: number;
}

/** Generous for models, small enough that a tar bomb stops long before a device's disk fills. */
export const DEFAULT_ARCHIVE_LIMITS: ArchiveLimits = {
  maxEntries: 10_000,
  maxTotalBytes: 8 * 1024 ** 3,
  maxEntryBytes: 8 * 1024 ** 3,
};

export interface ArchiveProgress {
  file: string;
  bytesDone: number;
  bytesTotal: number;
}

export interface PackResult {
  path: string;
  bytes: number;
  files: number;
}

/**
 * Writes `dir` as a gzipped tar with the files at the archive's root, the way Edge Manager's packaging jobs
 * laid out `<name>-<version>.tar.gz`. Entries are sorted and carry no owner or time, so the same package always
 * packs to the same bytes. Symlinks and special files are refused: a package holds regular files only.
 */
export async function packModelPackage(
  dir: string,
  outFile: string,
  /** `signal`: aborts the packing (a stopping server): rejects with its reason, leaving no file behind. */
  opts: { onProgress?: (p: ArchiveProgress) => void; signal?: AbortSignal } = {},
): Promise<PackResult> {
  opts.signal?.throwIfAborted();
  const files = await listRegularFiles(dir);
  const bytesTotal = files.reduce((sum, f) => sum + f.size, 0);
  const pack = tar.pack();
  const tmp = `${outFile}.tmp-${randomBytes(6).toString('hex')}`;
  const written = pipeline(pack, createGzip({ level: 6 }), createWriteStream(tmp, { mode: 0o644 }));
  let bytesDone = 0;
  try {
    const folders = new Set<string>();
    for (const file of files) {
      for (let d = posix.dirname(file.path); d !== '.'; d = posix.dirname(d)) folders.add(d);
    }
    for (const folder of [...folders].sort()) {
      pack.entry({ name: `${folder}/`, type: 'directory', mode: 0o755, mtime: new Date(0), uid: 0, gid: 0 });
    }
    for (const file of files) {
      await new Promise<void>((resolve, reject) => {
        const entry = pack.entry(
          { name: file.path, size: file.size, mode: 0o644, mtime: new Date(0), uid: 0, gid: 0 },
          (err) => (err ? reject(err) : resolve()),
        );
        const source = createReadStream(join(dir, file.path), { highWaterMark: 1024 * 1024 });
        source.on('data', (chunk) => {
          if (opts.signal?.aborted) {
            source.destroy(opts.signal.reason instanceof Error ? opts.signal.reason : new Error('aborted'));
            return;
          }
          bytesDone += chunk.length;
          opts.onProgress?.({ file: file.path, bytesDone, bytesTotal });
        });
        source.on('error', reject);
        source.pipe(entry);
      });
    }
    pack.finalize();
    await written;
    await rename(tmp, outFile);
  } catch (error) {
    pack.destroy();
    await written.catch(() => undefined);
    await rm(tmp, { force: true });
    throw error;
  }
  const { size } = await stat(outFile);
  return { path: outFile, bytes: size, files: files.length };
}

/** Regular files under `dir`, recursively, as sorted posix paths relative to it. */
export async function listRegularFiles(dir: string): Promise<{ path: string; size: number }[]> {
  const out: { path: string; size: number }[] = [];
  const walk = async (rel: string): Promise<void> => {
    const entries = await readdir(join(dir, rel), { withFileTypes: true });
    for (const entry of entries) {
      const relPath = rel ? `${rel}/${entry.name}` : entry.name;
      if (entry.isDirectory()) await walk(relPath);
      else if (entry.isFile()) out.push({ path: relPath, size: (await lstat(join(dir, relPath))).size });
      else
        throw new PackageArchiveError(
          entry.isSymbolicLink() ? 'link' : 'special-file',
          `${relPath} is not a regular file; a model package holds regular files only`,
          relPath,
        );
    }
  };
  await walk('');
  return out.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

/**
 * Checks one archive member's name and returns it normalised (no leading `./`, no trailing `/`), or undefined for
 * the archive root itself. Anything that could land outside the destination is refused.
 */
export function safeMemberPath(name: string): string | undefined {
  if (name.includes('\0') || name.includes('\\')) {
    throw new PackageArchiveError(
      'bad-path',
      `archive member ${JSON.stringify(name)} has a NUL or backslash in its name`,
      name,
    );
  }
  if (name.startsWith('/')) {
    throw new PackageArchiveError(
      'absolute-path',
      `archive member ${JSON.stringify(name)} has an absolute path; members must be relative`,
      name,
    );
  }
  const segments = name.split('/').filter((s) => s !== '' && s !== '.');
  if (segments.includes('..')) {
    throw new PackageArchiveError(
      'path-traversal',
      `archive member ${JSON.stringify(name)} climbs out with "..": refused`,
      name,
    );
  }
  return segments.length === 0 ? undefined : segments.join('/');
}

/** Counts what gunzip produces so that an archive expanding past the limit stops early, padding included. */
function expansionGuard(limit: number): Transform {
  let seen = 0;
  return new Transform({
    transform(chunk: Buffer, _enc, done) {
      seen += chunk.length;
      // A tar ends with at least two 512-byte zero blocks and pads to 10 KiB records: allow that on top.
      if (seen > limit + 20 * 1024) {
        done(
          new PackageArchiveError('too-large', `archive expands past the limit of ${limit} bytes: refused`),
        );
      } else done(null, chunk);
    },
  });
}

/**
 * Extracts a `.tar.gz` model package into `destDir`, which must not exist yet. Everything lands in a temporary
 * sibling first and is renamed into place only when the whole archive has passed every check, so a refused or
 * broken archive leaves nothing behind. Refused: absolute paths, `..`, links of any kind (a package is regular
 * files only, so a link can only be an attack), devices and FIFOs, duplicate members, and archives over the limits.
 */
export async function extractPackageArchive(
  source: string | Readable,
  destDir: string,
  limits: Partial<ArchiveLimits> = {},
  /** `signal`: aborts the extraction (a stopping server): rejects with its reason, leaving nothing behind. */
  opts: { signal?: AbortSignal } = {},
): Promise<{ dir: string; files: number; bytes: number }> {
  opts.signal?.throwIfAborted();
  const lim = { ...DEFAULT_ARCHIVE_LIMITS, ...limits };
  if (await exists(destDir)) {
    throw new PackageArchiveError(
      'destination-exists',
      `${destDir} already exists; extraction needs a new folder`,
    );
  }
  let input: Readable;
  if (typeof source === 'string') {
    if (!(await exists(source))) throw new PackageArchiveError('not-found', `${source} does not exist`);
    input = createReadStream(source);
  } else input = source;

  await mkdir(dirname(destDir), { recursive: true });
  const tmp = `${destDir}.partial-${randomBytes(6).toString('hex')}`;
  await mkdir(tmp, { mode: 0o755 });
  const extract = tar.extract();
  const seenMembers = new Set<string>();
  let entries = 0;
  let files = 0;
  let bytes = 0;

  const consume = async (): Promise<void> => {
    for await (const entry of extract) {
      const { header } = entry;
      entries += 1;
      if (entries > lim.maxEntries) {
        throw new PackageArchiveError(
          'too-many-entries',
          `archive has more than ${lim.maxEntries} members: refused`,
        );
      }
      const member = safeMemberPath(header.name);
      if (header.type === 'symlink' || header.type === 'link') {
        throw new PackageArchiveError(
          'link',
          `archive member ${header.name} is a ${header.type === 'link' ? 'hard link' : 'symlink'} (to ${header.linkname ?? '?'}); packages hold regular files only`,
          header.name,
        );
      }
      if (header.type !== 'file' && header.type !== 'directory' && header.type !== 'contiguous-file') {
        throw new PackageArchiveError(
          'special-file',
          `archive member ${header.name} is a ${header.type}; packages hold regular files only`,
          header.name,
        );
      }
      if (member === undefined) {
        entry.resume();
        continue;
      }
      if (seenMembers.has(member)) {
        throw new PackageArchiveError(
          'duplicate-entry',
          `archive member ${member} appears twice: refused`,
          member,
        );
      }
      seenMembers.add(member);
      const target = join(tmp, ...member.split('/'));
      if (header.type === 'directory') {
        await mkdir(target, { recursive: true, mode: 0o755 });
        entry.resume();
        continue;
      }
      const size = header.size ?? 0;
      if (size > lim.maxEntryBytes) {
        throw new PackageArchiveError(
          'entry-too-large',
          `archive member ${member} is ${size} bytes, over the limit of ${lim.maxEntryBytes}`,
          member,
        );
      }
      if (bytes + size > lim.maxTotalBytes) {
        throw new PackageArchiveError(
          'too-large',
          `archive expands past the limit of ${lim.maxTotalBytes} bytes at ${member}: refused`,
          member,
        );
      }
      await mkdir(dirname(target), { recursive: true, mode: 0o755 });
      // `wx`: never follow or overwrite anything already there.
      await pipeline(entry, createWriteStream(target, { flags: 'wx', mode: 0o644 }));
      bytes += size;
      files += 1;
    }
  };

  try {
    const feeding = pipeline(input, createGunzip(), expansionGuard(lim.maxTotalBytes), extract, {
      signal: opts.signal,
    }).catch((error: unknown) => {
      opts.signal?.throwIfAborted();
      throw error instanceof PackageArchiveError
        ? error
        : new PackageArchiveError('corrupt', `archive is not a valid .tar.gz: ${(error as Error).message}`);
    });
    await Promise.all([consume(), feeding]);
    await rename(tmp, destDir);
  } catch (error) {
    extract.destroy();
    input.destroy();
    await rm(tmp, { recursive: true, force: true });
    // Stopped, not broken: the caller is told why it stopped, whatever part of the work saw it first.
    opts.signal?.throwIfAborted();
    if (error instanceof PackageArchiveError) throw error;
    throw new PackageArchiveError('corrupt', `archive is not a valid .tar.gz: ${(error as Error).message}`);
  }
  return { dir: destDir, files, bytes };
}

async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch {
    return false;
  }
}
