import { lstat, readdir, statfs as nodeStatfs } from 'node:fs/promises';
import { join } from 'node:path';

export { DEFAULT_CAPTURE_DISK_QUOTA_BYTES, DEFAULT_CAPTURE_MIN_FREE_BYTES } from '../config/index.js';

/** What the free-space checks read of a file system (node's statfs; tests inject a smaller disk). */
export type StatFs = (path: string) => Promise<{ bavail: number; bsize: number }>;

/** The bytes an unprivileged process may still write on the file system holding `path`. */
export async function freeBytes(path: string, statfs: StatFs = nodeStatfs): Promise<number> {
  const fs = await statfs(path);
  return fs.bavail * fs.bsize;
}

/**
 * A batch the Disk destination did not write because its quota or the free-space floor would be passed. Nothing
 * was written and nothing removed: Disk captures are the user's data to collect, so no oldest-first deletion.
 */
export class CaptureDiskFullError extends Error {
  override readonly name = 'CaptureDiskFullError';
}

export interface DiskQuotaOptions {
  root: string;
  /** Bytes the files under root may take together (edgefleet_capture_disk_quota_bytes). */
  quotaBytes: number;
  /** Free bytes left on root's file system after a write (edgefleet_capture_min_free_bytes). */
  minFreeBytes: number;
  /** While full, root is walked again (files the user removed give room back) at most this often. */
  rescanIntervalMs?: number;
  now?: () => number;
  /** Reads the file system's free space (default node's statfs). */
  statfs?: StatFs;
}

/**
 * The bytes under the Disk destination's root: walked once at open, counted up as batches are written, and
 * walked again, at most every rescanIntervalMs, when a write would pass the quota (the user may have removed
 * files). Replaced files (a batch written again after a crash), a write that failed, and a write in flight during
 * a walk may be counted twice until the next walk: every error is on the safe side.
 */
export class DiskQuota {
  readonly root: string;
  readonly quotaBytes: number;
  readonly minFreeBytes: number;
  readonly #rescanIntervalMs: number;
  readonly #now: () => number;
  readonly #statfs: StatFs | undefined;
  #usedBytes = 0;
  /** Counted (added) by writes not yet finished: a walk meanwhile may not see their files yet. */
  #writingBytes = 0;
  #scannedAt = Number.NEGATIVE_INFINITY;
  /** A walk has completed: usedBytes counts what was there before this run's writes. */
  #counted = false;
  #scanning: Promise<void> | undefined;
  /** Why the last check refused, and for how many bytes; undefined once a check passes. */
  #fullReason: string | undefined;
  #refusedBytes = 0;

  constructor(options: DiskQuotaOptions) {
    this.root = options.root;
    this.quotaBytes = options.quotaBytes;
    this.minFreeBytes = options.minFreeBytes;
    this.#rescanIntervalMs = options.rescanIntervalMs ?? 5000;
    this.#now = options.now ?? Date.now;
    this.#statfs = options.statfs;
  }

  /** Bytes counted under root. */
  get usedBytes(): number {
    return this.#usedBytes;
  }

  /** Why the destination is full as far as it knows, without checking again; undefined when not known full. */
  get fullReason(): string | undefined {
    return this.#fullReason;
  }

  /**
   * While known full: checks again (walking root if due) whether the batch last refused would fit now; the reason
   * when it would not, else undefined.
   */
  async stillFull(): Promise<string | undefined> {
    if (this.#fullReason === undefined) return undefined;
    // Refused again, or the check itself failed (statfs): either way, still known full.
    await this.check(this.#refusedBytes).catch(() => undefined);
    return this.#fullReason;
  }

  /** Counts what is under root now. */
  rescan(): Promise<void> {
    this.#scanning ??= (async () => {
      try {
        const writing = this.#writingBytes;
        // Writes that started during the walk are counted once: their bytes were added meanwhile.
        const before = this.#usedBytes;
        const found = await bytesUnder(this.root);
        this.#usedBytes = found + writing + (this.#usedBytes - before);
        this.#scannedAt = this.#now();
        this.#counted = true;
      } finally {
        this.#scanning = undefined;
      }
    })();
    return this.#scanning;
  }

  /**
   * Throws CaptureDiskFullError when `bytes` more would pass the quota (after walking root again, if the last
   * walk is old enough) or leave less than minFreeBytes free on the file system. A caller that goes on to write
   * calls added(bytes) at once, before awaiting anything.
   */
  async check(bytes: number): Promise<void> {
    // The first walk (started at open, in the background) must have counted what an earlier run left.
    if (this.#scanning) await this.#scanning.catch(() => undefined);
    if (
      !this.#counted ||
      (this.#usedBytes + bytes > this.quotaBytes && this.#now() - this.#scannedAt >= this.#rescanIntervalMs)
    )
      await this.rescan();
    const free = await freeBytes(this.root, this.#statfs);
    if (free - bytes < this.minFreeBytes) {
      this.#refuse(
        `the file system of the Disk capture folder ${this.root} has ${free} bytes free; ${bytes} more would leave less than the ${this.minFreeBytes} bytes the agent keeps free (edgefleet_capture_min_free_bytes). Nothing was written; free space on it, or lower the floor`,
        bytes,
      );
    }
    // Compared after the last await: the caller counts its bytes (added) before any other check runs.
    if (this.#usedBytes + bytes > this.quotaBytes) {
      this.#refuse(
        `the Disk capture folder ${this.root} holds ${this.#usedBytes} bytes; ${bytes} more would pass its quota of ${this.quotaBytes} bytes (edgefleet_capture_disk_quota_bytes). Nothing was written; collect and remove capture files, or raise the quota`,
        bytes,
      );
    }
    this.#fullReason = undefined;
  }

  /** Counts bytes about to be written under root; call finished(bytes) once the write has ended (either way). */
  added(bytes: number): void {
    this.#usedBytes += bytes;
    this.#writingBytes += bytes;
  }

  finished(bytes: number): void {
    this.#writingBytes -= bytes;
  }

  #refuse(reason: string, bytes: number): never {
    this.#fullReason = reason;
    this.#refusedBytes = bytes;
    throw new CaptureDiskFullError(reason);
  }
}

/** The sizes of the regular files under a folder, summed (0 when it does not exist); links are not followed. */
async function bytesUnder(folder: string): Promise<number> {
  let total = 0;
  const folders = [folder];
  while (folders.length > 0) {
    const current = folders.pop()!;
    let entries;
    try {
      entries = await readdir(current, { withFileTypes: true });
    } catch (error) {
      // Gone meanwhile (or never made yet): nothing to count.
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw error;
    }
    for (const entry of entries) {
      const path = join(current, entry.name);
      if (entry.isDirectory()) folders.push(path);
      else if (entry.isFile()) {
        const size = await lstat(path).then(
          (stats) => stats.size,
          () => 0, // removed between readdir and lstat
        );
        total += size;
      }
    }
  }
  return total;
}
