import { randomBytes } from 'node:crypto';
import { constants, type Dirent, type Stats } from 'node:fs';
import * as fsp from 'node:fs/promises';
import { dirname, join } from 'node:path';

/**
 * A capture payload larger than this is written as a file beside the database instead of into it. better-sqlite3
 * runs on the event loop: a 64 MiB blob held every socket of the agent for about 0.4 s in SQLite; a file is
 * written and fsynced on libuv's thread pool. At this size an insert costs about 0.2 ms, less than a file's
 * fsync latency, so small captures keep their one-commit-per-turn grouping.
 */
export const DEFAULT_INLINE_PAYLOAD_LIMIT_BYTES = 64 * 1024;

/** The folder of a database's payload files: beside the file, named after it like its -wal and -shm. */
export function capturePayloadFolder(databasePath: string): string {
  return `${databasePath}-payloads`;
}

/** What a payload file is called; anything else in a row is refused (the name is joined to a path). */
const PAYLOAD_FILE_NAME = /^[0-9a-f]{32}\.payload$/;
/** Files being written; never named by a row, so a crash's leftovers are orphans like any other. */
const TEMP_PREFIX = '.tmp-';
const TEMP_FILE_NAME = /^\.tmp-[0-9a-f]{32}\.payload$/;
/** Owner-only: the files hold model inputs and outputs. */
const FOLDER_MODE = 0o700;
const FILE_MODE = 0o600;
/** Never follows a symbolic link in the folder, and never blocks on a FIFO put there. */
const READ_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;

type FileHandle = fsp.FileHandle;

/** Payload files written or read at once, together (see CapturePayloadFiles.#slots). */
const PAYLOAD_IO_AT_ONCE = 2;
/** Tries to make the folder when it keeps disappearing between being made and being checked. */
const FOLDER_TRIES = 3;

/**
 * The file operations the payload files use: node:fs/promises, and fsync. A constructor argument so that a test
 * can record the order of writes, fsyncs, renames and removals (a SIGKILL cannot show a missing fsync).
 */
export interface PayloadFileSystem {
  open(path: string, flags: string | number, mode?: number): Promise<FileHandle>;
  /** fsync of an open file or folder; `path` says which. */
  fsync(handle: FileHandle, path: string): Promise<void>;
  rename(from: string, to: string): Promise<void>;
  rm(path: string): Promise<void>;
  mkdir(path: string, mode: number): Promise<void>;
  chmod(path: string, mode: number): Promise<void>;
  lstat(path: string): Promise<Stats>;
  /** Entries with their types, as lstat sees them (a symbolic link is a link, not what it points at). */
  readdir(path: string): Promise<Dirent[]>;
}

export const NODE_PAYLOAD_FILE_SYSTEM: PayloadFileSystem = {
  open: (path, flags, mode) => fsp.open(path, flags, mode),
  fsync: (handle) => handle.sync(),
  rename: (from, to) => fsp.rename(from, to),
  rm: (path) => fsp.rm(path, { force: true }),
  mkdir: async (path, mode) => {
    await fsp.mkdir(path, { mode });
  },
  chmod: (path, mode) => fsp.chmod(path, mode),
  lstat: (path) => fsp.lstat(path),
  readdir: (path) => fsp.readdir(path, { withFileTypes: true }),
};

/**
 * The file a row names is gone, or is not the file the agent wrote (a symbolic link, not a regular file, another
 * owner, another size): its capture cannot be delivered and is marked FAILURE.
 */
export class DamagedPayloadError extends Error {
  override readonly name = 'DamagedPayloadError';
}

/**
 * The payload folder is not one the agent can trust (a symbolic link, not a directory, another owner, writable by
 * others). Nothing is written, read or removed in it; large captures are kept inline until it is fixed.
 */
export class UnsafePayloadFolderError extends Error {
  override readonly name = 'UnsafePayloadFolderError';
}

/**
 * The payload files of the capture queue. The queue keeps these rules, so a crash never leaves a row naming a
 * missing or partial file and never leaks one for good:
 * - a file is written under a temporary name, fsynced, renamed, and its folder fsynced, before a row names it;
 *   and no write starts before this process has fsynced the data root once the folder is there (so that the
 *   folder's own entry is durable, whoever made it: an earlier run killed before its fsync, or another write);
 * - a file is removed only once the deletion of its row is durable (the WAL fsynced after the commit);
 * - at start, files that no row names (a crash between the write and the insert, or before the removal) are
 *   removed by `sweep`: only names this class writes, only regular files or links (never what a link points at).
 * The folder is checked (lstat) before each use (write, read, removal, sweep): it must be a real directory of the
 * agent's user that nobody else can write, so that nobody else can put a file or link where a row's name points.
 * The file operations are this class's own, not capture/atomic-files' alike (stageFile, syncFolder): they go through
 * the PayloadFileSystem seam, which records their order in tests.
 * Every file operation runs on libuv's thread pool, never on the event loop.
 */
export class CapturePayloadFiles {
  readonly dir: string;
  readonly #walPath: string;
  readonly #fs: PayloadFileSystem;
  /**
   * Names written by this process that no committed row names yet (being written, or awaiting their row). Only a
   * sweep run while writes are in flight needs it; the agent sweeps before it takes captures, so it is defensive.
   */
  readonly #unsettled = new Set<string>();
  /** The size of each file written and not yet settled: its row records it, and a read checks it. */
  readonly #sizes = new Map<string, number>();
  #removals: Promise<void> = Promise.resolve();
  /**
   * The folder made (if missing) and checked, and the data root fsynced, once per process: every write awaits it.
   * Cleared when it fails (the next write tries again, fsync included) or when a write finds the folder gone.
   */
  #folderReady: Promise<void> | undefined;
  /**
   * Writes and reads under way, at most PAYLOAD_IO_AT_ONCE of both together: each holds a descriptor and takes
   * turns on libuv's four threads with fsyncs or reads that take seconds on an SD card. One shared limit, so that
   * captures arriving while a batch is read back never take all four threads from model reads, the Disk
   * destination and DNS.
   */
  readonly #slots = new Slots(PAYLOAD_IO_AT_ONCE);

  constructor(options: { dir: string; walPath: string; fileSystem?: PayloadFileSystem }) {
    this.dir = options.dir;
    this.#walPath = options.walPath;
    this.#fs = options.fileSystem ?? NODE_PAYLOAD_FILE_SYSTEM;
  }

  /**
   * Writes the chunks as one new file, durably; returns its name for the row. The name stays unsettled. Rejects
   * with UnsafePayloadFolderError, having written nothing, when the folder is not safe to use.
   */
  write(chunks: readonly Uint8Array[]): Promise<string> {
    return this.#slots.run(() => this.#write(chunks));
  }

  async #write(chunks: readonly Uint8Array[]): Promise<string> {
    const name = `${randomBytes(16).toString('hex')}.payload`;
    const temp = `${TEMP_PREFIX}${name}`;
    await this.#folderIsReady();
    this.#unsettled.add(name);
    this.#unsettled.add(temp);
    try {
      const handle = await this.#fs.open(join(this.dir, temp), 'wx', FILE_MODE);
      try {
        await writeAll(handle, chunks);
        await this.#fs.fsync(handle, join(this.dir, temp));
      } finally {
        await handle.close();
      }
      await this.#fs.rename(join(this.dir, temp), join(this.dir, name));
      await this.#sync(this.dir);
    } catch (error) {
      await this.#fs.rm(join(this.dir, temp)).catch(() => undefined);
      await this.#fs.rm(join(this.dir, name)).catch(() => undefined);
      this.#unsettled.delete(name);
      throw error;
    } finally {
      this.#unsettled.delete(temp);
    }
    this.#sizes.set(
      name,
      chunks.reduce((sum, chunk) => sum + chunk.byteLength, 0),
    );
    return name;
  }

  /** The size of a file this process wrote whose row is not committed yet; undefined for any other name. */
  writtenSize(name: string): number | undefined {
    return this.#sizes.get(name);
  }

  /** A committed row names the file now (or it was removed): the sweep judges it by the rows from here on. */
  settle(name: string): void {
    this.#unsettled.delete(name);
    this.#sizes.delete(name);
  }

  /**
   * The file's bytes, which must be `bytes` long. Rejects with DamagedPayloadError when the file is gone or is not
   * what the agent wrote (never following a link, never reading a FIFO or device, never more than `bytes`), with
   * UnsafePayloadFolderError when the folder is not safe to use, and with the error as it came for anything else
   * (EMFILE, EIO, …: the file may be fine, so the caller tries again later).
   */
  read(name: string, bytes: number): Promise<Buffer> {
    return this.#slots.run(() => this.#read(name, bytes));
  }

  async #read(name: string, bytes: number): Promise<Buffer> {
    if (!PAYLOAD_FILE_NAME.test(name)) {
      throw new DamagedPayloadError(
        `the queue names a payload file ${JSON.stringify(name)}; expected a name the agent writes (32 hex digits, .payload)`,
      );
    }
    if ((await this.#checkFolder()) === 'missing') {
      throw new DamagedPayloadError(
        `its payload file ${name} is gone (ENOENT: the folder ${this.dir} is gone)`,
      );
    }
    let handle: FileHandle;
    try {
      handle = await this.#fs.open(join(this.dir, name), READ_FLAGS);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') throw new DamagedPayloadError(`its payload file ${name} is gone (ENOENT)`);
      if (code === 'ELOOP') {
        throw new DamagedPayloadError(
          `its payload file ${name} was replaced by a symbolic link (not followed); expected the file the agent wrote`,
        );
      }
      throw error;
    }
    try {
      const stats = await handle.stat();
      const problem = !stats.isFile()
        ? 'is not a regular file'
        : stats.uid !== (process.geteuid?.() ?? stats.uid)
          ? `is owned by uid ${stats.uid}, not the agent's user`
          : stats.size !== bytes
            ? `holds ${stats.size} bytes; its row names ${bytes}`
            : undefined;
      if (problem !== undefined) {
        throw new DamagedPayloadError(
          `its payload file ${name} ${problem}; expected the file the agent wrote`,
        );
      }
      const payload = Buffer.allocUnsafe(bytes);
      let offset = 0;
      while (offset < bytes) {
        const { bytesRead } = await handle.read(payload, offset, bytes - offset, offset);
        if (bytesRead === 0) {
          throw new DamagedPayloadError(`its payload file ${name} ended after ${offset} of ${bytes} bytes`);
        }
        offset += bytesRead;
      }
      return payload;
    } finally {
      await handle.close();
    }
  }

  /**
   * Removes files whose rows were deleted by a commit that returned: after fsyncing the WAL, so that a power cut
   * cannot bring back a row whose file is gone. In the background, in order; a failure leaves the file to the
   * next start's sweep.
   */
  removeCommitted(names: readonly string[]): void {
    if (names.length === 0) return;
    this.#removals = this.#removals
      .then(async () => {
        await this.#sync(this.#walPath);
        await this.#remove(names);
      })
      // The WAL could not be fsynced: the files stay, for the sweep at the next start.
      .catch(() => undefined);
  }

  /** Removes files no row ever named (their insert failed): nothing durable points at them. */
  removeUnreferenced(names: readonly string[]): void {
    if (names.length === 0) return;
    this.#removals = this.#removals.then(() => this.#remove(names));
  }

  /** Resolves once the removals asked for so far are done. */
  idle(): Promise<void> {
    return this.#removals;
  }

  /**
   * Removes the files in the folder that `referenced()` (read at once, after listing) does not name and that this
   * process is not writing: what a crash left. Only names this class writes, and only regular files or symbolic
   * links (the link, never its target); anything else is left alone. One that cannot be removed is named in
   * `failed` and left. Rejects with UnsafePayloadFolderError when the folder is not safe to use.
   */
  async sweep(referenced: () => ReadonlySet<string>): Promise<{ removed: number; failed: string[] }> {
    if ((await this.#checkFolder()) === 'missing') return { removed: 0, failed: [] };
    const entries = await this.#fs.readdir(this.dir);
    // In the same turn as the listing: a file listed is named by a row now, being written, or an orphan.
    const keep = referenced();
    const orphans = entries
      .filter((entry) => PAYLOAD_FILE_NAME.test(entry.name) || TEMP_FILE_NAME.test(entry.name))
      .filter((entry) => entry.isFile() || entry.isSymbolicLink())
      .map((entry) => entry.name)
      .filter((name) => !keep.has(name) && !this.#unsettled.has(name));
    if (orphans.length === 0) return { removed: 0, failed: [] };
    // A row deleted before the listing (its file not yet removed when the agent stopped) must stay deleted.
    await this.#sync(this.#walPath);
    const results = await Promise.allSettled(orphans.map((name) => this.#fs.rm(join(this.dir, name))));
    const failed = results.flatMap((result, i) =>
      result.status === 'rejected' ? [`${orphans[i]!}: ${(result.reason as Error).message}`] : [],
    );
    return { removed: orphans.length - failed.length, failed };
  }

  /** Whether the folder exists; throws UnsafePayloadFolderError when it is there but not safe to use. */
  async #checkFolder(): Promise<'ready' | 'missing'> {
    let stats: Stats;
    try {
      stats = await this.#fs.lstat(this.dir);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return 'missing';
      throw error;
    }
    const euid = process.geteuid?.();
    const problem = stats.isSymbolicLink()
      ? 'a symbolic link'
      : !stats.isDirectory()
        ? 'not a directory'
        : euid !== undefined && stats.uid !== euid
          ? `owned by uid ${stats.uid}`
          : (stats.mode & 0o022) !== 0
            ? `writable by its group or others (mode ${(stats.mode & 0o777).toString(8)})`
            : undefined;
    if (problem === undefined) return 'ready';
    throw new UnsafePayloadFolderError(
      `the capture payload folder ${this.dir} is ${problem}; expected a directory (not a link) owned by the agent's user${euid === undefined ? '' : ` (uid ${euid})`} that only it can write. Remove it (the agent makes it again) or fix its owner and mode; until then large captures are kept in the database`,
    );
  }

  /**
   * Resolves once the folder is there, safe, and its entry in the data root durable; rejects with
   * UnsafePayloadFolderError (or the error of the mkdir or fsync that failed) otherwise.
   */
  async #folderIsReady(): Promise<void> {
    for (let tries = 1; ; tries++) {
      const ready = (this.#folderReady ??= this.#prepareFolder().catch((error: unknown) => {
        // Not ready: the next write tries again from the start (its fsync included).
        this.#folderReady = undefined;
        throw error;
      }));
      await ready;
      if ((await this.#checkFolder()) === 'ready') return;
      // Removed since it was made durable: made again, and the data root fsynced again.
      if (this.#folderReady === ready) this.#folderReady = undefined;
      if (tries === FOLDER_TRIES) {
        throw new Error(
          `the capture payload folder ${this.dir} was removed each time it was made (${tries} times); expected it to stay`,
        );
      }
    }
  }

  /**
   * Makes the folder when it is missing (owner-only, whatever the umask), checks it, and fsyncs the data root, so
   * that its entry is durable before any file in it is: also when an earlier run made it and was killed before
   * its fsync.
   */
  async #prepareFolder(): Promise<void> {
    if ((await this.#checkFolder()) === 'missing') {
      try {
        await this.#fs.mkdir(this.dir, FOLDER_MODE);
        await this.#fs.chmod(this.dir, FOLDER_MODE);
      } catch (error) {
        // Made by someone else since we looked: checked below like any other.
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      }
      await this.#checkFolder();
    }
    await this.#sync(dirname(this.dir));
  }

  async #remove(names: readonly string[]): Promise<void> {
    try {
      // Nothing is removed in a folder that is gone or unsafe (it may be a link to elsewhere by now).
      if ((await this.#checkFolder()) === 'missing') return;
    } catch {
      // Left for the sweep at the next start, which checks the folder again.
      return;
    } finally {
      for (const name of names) this.settle(name);
    }
    await Promise.all(
      names.map(async (name) => {
        try {
          await this.#fs.rm(join(this.dir, name));
        } catch {
          // Left for the sweep at the next start.
        }
      }),
    );
  }

  /** fsync of a file or folder through a descriptor of our own; a missing one (no WAL yet) is fine. */
  async #sync(path: string): Promise<void> {
    let handle: FileHandle;
    try {
      handle = await this.#fs.open(path, 'r');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw error;
    }
    try {
      await this.#fs.fsync(handle, path);
    } finally {
      await handle.close();
    }
  }
}

/** At most `size` tasks run at once; the others wait, first come first served. */
class Slots {
  readonly #size: number;
  #busy = 0;
  readonly #waiting: (() => void)[] = [];

  constructor(size: number) {
    this.#size = size;
  }

  async run<T>(task: () => Promise<T>): Promise<T> {
    if (this.#busy >= this.#size) await new Promise<void>((resolve) => this.#waiting.push(resolve));
    else this.#busy++;
    try {
      return await task();
    } finally {
      // The slot passes to the next task waiting, if any.
      const next = this.#waiting.shift();
      if (next) next();
      else this.#busy--;
    }
  }
}

/** Writes every chunk, in order, however the kernel splits the writes. */
async function writeAll(handle: FileHandle, chunks: readonly Uint8Array[]): Promise<void> {
  let pending = chunks.filter((chunk) => chunk.byteLength > 0);
  while (pending.length > 0) {
    let { bytesWritten } = await handle.writev(pending as Uint8Array[]);
    const rest: Uint8Array[] = [];
    for (const chunk of pending) {
      if (bytesWritten >= chunk.byteLength) bytesWritten -= chunk.byteLength;
      else {
        rest.push(chunk.subarray(bytesWritten));
        bytesWritten = 0;
      }
    }
    pending = rest;
  }
}
