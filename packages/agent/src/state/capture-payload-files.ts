import { randomBytes } from 'node:crypto';
import { mkdir, open, readFile, readdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';

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

/**
 * The payload files of the capture queue. The queue keeps these rules, so a crash never leaves a row naming a
 * missing or partial file and never leaks one for good:
 * - a file is written under a temporary name, fsynced, renamed, and its folder fsynced, before a row names it;
 * - a file is removed only once the deletion of its row is durable (the WAL fsynced after the commit);
 * - at start, files that no row names (a crash between the write and the insert, or before the removal) are
 *   removed by `sweep`.
 * Every file operation runs on libuv's thread pool, never on the event loop.
 */
export class CapturePayloadFiles {
  readonly dir: string;
  readonly #walPath: string;
  /** Names written by this process that no committed row names yet (being written, or awaiting their row). */
  readonly #unsettled = new Set<string>();
  #removals: Promise<void> = Promise.resolve();

  constructor(options: { dir: string; walPath: string }) {
    this.dir = options.dir;
    this.#walPath = options.walPath;
  }

  /** Writes the chunks as one new file, durably; returns its name for the row. The name stays unsettled. */
  async write(chunks: readonly Uint8Array[]): Promise<string> {
    const name = `${randomBytes(16).toString('hex')}.payload`;
    const temp = `${TEMP_PREFIX}${name}`;
    this.#unsettled.add(name);
    this.#unsettled.add(temp);
    try {
      const handle = await this.#create(temp);
      try {
        await writeAll(handle, chunks);
        await handle.sync();
      } finally {
        await handle.close();
      }
      await rename(join(this.dir, temp), join(this.dir, name));
      await syncPath(this.dir);
    } catch (error) {
      await rm(join(this.dir, temp), { force: true }).catch(() => undefined);
      await rm(join(this.dir, name), { force: true }).catch(() => undefined);
      this.#unsettled.delete(name);
      throw error;
    } finally {
      this.#unsettled.delete(temp);
    }
    return name;
  }

  /** A committed row names the file now (or it was removed): the sweep judges it by the rows from here on. */
  settle(name: string): void {
    this.#unsettled.delete(name);
  }

  async read(name: string): Promise<Buffer> {
    if (!PAYLOAD_FILE_NAME.test(name)) {
      throw new Error(
        `the queue names a payload file ${JSON.stringify(name)}; expected a name the agent writes (32 hex digits, .payload)`,
      );
    }
    return readFile(join(this.dir, name));
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
        await syncPath(this.#walPath);
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
   * Removes every file in the folder that `referenced()` (read at once, after listing) does not name and that
   * this process is not writing: what a crash left. Returns how many.
   */
  async sweep(referenced: () => ReadonlySet<string>): Promise<number> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return 0;
      throw error;
    }
    // In the same turn as the listing: a file listed is named by a row now, being written, or an orphan.
    const keep = referenced();
    const orphans = names.filter((name) => !keep.has(name) && !this.#unsettled.has(name));
    if (orphans.length === 0) return 0;
    // A row deleted before the listing (its file not yet removed when the agent stopped) must stay deleted.
    await syncPath(this.#walPath);
    await Promise.all(orphans.map((name) => rm(join(this.dir, name), { force: true })));
    return orphans.length;
  }

  /** Creates a new file (owner-only: it holds model inputs and outputs), making the folder when missing. */
  async #create(name: string): Promise<Awaited<ReturnType<typeof open>>> {
    try {
      return await open(join(this.dir, name), 'wx', 0o600);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
      await mkdir(this.dir, { recursive: true, mode: 0o700 });
      return open(join(this.dir, name), 'wx', 0o600);
    }
  }

  async #remove(names: readonly string[]): Promise<void> {
    await Promise.all(
      names.map(async (name) => {
        try {
          await rm(join(this.dir, name), { force: true });
        } catch {
          // Left for the sweep at the next start.
        } finally {
          this.#unsettled.delete(name);
        }
      }),
    );
  }
}

/** Writes every chunk, in order, however the kernel splits the writes. */
async function writeAll(
  handle: Awaited<ReturnType<typeof open>>,
  chunks: readonly Uint8Array[],
): Promise<void> {
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

/** fsync of a file or folder through a descriptor of our own; a missing one (no WAL yet) is fine. */
async function syncPath(path: string): Promise<void> {
  let handle;
  try {
    handle = await open(path, 'r');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw error;
  }
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
