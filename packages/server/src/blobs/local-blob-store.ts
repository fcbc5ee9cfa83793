import { randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { pathToFileURL } from 'node:url';
import {
  assertValidBlobKey,
  assertValidBlobPrefix,
  BlobKeyConflictError,
  BlobNotFoundError,
  type BlobBody,
  type BlobInfo,
  type BlobStore,
  type ByteRange,
  type PutBlobOptions,
  type ReadBlobOptions,
} from './blob-store.js';

const TEMP_DIR = '.tmp';
/** Blobs are models, signed packages and devices' captured inference data: owner-only, wherever the folder is. */
const DIR_MODE = 0o700;
const FILE_MODE = 0o600;

function codeOf(error: unknown): unknown {
  return typeof error === 'object' && error !== null ? (error as { code?: unknown }).code : undefined;
}

function isNotFound(error: unknown): boolean {
  return codeOf(error) === 'ENOENT';
}

/** Blobs as files under one folder. Writes go to a temporary file first and are renamed into place. */
export class LocalBlobStore implements BlobStore {
  readonly description: string;
  /** NAME_MAX of Linux file systems (ext4, xfs, btrfs, tmpfs); keys are ASCII, so characters are bytes. */
  readonly maxKeySegmentLength = 255;

  constructor(
    private readonly root: string,
    /** `onWritten` hears each blob stored (readiness: the folder's disk takes writes again after an I/O error). */
    private readonly options: { onWritten?: () => void } = {},
  ) {
    this.root = path.resolve(root);
    this.description = pathToFileURL(this.root).toString();
  }

  private pathOf(key: string): string {
    assertValidBlobKey(key);
    const long = key.split('/').find((segment) => segment.length > this.maxKeySegmentLength);
    if (long !== undefined)
      throw new Error(
        `invalid blob key "${key}": its segment "${long.slice(0, 40)}…" is ${long.length} characters; a local blob folder holds segments of at most ${this.maxKeySegmentLength}`,
      );
    return path.join(this.root, ...key.split('/'));
  }

  async put(key: string, body: BlobBody, options: PutBlobOptions = {}): Promise<BlobInfo> {
    const target = this.pathOf(key);
    // Checked before the body is read: a key that is a stored key's folder, or under a stored key.
    await this.#checkNoConflict(key);
    try {
      await mkdir(path.dirname(target), { recursive: true, mode: DIR_MODE });
    } catch (error) {
      // A file where the key needs a folder, stored since the check.
      if (codeOf(error) === 'EEXIST' || codeOf(error) === 'ENOTDIR') await this.#checkNoConflict(key);
      throw error;
    }
    await mkdir(path.join(this.root, TEMP_DIR), { recursive: true, mode: DIR_MODE });
    const temp = path.join(this.root, TEMP_DIR, `${randomBytes(8).toString('hex')}.part`);
    try {
      if (body instanceof Readable) {
        await pipeline(
          body,
          createWriteStream(temp, { flags: 'wx', mode: FILE_MODE }),
          ...(options.signal !== undefined ? [{ signal: options.signal }] : []),
        );
      } else {
        await writeFile(temp, body, { flag: 'wx', mode: FILE_MODE });
      }
      await rename(temp, target);
    } catch (error) {
      await rm(temp, { force: true });
      // A folder made at the key since the check.
      if (codeOf(error) === 'EISDIR' || codeOf(error) === 'ENOTEMPTY') await this.#checkNoConflict(key);
      throw error;
    }
    this.options.onWritten?.();
    const { size } = await stat(target);
    return { key, size };
  }

  /** Throws BlobKeyConflictError when `key` is a folder here, or one of its folders is a file (a stored key). */
  async #checkNoConflict(key: string): Promise<void> {
    const segments = key.split('/');
    for (let i = 1; i <= segments.length; i++) {
      const prefix = segments.slice(0, i).join('/');
      let info;
      try {
        info = await stat(path.join(this.root, ...segments.slice(0, i)));
      } catch (error) {
        if (isNotFound(error)) return;
        throw error;
      }
      if (i < segments.length && !info.isDirectory()) throw new BlobKeyConflictError(key, prefix);
      if (i === segments.length && info.isDirectory()) throw new BlobKeyConflictError(key, key);
    }
  }

  async get(key: string, range?: ByteRange, options: ReadBlobOptions = {}): Promise<Readable> {
    const file = this.pathOf(key);
    options.signal?.throwIfAborted();
    try {
      const info = await stat(file);
      if (!info.isFile()) throw new BlobNotFoundError(key);
    } catch (error) {
      if (isNotFound(error)) throw new BlobNotFoundError(key);
      throw error;
    }
    return createReadStream(file, {
      ...(range && { start: range.start, ...(range.end !== undefined && { end: range.end }) }),
      ...(options.signal !== undefined && { signal: options.signal }),
    });
  }

  async head(key: string): Promise<BlobInfo | undefined> {
    try {
      const info = await stat(this.pathOf(key));
      return info.isFile() ? { key, size: info.size } : undefined;
    } catch (error) {
      if (isNotFound(error)) return undefined;
      throw error;
    }
  }

  async delete(key: string): Promise<void> {
    await rm(this.pathOf(key), { force: true });
  }

  async list(prefix: string): Promise<BlobInfo[]> {
    assertValidBlobPrefix(prefix);
    const found: BlobInfo[] = [];
    // Walk only the folder the prefix points into, then filter by the full prefix.
    const dirPart = prefix.includes('/') ? prefix.slice(0, prefix.lastIndexOf('/')) : '';
    const walk = async (relDir: string): Promise<void> => {
      let entries;
      try {
        entries = await readdir(path.join(this.root, ...relDir.split('/').filter(Boolean)), {
          withFileTypes: true,
        });
      } catch (error) {
        if (isNotFound(error)) return;
        throw error;
      }
      for (const entry of entries) {
        const rel = relDir === '' ? entry.name : `${relDir}/${entry.name}`;
        if (relDir === '' && entry.name === TEMP_DIR) continue;
        if (entry.isDirectory()) {
          if (rel.startsWith(prefix) || prefix.startsWith(`${rel}/`)) await walk(rel);
        } else if (entry.isFile() && rel.startsWith(prefix)) {
          const info = await stat(path.join(this.root, ...rel.split('/')));
          found.push({ key: rel, size: info.size });
        }
      }
    };
    await walk(dirPart);
    return found.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  locationOf(key: string): string {
    return pathToFileURL(this.pathOf(key)).toString();
  }

  async check(): Promise<void> {
    await mkdir(this.root, { recursive: true, mode: DIR_MODE });
    const info = await stat(this.root);
    if (!info.isDirectory()) throw new Error(`blob folder ${this.root} is not a directory`);
  }

  async close(): Promise<void> {
    // Nothing held open between calls.
  }
}
