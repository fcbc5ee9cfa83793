import { randomBytes } from 'node:crypto';
import { mkdir, readFile, readdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { LineLimiter } from '@edgefleet/core';
import { z } from 'zod';
import { backoffDelay, type BackoffPolicy } from '../retry/index.js';
import { TEMP_FILE_MARK, syncFolder, writeFileAtomic, type WriteFileOptions } from './atomic-files.js';
import { putEach } from './destinations.js';
import type { CaptureLogger, CaptureMetrics } from './capture-metrics.js';
import { freeBytes, type StatFs } from './disk-quota.js';
import {
  MAX_RETRY_AFTER_MS,
  RetryLaterError,
  type ObjectStore,
  type RefusedByStoreError,
} from './object-store.js';
import { RENDERED_FILE_KINDS, fileKindOfKey, type RenderedBatch, type RenderedFileKind } from './records.js';
import { UploadFailureLines, repeatsNote, storeRefusal, uploadFailureFields } from './upload-failure.js';

const errorMessage = (error: unknown): string => (error instanceof Error ? error.message : String(error));

const BATCH_FILE = 'batch.json';
/**
 * Written in a batch's folder (atomically) after each stage of an attempt that stored files: the keys the store
 * took. Read at start so that a restart does not send them again; one that cannot be read is ignored (its files
 * are sent again, which the store answers as stored): it can cost a request, never a record.
 */
const PROGRESS_FILE = 'progress.json';

const SpoolProgressSchema = z.object({
  v: z.literal(1),
  storedKeys: z.array(z.string().min(1)),
});

const SpooledBatchSchema = z.object({
  v: z.literal(1),
  batchId: z.string().regex(/^[0-9a-f]{32}$/),
  /** When the batch's oldest capture was received. */
  createdAt: z.number(),
  captureIds: z.array(z.string()),
  files: z.array(
    z
      .object({
        key: z.string().min(1),
        contentType: z.string(),
        file: z.string().regex(/^\d+$/),
        bytes: z.number().int().nonnegative(),
        /**
         * What the file is, as rendered. Absent in batches spooled before it was kept: then taken from the key
         * (fileKindOfKey), which is exact for the keys this agent renders.
         */
        kind: z.enum(RENDERED_FILE_KINDS).optional(),
      })
      .transform((f) => ({ ...f, kind: f.kind ?? fileKindOfKey(f.key) })),
  ),
});
type SpooledBatch = z.infer<typeof SpooledBatchSchema> & {
  bytes: number;
  /** Dropped for the quota while an upload of it was under way: its folder goes when that attempt ends. */
  evicted?: boolean;
  /** Failed attempts of this batch since it was spooled (or the agent started): its own backoff's step. */
  failures?: number;
  /**
   * Its own failures in a row: attempts that stored none of its files and met a lasting answer of the store (a
   * 4xx, not 408/409/425/429: a refusal that keeps the file included) for any of its files, the same or another as
   * last time, while the store took other batches since its previous attempt; or this disk failed it (not for
   * space). So a lasting 4xx that moves from file to file is bounded like one that stays on a file. An attempt
   * that stored a file starts the count again: a batch that makes progress is not stuck. Failures that pass (no
   * answer, a timeout, a 5xx, a Retry-After, a 409) are never its own: on a lossy link a large batch fails more
   * often than small ones, for nothing wrong with it. At setAsideAfterFailures it is set aside.
   */
  strikes?: number;
  /**
   * Keys of its files the store took in an earlier attempt: not put again, so a lossy link makes progress. Kept in
   * the batch's folder too (PROGRESS_FILE), so a restart resumes where the last run stopped.
   */
  storedKeys?: Set<string>;
  /** Batches delivered when its last attempt began: more since then means the store is taking others. */
  deliveredSeen?: number;
  /** Its own backoff is running: not tried until it fires. */
  retryTimer?: unknown;
};

export interface CaptureSpoolOptions {
  /** The spool folder (under the local data root). */
  dir: string;
  /** Disk the spool may take; past it, the oldest batches are dropped. */
  quotaBytes: number;
  /**
   * Free bytes kept on the spool's file system (edgefleet_capture_min_free_bytes), which the local database and
   * the package store share: new captures are refused below it (admissionRefusal), and a batch of captures already
   * accepted is not spooled where it would leave less than half of it (CaptureSpoolFullError). Default 0.
   */
  minFreeBytes?: number;
  /** Reads the file system's free space (default node's statfs). */
  statfs?: StatFs;
  store: ObjectStore;
  retry: BackoffPolicy;
  /** Puts in flight per batch. Default 4. */
  uploadConcurrency?: number;
  /** The batch is in the bucket: its captures are delivered. */
  onDelivered(captureIds: readonly string[]): void;
  /** The batch was dropped to stay under the quota. */
  onDropped(captureIds: readonly string[], detail: string): void;
  metrics?: CaptureMetrics;
  logger?: CaptureLogger;
  random?: () => number;
  /** Schedules the next attempt (tests run it when they choose). Default setTimeout/clearTimeout. */
  timers?: SpoolTimers;
  /** The clock (ms) the failure lines are limited on (tests). Default Date.now. */
  now?: () => number;
  /**
   * A batch whose own failures (see SpooledBatch.strikes) reach this many is set aside (`set-aside/` in the spool
   * folder) and its captures failed, rather than retried forever. Default SET_ASIDE_AFTER_FAILURES.
   */
  setAsideAfterFailures?: number;
  /** At most this many batches are kept set aside; past it the oldest are removed. Default SET_ASIDE_MAX_BATCHES. */
  setAsideMaxBatches?: number;
  /** At most this many bytes are kept set aside; past it the oldest are removed. Default a quarter of quotaBytes. */
  setAsideMaxBytes?: number;
  /**
   * Writes a file of the spool whole or not at all (tests inject a full or failing disk): the batches' files,
   * their rewrites, progress.json (with `createFolder: false`) and the set-aside note. Default writeFileAtomic
   * (temp file, fsync, rename).
   */
  writeFile?: (path: string, body: Uint8Array, options?: WriteFileOptions) => Promise<void>;
}

/** A batch failed this many times for reasons of its own is set aside. */
const SET_ASIDE_AFTER_FAILURES = 10;
/** Batches kept in the set-aside folder at most. */
const SET_ASIDE_MAX_BATCHES = 16;
/** The folder, in the spool folder, of batches that can never upload (not a batch id: never read as a batch). */
const SET_ASIDE_DIR = 'set-aside';
/** Written in a set-aside batch's folder: when and why it was set aside. */
const SET_ASIDE_NOTE = 'set-aside.json';

const SetAsideNoteSchema = z.looseObject({
  reason: z.string(),
  failures: z.number(),
  captureIds: z.array(z.string()),
});

/** A set-aside batch found at open: its captures, and its note when it has a readable one. */
interface SetAsideFound {
  batchId: string;
  bytes: number;
  captureIds: string[];
  note?: { failures: number; reason: string };
}

/**
 * The FAILURE detail of a set-aside batch's captures: why (`why`: its failed attempts and the last one's reason;
 * undefined: not recorded), and where it is (`path`; undefined: removed since, to keep the set-aside bound).
 */
function setAsideDetail(
  store: string,
  why: { failures: number; reason: string } | undefined,
  path: string | undefined,
): string {
  return `the spooled batch could never be uploaded to ${store} (${
    why === undefined ? 'why: not recorded' : `${why.failures} failed attempts, the last: ${why.reason}`
  }); ${path === undefined ? 'set aside, then removed to keep the set-aside bound' : `set aside in ${path}`}`;
}

export interface SpoolTimers {
  set(run: () => void, ms: number): unknown;
  clear(handle: unknown): void;
}

const REAL_TIMERS: SpoolTimers = {
  set: (run, ms) => setTimeout(run, ms),
  clear: (handle) => clearTimeout(handle as NodeJS.Timeout | undefined),
};

/**
 * Batches for the bucket that could not be put there, kept on local disk and retried until they are. Each batch is
 * a folder `<batch id>/` (its rendered files and a `batch.json` naming their keys and captures), created under a
 * temporary name and renamed into place, so a crash never leaves half a batch. The folder is the record: it survives
 * restarts with or without the local database. Past the quota, the oldest batches go first, counted and logged.
 *
 * Batches go one at a time, the oldest data first; within a batch side files before manifests, Model Monitor's
 * copies last. A batch that fails waits its own backoff (exponential with jitter; when the store said how long to
 * wait, Retry-After on a 429 or 503, at least that long, capped at MAX_RETRY_AFTER_MS, then up to a tenth more)
 * while the newer ones go on, so no batch holds back the others, and batches may arrive out of order. While the store
 * looks unreachable (two attempts in a row failed, or it asked to wait) every batch waits, then one probe goes, a
 * batch tried least; once the store takes one, the oldest go first again. A file missing from a batch's folder or torn is dropped with what needs it (logged, counted);
 * a batch that keeps failing for reasons of its own (setAsideAfterFailures) is moved to `set-aside/`, its captures
 * failed, rather than retried forever; that folder is bounded (the oldest go first). A file the store refuses is
 * dropped with what needs it only when the refusal gives it up (storeRefusal); otherwise the batch is kept and
 * retried, a lasting failure of its own. The keys the store took are kept in the batch's folder (PROGRESS_FILE), so
 * neither a retry nor a restart sends them again.
 */
export class CaptureSpool {
  readonly #options: CaptureSpoolOptions;
  readonly #random: () => number;
  /** Oldest first. */
  #batches: SpooledBatch[] = [];
  #bytes = 0;
  /** Failed attempts since the last success (the backoff's step), and their limited lines. */
  readonly #failureLines: UploadFailureLines;
  readonly #timers: SpoolTimers;
  readonly #now: () => number;
  readonly #writeFile: (path: string, body: Uint8Array, options?: WriteFileOptions) => Promise<void>;
  /** Lines of files found missing or torn, and of this disk's failures: the first, then at most one a minute. */
  readonly #diskLines: LineLimiter;
  /** Batches delivered by this run (evidence that the store takes batches: see SpooledBatch.strikes). */
  #delivered = 0;
  /** While the store looks unreachable (or asked to wait), no batch is tried until this timer fires. */
  #pause: unknown;
  /** Lines of files the store refused and the spool keeps: the first, then at most one a minute. */
  readonly #refusedLines: LineLimiter;
  /** Set-aside batches, oldest first. */
  #setAside: { batchId: string; bytes: number }[] = [];
  /**
   * Captures of the set-aside batches an earlier run left, id → the detail of their FAILURE: an agent stopped
   * between moving a batch aside and setting its captures' statuses leaves them IN_PROGRESS (setAsideDetails).
   */
  #setAsideDetails = new Map<string, string>();
  #uploading: SpooledBatch | undefined;
  #idle: Promise<void> = Promise.resolve();
  #closed = false;

  constructor(options: CaptureSpoolOptions) {
    this.#options = options;
    this.#random = options.random ?? Math.random;
    this.#timers = options.timers ?? REAL_TIMERS;
    this.#now = options.now ?? Date.now;
    this.#writeFile = options.writeFile ?? writeFileAtomic;
    this.#failureLines = new UploadFailureLines({ now: this.#now });
    this.#diskLines = new LineLimiter({ now: this.#now });
    this.#refusedLines = new LineLimiter({ now: this.#now });
  }

  /**
   * The captures of the batches found set aside at open, id → why (the note written with the batch): for the
   * captures an agent stopped before marking FAILURE, whose batch is in `set-aside/`, not gone.
   */
  setAsideDetails(): ReadonlyMap<string, string> {
    return this.#setAsideDetails;
  }

  /** Batches set aside (that could never upload), in `<dir>/set-aside/`. */
  get setAsideBatches(): number {
    return this.#setAside.length;
  }

  /** Batches waiting. */
  get batches(): number {
    return this.#batches.length;
  }

  get bytes(): number {
    return this.#bytes;
  }

  /** The last attempt to reach the store failed and the spool is waiting to retry: new batches should come here. */
  get unreachable(): boolean {
    return this.#failureLines.failures > 0;
  }

  /** The spool holds batches or its store is unreachable: new batches may come here. */
  get inUse(): boolean {
    return this.#batches.length > 0 || this.unreachable;
  }

  /**
   * Why a capture needing `bytes` more of the spool's file system should be refused now (RESOURCE_EXHAUSTED, before
   * it is acknowledged): they would leave less than minFreeBytes free. Undefined when they fit, or when the free
   * space cannot be read (the write itself is then the check).
   */
  async admissionRefusal(bytes: number): Promise<string | undefined> {
    const floor = this.#options.minFreeBytes ?? 0;
    const free = await freeBytes(this.#options.dir, this.#options.statfs).catch(() => undefined);
    if (free === undefined || free - bytes >= floor) return undefined;
    return `the offline capture spool ${this.#options.dir} cannot take more while ${this.#options.store.description} is unreachable: its file system has ${free} bytes free; ${bytes} more (this capture and those accepted and not yet spooled: the bytes still to be written here) would leave less than the ${floor} bytes the agent keeps free for its database and packages (edgefleet_capture_min_free_bytes). Nothing was kept; try again once the store is reachable or space is freed, or lower the floor`;
  }

  /** Ids of the captures waiting in the spool. */
  captureIds(): Set<string> {
    return new Set(this.#batches.flatMap((b) => b.captureIds));
  }

  /** Reads what earlier runs left (dropping temporary folders of interrupted writes) and starts uploading it. */
  async open(): Promise<void> {
    await mkdir(this.#options.dir, { recursive: true, mode: 0o700 });
    const found: SpooledBatch[] = [];
    let setAside: SetAsideFound[] = [];
    for (const entry of await readdir(this.#options.dir, { withFileTypes: true })) {
      const path = join(this.#options.dir, entry.name);
      if (entry.name.startsWith('.')) {
        await rm(path, { recursive: true, force: true });
        continue;
      }
      if (!entry.isDirectory()) continue;
      if (entry.name === SET_ASIDE_DIR) {
        setAside = await this.#readSetAside();
        continue;
      }
      try {
        const batch = SpooledBatchSchema.parse(JSON.parse(await readFile(join(path, BATCH_FILE), 'utf8')));
        const storedKeys = await this.#readProgress(path, batch);
        found.push({
          ...batch,
          bytes: batch.files.reduce((n, f) => n + f.bytes, 0),
          ...(storedKeys !== undefined && { storedKeys }),
        });
      } catch (error) {
        this.#options.logger?.warn(
          { path, err: error },
          `capture spool: ${path} is not a readable batch; removing it`,
        );
        await rm(path, { recursive: true, force: true });
      }
    }
    this.#batches = found.sort((a, b) => a.createdAt - b.createdAt);
    this.#bytes = this.#batches.reduce((n, b) => n + b.bytes, 0);
    if (this.#batches.length > 0) {
      this.#options.logger?.info(
        { event: 'capture-spool-resuming', batches: this.#batches.length, bytes: this.#bytes },
        'capture spool: resuming the upload of batches left by an earlier run',
      );
    }
    await this.#enforceQuota();
    const removed = await this.#boundSetAside();
    // After the bound: a batch it removed is named as removed, never by a folder that is gone.
    for (const batch of setAside) {
      const path = join(this.#options.dir, SET_ASIDE_DIR, batch.batchId);
      const detail = `${setAsideDetail(this.#options.store.description, batch.note, removed.has(batch.batchId) ? undefined : path)} (the agent stopped before it marked these captures FAILURE)`;
      for (const id of batch.captureIds) this.#setAsideDetails.set(id, detail);
    }
    this.#kick();
  }

  /**
   * The keys of `batch` an earlier run stored (its PROGRESS_FILE), or undefined: none recorded, or a file that
   * cannot be read or parsed (torn by a crash, damaged): then ignored, logged, and every file is sent again, which
   * loses nothing. Keys the batch no longer names are left out.
   */
  async #readProgress(
    folder: string,
    batch: z.infer<typeof SpooledBatchSchema>,
  ): Promise<Set<string> | undefined> {
    const path = join(folder, PROGRESS_FILE);
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      return this.#progressIgnored(batch.batchId, path, error);
    }
    try {
      const progress = SpoolProgressSchema.parse(JSON.parse(text));
      const keys = new Set(batch.files.map((f) => f.key));
      return new Set(progress.storedKeys.filter((key) => keys.has(key)));
    } catch (error) {
      return this.#progressIgnored(batch.batchId, path, error);
    }
  }

  #progressIgnored(batchId: string, path: string, error: unknown): undefined {
    const admitted = this.#diskLines.admit('progress');
    if (admitted !== undefined) {
      this.#options.logger?.warn(
        {
          event: 'capture-spool-progress-ignored',
          batchId,
          path,
          reason: errorMessage(error),
          ...(admitted.leftOut > 0 && { linesNotLogged: admitted.leftOut }),
        },
        `capture spool: cannot read ${path} (${errorMessage(error)}); ignoring it: every file of the batch is sent again, which the store answers as stored (${repeatsNote(admitted.leftOut, 'such line(s)')})`,
      );
    }
    return undefined;
  }

  /**
   * Records the keys the store took (PROGRESS_FILE, whole or not at all). A failure to write it costs only requests
   * after a restart (those files are sent again), so it fails nothing. Never makes the folder: one removed during
   * the attempt (by an operator, or by add() replacing the batch, or for the quota) is not brought back holding
   * only this file.
   */
  async #saveProgress(batch: SpooledBatch, folder: string): Promise<void> {
    if (batch.evicted || !this.#batches.includes(batch)) return;
    const progress: z.infer<typeof SpoolProgressSchema> = { v: 1, storedKeys: [...(batch.storedKeys ?? [])] };
    await this.#writeFile(join(folder, PROGRESS_FILE), Buffer.from(JSON.stringify(progress)), {
      createFolder: false,
    }).catch(() => undefined);
  }

  /** Keeps a batch until the store takes it. Durable once this resolves. */
  async add(batch: RenderedBatch): Promise<void> {
    const dir = this.#options.dir;
    const batchBytes = batch.files.reduce((n, f) => n + f.body.byteLength, 0);
    // Half the floor: the captures were accepted (the admission check keeps the whole floor), but the local
    // database and the package store must keep room on this file system whatever the backlog.
    const floor = Math.floor((this.#options.minFreeBytes ?? 0) / 2);
    // A file system that cannot be asked (the folder removed to free space: it is made again below) is no
    // reason to refuse: the write itself says whether there is room.
    const free = floor > 0 ? await freeBytes(dir, this.#options.statfs).catch(() => undefined) : undefined;
    if (free !== undefined) {
      if (free - batchBytes < floor)
        throw new CaptureSpoolFullError(
          `the file system of ${dir} has ${free} bytes free; the batch's ${batchBytes} bytes would leave less than ${floor} bytes (half of edgefleet_capture_min_free_bytes, kept for the local database and packages)`,
        );
    }
    const temp = join(dir, `${TEMP_FILE_MARK}${batch.batchId}-${randomBytes(4).toString('hex')}`);
    const record: SpooledBatch = {
      v: 1,
      batchId: batch.batchId,
      createdAt: batch.oldestReceivedAt,
      captureIds: batch.captureIds,
      files: batch.files.map((f, i) => ({
        key: f.key,
        contentType: f.contentType,
        file: String(i),
        bytes: f.body.byteLength,
        kind: f.kind,
      })),
      bytes: batchBytes,
    };
    try {
      await mkdir(temp, { recursive: true });
      for (const [i, file] of batch.files.entries()) await this.#writeFile(join(temp, String(i)), file.body);
      const { bytes: _bytes, ...stored } = record;
      await this.#writeFile(join(temp, BATCH_FILE), Buffer.from(JSON.stringify(stored)));
      await syncFolder(temp);
      // The same batch id again: an earlier run spooled it, then crashed before recording that. Replace it.
      const existing = this.#batches.findIndex((b) => b.batchId === batch.batchId);
      if (existing >= 0) {
        this.#clearRetry(this.#batches[existing]!);
        this.#forget(existing);
      }
      await rm(join(dir, batch.batchId), { recursive: true, force: true });
      await rename(temp, join(dir, batch.batchId));
      await syncFolder(dir);
    } catch (error) {
      await rm(temp, { recursive: true, force: true }).catch(() => {});
      throw error;
    }
    // Ordered by the age of their data, so that the oldest captures are the first dropped (and sent).
    const at = this.#batches.findIndex((b) => b.createdAt > record.createdAt);
    this.#batches.splice(at < 0 ? this.#batches.length : at, 0, record);
    this.#bytes += record.bytes;
    await this.#enforceQuota();
    this.#kick();
  }

  /** Stops retrying; waits for an upload in progress. What is spooled stays for the next run. */
  async close(): Promise<void> {
    this.#closed = true;
    for (const batch of this.#batches) this.#clearRetry(batch);
    if (this.#pause !== undefined) this.#timers.clear(this.#pause);
    this.#pause = undefined;
    await this.#idle;
  }

  /**
   * Uploads the next batch, one at a time: of those whose own backoff is not running, the oldest; while the last
   * attempt failed, the one that failed least, the oldest first among equals. So while the store looks unreachable,
   * each probe after a pause is a batch tried least, not the same failing one again, and once the store takes one
   * the oldest data goes first again (the batches that served as probes are not left behind newer ones, where the
   * quota would drop them first).
   */
  #kick(): void {
    if (this.#closed || this.#uploading || this.#pause !== undefined) return;
    const leastTried = this.unreachable;
    let batch: SpooledBatch | undefined;
    for (const b of this.#batches) {
      if (b.retryTimer !== undefined) continue;
      if (batch === undefined) batch = b;
      else if (!leastTried) break;
      else if ((b.failures ?? 0) < (batch.failures ?? 0)) batch = b;
    }
    if (!batch) return;
    const next = batch;
    this.#uploading = next;
    this.#idle = this.#upload(next).finally(() => {
      this.#uploading = undefined;
      this.#kick();
    });
  }

  #clearRetry(batch: SpooledBatch): void {
    if (batch.retryTimer !== undefined) this.#timers.clear(batch.retryTimer);
    batch.retryTimer = undefined;
  }

  async #upload(batch: SpooledBatch): Promise<void> {
    const began = performance.now();
    const folder = join(this.#options.dir, batch.batchId);
    const concurrency = this.#options.uploadConcurrency ?? 4;
    const refusals: Refusal[] = [];
    const deliveredBefore = batch.deliveredSeen ?? this.#delivered;
    batch.deliveredSeen = this.#delivered;
    let failedKey: string | undefined;
    /** Files the store took in this attempt: any means the batch is not stuck (see strikes). */
    let storedNow = 0;
    /** Files refused in this attempt whose refusal keeps them (see storeRefusal): the attempt fails for them. */
    let keptRefusals: readonly { file: SpoolFile; error: RefusedByStoreError }[] = [];
    try {
      const files: SpoolFile[] = [];
      const missing: SpoolFile[] = [];
      for (const f of batch.files) {
        try {
          files.push({ ...f, body: await readFile(join(folder, f.file)) });
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code !== 'ENOENT')
            throw new SpoolReadError(folder, f.file, error);
          const file = { ...f, body: Buffer.alloc(0) };
          files.push(file);
          missing.push(file);
        }
      }
      // A file the store took (storedKeys) is in the bucket whatever became of its copy here: its damage alone
      // fails no capture. A stored side file is never counted lost: a record naming it can still be delivered,
      // as its data is in the bucket. A stored manifest is, where a file still to send is damaged too: the
      // records a rewrite keeps are read from the manifests here, and the captures of a lost stored manifest
      // cannot be told from those of a lost one still to send.
      const stored = batch.storedKeys ?? new Set<string>();
      const needsSending = (list: SpoolFile[]) => {
        const lost = list.filter((f) => f.kind !== 'side' || !stored.has(f.key));
        return lost.some((f) => !stored.has(f.key)) ? lost : [];
      };
      if (missing.length > 0) {
        if (!(await folderExists(folder))) {
          this.#batchGone(batch, folder);
          return;
        }
        await this.#dropDamagedFiles(batch, files, needsSending(missing), 'missing');
      }
      await this.#dropDamagedFiles(
        batch,
        files,
        needsSending(tornFiles(files.filter((f) => !missing.includes(f)))),
        'damaged',
      );
      // Side files first, then manifests, as a direct write does, then Model Monitor's copies. A file the store
      // will never take (storeRefusal's givesUp) is dropped with what needs it before the next stage goes: a
      // manifest never names a side file the store refused, and a Model Monitor copy never holds the records of a
      // capture failed by its Edge Manager manifest's refusal. Any other refusal keeps the file: the stage fails
      // (after the other files of the stage went) and the batch is retried, its own failure (see strikes). A file
      // an earlier attempt stored (this run's or, by PROGRESS_FILE, an earlier run's) is not put again.
      const storedKeys = (batch.storedKeys ??= new Set());
      for (const [stageIndex, kind] of RENDERED_FILE_KINDS.entries()) {
        const stage = await putEach(
          this.#options.store,
          files.filter((f) => f.kind === kind && !storedKeys.has(f.key)),
          concurrency,
          { collectRefusals: true },
        );
        for (const file of stage.stored) storedKeys.add(file.key);
        storedNow += stage.stored.length;
        const givenUp = stage.refused.filter((r) => storeRefusal(r.error)?.givesUp === true);
        const kept = stage.refused.filter((r) => !givenUp.includes(r));
        // Not when the attempt is about to succeed (nothing failed or to drop, no later file to put): the folder
        // goes then.
        const later = new Set(RENDERED_FILE_KINDS.slice(stageIndex + 1));
        const succeeding =
          stage.failure === undefined &&
          stage.refused.length === 0 &&
          !files.some((f) => later.has(f.kind) && !storedKeys.has(f.key));
        if (stage.stored.length > 0 && !succeeding) await this.#saveProgress(batch, folder);
        if (givenUp.length > 0) await this.#dropRefusedFiles(batch, files, givenUp, refusals);
        keptRefusals = kept;
        if (stage.failure !== undefined) {
          failedKey = stage.failedFile?.key;
          throw stage.failure;
        }
        if (kept.length > 0) {
          failedKey = kept[0]!.file.key;
          throw kept[0]!.error;
        }
      }
    } catch (error) {
      this.#logRefusals(batch, refusals);
      if (batch.evicted) await rm(folder, { recursive: true, force: true });
      batch.failures = (batch.failures ?? 0) + 1;
      // Progress: whatever failed this time, the batch is not stuck, and its strikes start again.
      if (storedNow > 0) batch.strikes = 0;
      if (error instanceof SpoolDiskError) await this.#diskFailed(batch, error);
      else
        await this.#storeFailed(batch, error, {
          failedKey,
          storeTookOthers: this.#delivered > deliveredBefore,
          progressed: storedNow > 0,
          keptRefusals,
        });
      return;
    }
    this.#logRefusals(batch, refusals);
    // A batch left with no file (all dropped) reached no store: it says nothing of whether the store is reachable.
    if (batch.files.length > 0) {
      this.#delivered++;
      this.#failureLines.succeeded(
        this.#options.logger,
        this.#options.store.description,
        (failures) => `capture spool: the store is reachable again, after ${failures} failed attempt(s)`,
      );
    }
    this.#options.metrics?.uploadDuration.observe({ via: 'spool' }, (performance.now() - began) / 1000);
    this.#options.metrics?.uploadedFiles.inc({ via: 'spool' }, batch.files.length);
    this.#options.metrics?.uploaded.inc({ via: 'spool' }, batch.captureIds.length);
    // Statuses first: a crash before the folder is gone uploads it again (same keys), never loses it. A batch
    // dropped for the quota while this attempt ran did arrive after all: SUCCESS is the truth.
    this.#options.onDelivered(batch.captureIds);
    const index = this.#batches.indexOf(batch);
    if (index >= 0) this.#forget(index);
    await rm(folder, { recursive: true, force: true });
  }

  /**
   * An attempt the store (or the way to it) failed: the batch waits its own backoff while the others go on, or,
   * the store looking unreachable, every batch waits (at least as long as the store asked, Retry-After). A lasting
   * answer for any of its files, in an attempt that stored none of them, while the store took other batches since
   * this one's previous attempt, is the batch's own failure (a strike; see SpooledBatch.strikes).
   */
  async #storeFailed(
    batch: SpooledBatch,
    error: unknown,
    attempt: {
      /** The file the failure was for. */
      failedKey: string | undefined;
      /** The store took other batches since this one's previous attempt. */
      storeTookOthers: boolean;
      /** This attempt stored some of its files. */
      progressed: boolean;
      keptRefusals: readonly { file: SpoolFile; error: RefusedByStoreError }[];
    },
  ): Promise<void> {
    const { keptRefusals } = attempt;
    // The first failure, then at most one line a minute; the store's message carries no credentials (the
    // answer's text, the key). Refused files the spool keeps have their own line (#logKeptRefusals) instead.
    const admitted = this.#failureLines.failed({ logged: !keptRefusals.some((r) => r.error === error) });
    this.#options.metrics?.writeFailures.inc({ destination: 'spool' });
    // Any lasting 4xx, whichever file it was for: one that moves from file to file is no less lasting. Not in an
    // attempt that stored files: on a lossy link each attempt may meet a 4xx on another file and still get on.
    if (isOwnFailure(error, attempt.failedKey) && attempt.storeTookOthers && !attempt.progressed)
      batch.strikes = (batch.strikes ?? 0) + 1;
    const asked =
      error instanceof RetryLaterError ? Math.min(error.retryAfterMs, MAX_RETRY_AFTER_MS) : undefined;
    // Two attempts in a row failed (of different batches, or of the only one), or the store asked to wait: the
    // store looks unreachable, and every batch waits, by the attempts failed in a row. Else only this batch waits,
    // by its own failures.
    const storeDown = this.#failureLines.failures >= 2 || asked !== undefined;
    const backoff = backoffDelay(
      this.#options.retry,
      storeDown ? this.#failureLines.failures : (batch.failures ?? 1),
      this.#random,
    );
    // The store's own word on when it can take more beats a guess. Up to a tenth more, drawn at random, so that
    // the devices a server told the same time do not all come back at once.
    const delay =
      asked === undefined ? backoff : Math.max(backoff, Math.round(asked * (1 + 0.1 * this.#random())));
    if (admitted !== undefined) {
      const repeats = repeatsNote(admitted.leftOut, 'failed attempt(s)');
      this.#options.logger?.warn(
        {
          event: 'capture-upload-failed',
          ...uploadFailureFields(error),
          batchId: batch.batchId,
          failures: this.#failureLines.failures,
          batchFailures: batch.failures,
          ...(admitted.leftOut > 0 && { failuresNotLogged: admitted.leftOut }),
          retryInMs: delay,
          ...(asked !== undefined && { retryAfterMs: asked }),
          spooledBatches: this.#batches.length,
          spooledBytes: this.#bytes,
        },
        asked === undefined
          ? `capture spool: cannot upload to ${this.#options.store.description} (${errorMessage(error)}); retrying in ${Math.round(delay / 1000)} s (${repeats})`
          : `capture spool: ${this.#options.store.description} asked to wait ${Math.ceil(asked / 1000)} s (Retry-After); retrying in ${Math.round(delay / 1000)} s (${repeats})`,
      );
    }
    if (keptRefusals.length > 0) this.#logKeptRefusals(batch, keptRefusals, delay);
    await this.#retryOrSetAside(batch, delay, errorMessage(error), storeDown);
  }

  /**
   * Files the store refused in an attempt, kept in the batch (a proxy's 413, a 403, a 400: a setting may be at
   * fault, see storeRefusal): each counted (`refusedFiles{via="spool"}`, at each attempt that meets it), and a
   * warning `capture-upload-refused` with `kept: true`, the first then at most one a minute.
   */
  #logKeptRefusals(
    batch: SpooledBatch,
    kept: readonly { file: SpoolFile; error: RefusedByStoreError }[],
    retryInMs: number,
  ): void {
    this.#options.metrics?.refusedFiles.inc({ via: 'spool' }, kept.length);
    const admitted = this.#refusedLines.admit('kept');
    if (admitted === undefined) return;
    const limit = this.#options.setAsideAfterFailures ?? SET_ASIDE_AFTER_FAILURES;
    const first = kept[0]!.error;
    this.#options.logger?.warn(
      {
        event: 'capture-upload-refused',
        ...uploadFailureFields(first),
        batchId: batch.batchId,
        refusedKeys: kept.map((r) => r.file.key),
        ...(first.status !== undefined && { status: first.status }),
        kept: true,
        batchFailures: batch.failures,
        strikes: batch.strikes ?? 0,
        retryInMs,
        ...(admitted.leftOut > 0 && { refusedNotLogged: admitted.leftOut }),
      },
      `capture spool: ${this.#options.store.description} refused ${kept.length} file(s) of the batch ${batch.batchId} (${kept
        .map((r) => r.error.message)
        .join(
          '; ',
        )}); kept in the spool, as a setting (a proxy's body limit, the fleet's output) may be what the store refuses, and retried in ${Math.round(retryInMs / 1000)} s; set aside after ${limit} such attempts while the store takes other batches (${repeatsNote(admitted.leftOut, 'refusal line(s)')})`,
    );
  }

  /**
   * This disk failed the batch (a file unreadable, the smaller batch not written back), not the store: the store's
   * state is unchanged, the batch waits its own backoff while the others go on. Lack of space passes, so it is no
   * strike; anything else is.
   */
  async #diskFailed(batch: SpooledBatch, error: SpoolDiskError): Promise<void> {
    const code = (error.cause as { code?: string } | undefined)?.code ?? '';
    if (!['ENOSPC', 'EDQUOT'].includes(code)) batch.strikes = (batch.strikes ?? 0) + 1;
    const delay = backoffDelay(this.#options.retry, batch.failures ?? 1, this.#random);
    // This disk's failure (ENOSPC, EIO), not the store's: said as such, with its stack (a line a minute at most).
    const admitted = this.#diskLines.admit(error.event);
    if (admitted !== undefined) {
      this.#options.logger?.error(
        {
          event: error.event,
          batchId: batch.batchId,
          err: error.cause,
          retryInMs: delay,
          batchFailures: batch.failures,
          ...(admitted.leftOut > 0 && { linesNotLogged: admitted.leftOut }),
        },
        `capture spool: ${error.message}; retrying in ${Math.round(delay / 1000)} s, the other batches going on (${repeatsNote(admitted.leftOut, 'such failure(s)')})`,
      );
    }
    await this.#retryOrSetAside(batch, delay, error.message, false);
  }

  /**
   * After a failed attempt: `pause`, every batch waits `delay` (the store looks unreachable), else this batch alone
   * (its own timer); a batch whose own failures reached the limit is set aside instead.
   */
  async #retryOrSetAside(batch: SpooledBatch, delay: number, why: string, pause: boolean): Promise<void> {
    if (pause && !this.#closed) {
      if (this.#pause !== undefined) this.#timers.clear(this.#pause);
      this.#pause = this.#timers.set(() => {
        this.#pause = undefined;
        this.#kick();
      }, delay);
    }
    // Dropped for the quota meanwhile (its folder removed above): nothing is left to retry.
    if (batch.evicted || !this.#batches.includes(batch)) return;
    const limit = this.#options.setAsideAfterFailures ?? SET_ASIDE_AFTER_FAILURES;
    if ((batch.strikes ?? 0) >= limit && (await this.#moveAside(batch, why))) return;
    if (pause || this.#closed) return;
    this.#clearRetry(batch);
    batch.retryTimer = this.#timers.set(() => {
      batch.retryTimer = undefined;
      this.#kick();
    }, delay);
  }

  /**
   * Sets a batch that can never upload aside: its folder moved to `<dir>/set-aside/<batch id>/` with a note of
   * why, its captures marked FAILURE, counted (`reason: set-aside`) and logged. False when it could not be moved
   * (then it is retried as before).
   */
  async #moveAside(batch: SpooledBatch, why: string): Promise<boolean> {
    const folder = join(this.#options.dir, batch.batchId);
    const asideDir = join(this.#options.dir, SET_ASIDE_DIR);
    const aside = join(asideDir, batch.batchId);
    const failures = batch.failures ?? 0;
    try {
      await mkdir(asideDir, { recursive: true, mode: 0o700 });
      // The note is for the operator; a disk too full to take it does not keep the batch from being set aside.
      await this.#writeFile(
        join(folder, SET_ASIDE_NOTE),
        Buffer.from(
          JSON.stringify({
            setAsideAt: new Date(this.#now()).toISOString(),
            reason: why,
            failures,
            captureIds: batch.captureIds,
          }),
        ),
      ).catch(() => undefined);
      await rm(aside, { recursive: true, force: true });
      await rename(folder, aside);
      await syncFolder(this.#options.dir).catch(() => undefined);
    } catch (error) {
      this.#options.logger?.error(
        { event: 'capture-spool-set-aside-failed', batchId: batch.batchId, err: error },
        `capture spool: cannot set the batch ${folder} aside in ${asideDir} (${errorMessage(error)}); retrying it`,
      );
      return false;
    }
    const index = this.#batches.indexOf(batch);
    if (index >= 0) this.#forget(index);
    this.#clearRetry(batch);
    this.#setAside.push({ batchId: batch.batchId, bytes: batch.bytes });
    const maxBytes = this.#options.setAsideMaxBytes ?? Math.floor(this.#options.quotaBytes / 4);
    const overBound = batch.bytes > maxBytes;
    const detail = setAsideDetail(this.#options.store.description, { failures, reason: why }, aside);
    if (batch.captureIds.length > 0) this.#options.onDropped(batch.captureIds, detail);
    this.#options.metrics?.dropped.inc({ reason: 'set-aside' }, batch.captureIds.length);
    this.#options.logger?.error(
      {
        event: 'capture-spool-set-aside',
        batchId: batch.batchId,
        path: aside,
        captures: batch.captureIds.length,
        bytes: batch.bytes,
        failures,
        ...(overBound && { overMaxBytes: maxBytes }),
      },
      `capture spool: ${detail}; its ${batch.captureIds.length} capture(s) are marked FAILURE. Look at it there, then remove it (or move it back into ${this.#options.dir} and restart the agent to try it again)${
        overBound
          ? `. It alone is over the set-aside folder's bound of ${maxBytes} bytes: kept all the same, the older set-aside batches too, until another is set aside`
          : ''
      }`,
    );
    await this.#boundSetAside();
    return true;
  }

  /**
   * The set-aside batches an earlier run left, oldest first by when they were set aside: their note's time, or,
   * for a folder without one (a disk too full to take it), the folder's ctime (its rename into set-aside/ sets it).
   * Each with its captures and why it was set aside (its note; without one, its batch.json's captures): for
   * setAsideDetails, built once the bound has run.
   */
  async #readSetAside(): Promise<SetAsideFound[]> {
    const asideDir = join(this.#options.dir, SET_ASIDE_DIR);
    const found: (SetAsideFound & { at: number })[] = [];
    for (const entry of await readdir(asideDir, { withFileTypes: true }).catch(() => [])) {
      if (!entry.isDirectory()) continue;
      const path = join(asideDir, entry.name);
      let bytes = 0;
      let at: number | undefined;
      for (const file of await readdir(path, { withFileTypes: true }).catch(() => [])) {
        if (!file.isFile()) continue;
        const info = await stat(join(path, file.name)).catch(() => undefined);
        bytes += info?.size ?? 0;
        if (file.name === SET_ASIDE_NOTE && info !== undefined) at = info.mtimeMs;
      }
      at ??= (await stat(path).catch(() => undefined))?.ctimeMs ?? 0;
      const note = await readFile(join(path, SET_ASIDE_NOTE), 'utf8')
        .then((text) => SetAsideNoteSchema.parse(JSON.parse(text)))
        .catch(() => undefined);
      const captureIds =
        note?.captureIds ??
        (await readFile(join(path, BATCH_FILE), 'utf8')
          .then((text) => SpooledBatchSchema.parse(JSON.parse(text)).captureIds)
          .catch(() => []));
      found.push({ batchId: entry.name, bytes, at, captureIds, ...(note !== undefined && { note }) });
    }
    found.sort((a, b) => a.at - b.at);
    this.#setAside = found.map(({ batchId, bytes }) => ({ batchId, bytes }));
    return found;
  }

  /**
   * Keeps the set-aside folder within its bounds: the oldest set-aside batches go first, each logged and counted
   * (setAsideRemoved). The batch set aside last is never removed for the byte bound, and when it alone is over it,
   * the older ones are not removed for it either (that would not make it fit): it is kept over the bound, said so.
   * Returns the ids of the batches removed.
   */
  async #boundSetAside(): Promise<Set<string>> {
    const removed = new Set<string>();
    const maxBatches = this.#options.setAsideMaxBatches ?? SET_ASIDE_MAX_BATCHES;
    const maxBytes = this.#options.setAsideMaxBytes ?? Math.floor(this.#options.quotaBytes / 4);
    const newest = this.#setAside.at(-1);
    const newestOver = newest !== undefined && newest.bytes > maxBytes;
    // Bytes counted against the bound: without a newest batch over it alone.
    let bytes = this.#setAside.reduce((n, b) => n + b.bytes, 0) - (newestOver ? newest.bytes : 0);
    while (this.#setAside.length > 0) {
      const overCount = this.#setAside.length > maxBatches;
      const oldest = this.#setAside[0]!;
      if (!overCount && (bytes <= maxBytes || oldest === newest)) break;
      this.#setAside.shift();
      if (!(oldest === newest && newestOver)) bytes -= oldest.bytes;
      const path = join(this.#options.dir, SET_ASIDE_DIR, oldest.batchId);
      await rm(path, { recursive: true, force: true });
      removed.add(oldest.batchId);
      this.#options.metrics?.setAsideRemoved.inc();
      this.#options.logger?.warn(
        {
          event: 'capture-spool-set-aside-removed',
          batchId: oldest.batchId,
          path,
          bytes: oldest.bytes,
          maxBatches,
          maxBytes,
        },
        `capture spool: removed the oldest set-aside batch ${path} (its captures are FAILURE: marked when it was set aside, or at this start where the agent stopped before) to keep the set-aside folder within ${maxBatches} batches and ${maxBytes} bytes`,
      );
    }
    return removed;
  }

  /** The batch's folder is gone (removed from the spool folder while the agent ran): its captures are lost. */
  #batchGone(batch: SpooledBatch, folder: string): void {
    const index = this.#batches.indexOf(batch);
    if (index >= 0) this.#forget(index);
    if (batch.evicted) return;
    const detail = `the spooled batch ${folder} is gone (removed from the spool folder)`;
    if (batch.captureIds.length > 0) this.#options.onDropped(batch.captureIds, detail);
    this.#options.metrics?.dropped.inc({ reason: 'missing' }, batch.captureIds.length);
    this.#options.metrics?.spoolMissingFiles.inc(batch.files.length);
    const admitted = this.#diskLines.admit('missing');
    if (admitted !== undefined) {
      this.#options.logger?.warn(
        {
          event: 'capture-spool-file-missing',
          batchId: batch.batchId,
          missingKeys: batch.files.map((f) => f.key),
          dropped: batch.captureIds.length,
          captures: 0,
          ...(admitted.leftOut > 0 && { linesNotLogged: admitted.leftOut }),
        },
        `capture spool: ${detail}; its ${batch.captureIds.length} capture(s) are marked FAILURE (${repeatsNote(admitted.leftOut, 'such line(s)')})`,
      );
    }
  }

  /**
   * Drops the files the store refused for good from the batch, and with them what is meaningless without them:
   * a refused side file takes the records that reference it (a record whose `data-ref` names an object that will
   * never exist is a broken record: its data is lost, and a reader following the reference fails) out of every
   * manifest, Model Monitor's included, and those records' other side files; a refused manifest takes its records. A Model Monitor manifest
   * is a second copy of records in another format: refused, its captures' Edge Manager records still go, so they
   * are not failed for it; a capture failed here loses its Model Monitor record too (Model Monitor never sees a
   * record of a capture reported FAILURE). The captures whose Edge Manager records are dropped are marked FAILURE with the store's
   * reason and counted (`reason: refused`); everything else in the batch goes on (and is retried as before). The
   * smaller batch is written back to the spool (manifests rewritten, then batch.json replaced atomically), so a
   * retry after a later failure neither sends the refused files again nor counts them twice. `files` (the batch's
   * files with their bytes) is updated in place, and the refusals are added to `into` before the spool is
   * rewritten: a local failure to rewrite it (SpoolRewriteError) loses no refusal's line. The dropped captures are
   * counted once the rewrite is done, so a retry after that failure, which meets the refusals again, does not
   * count them twice (their statuses, set first, are set again: the same FAILURE). A crash before the rewrite
   * repeats the statuses too, and starts the counters from zero anyway.
   */
  async #dropRefusedFiles(
    batch: SpooledBatch,
    files: SpoolFile[],
    refused: readonly { file: SpoolFile; error: RefusedByStoreError }[],
    into: Refusal[],
  ): Promise<void> {
    const refusedKeys = new Set(refused.map((r) => r.file.key));
    const refusedUrls = new Set(
      refused.filter((r) => r.file.kind === 'side').map((r) => this.#options.store.urlFor(r.file.key)),
    );
    const failedIds = new Set<string>();
    const refusals: Refusal[] = refused.map(({ file, error }) => ({
      key: file.key,
      kind: file.kind,
      error,
      captureIds: new Set<string>(),
    }));
    into.push(...refusals);
    const refusalOf = (key: string) => refusals.find((r) => r.key === key);
    const kept: SpoolFile[] = [];
    /** Data-refs of the records kept (the side files still needed) and of those dropped. */
    const stillNamed = new Set<string>();
    const droppedNamed = new Set<string>();
    const rewritten: SpoolFile[] = [];
    // Model Monitor's copies after the Edge Manager manifests: they lose the records of the captures those fail.
    const manifests = files
      .filter((f) => f.kind !== 'side')
      .sort((a, b) => Number(a.kind === 'monitor-manifest') - Number(b.kind === 'monitor-manifest'));
    for (const file of manifests) {
      const monitorCopy = file.kind === 'monitor-manifest';
      const records = manifestRecords(file.body);
      if (refusedKeys.has(file.key)) {
        for (const record of records) {
          if (record.eventId === undefined) continue;
          refusalOf(file.key)!.captureIds.add(record.eventId);
          if (!monitorCopy) failedIds.add(record.eventId);
        }
        continue;
      }
      const remaining = records.filter((record) => {
        if (monitorCopy && record.eventId !== undefined && failedIds.has(record.eventId)) return false;
        const missing = [...record.refs].find((ref) => refusedUrls.has(ref));
        if (missing === undefined) return true;
        for (const ref of record.refs) droppedNamed.add(ref);
        if (record.eventId !== undefined) {
          const refusal = refused.find((r) => this.#options.store.urlFor(r.file.key) === missing)!;
          refusalOf(refusal.file.key)!.captureIds.add(record.eventId);
          if (!monitorCopy) failedIds.add(record.eventId);
        }
        return false;
      });
      for (const record of remaining) for (const ref of record.refs) stillNamed.add(ref);
      if (remaining.length === records.length) kept.push(file);
      else if (remaining.length > 0) {
        const body = Buffer.from(`${remaining.map((r) => r.line).join('\n')}\n`, 'utf8');
        const replacement = { ...file, body, bytes: body.byteLength, file: '' };
        rewritten.push(replacement);
        kept.push(replacement);
      }
    }
    // Only a side file that dropped records named and no kept one does goes with them: one named by no record
    // known here (records rendered with another URL) stays, as sending too much loses nothing.
    const sideFiles = files.filter((f) => {
      if (f.kind !== 'side' || refusedKeys.has(f.key)) return false;
      const url = this.#options.store.urlFor(f.key);
      return !droppedNamed.has(url) || stillNamed.has(url);
    });
    const next: SpoolFile[] = [...sideFiles, ...kept];
    // By id: statuses are kept by id, so a capture id the application used twice in the batch fails for both.
    const captureIds = batch.captureIds.filter((id) => !failedIds.has(id));
    if (!batch.evicted) {
      // Statuses first, as for a delivered batch: a crash before the batch is rewritten meets the refusal again
      // at the next start (and fails the same captures again), never leaves them IN_PROGRESS.
      const failed = [...failedIds];
      if (failed.length > 0) {
        const reasons = refusals
          .filter((r) => r.kind !== 'monitor-manifest')
          .map((r) => r.error.message)
          .join('; ');
        this.#options.onDropped(failed, `refused by ${this.#options.store.description}: ${reasons}`);
      }
      await this.#writeBack(batch, next, rewritten, captureIds);
      if (failed.length > 0) this.#options.metrics?.dropped.inc({ reason: 'refused' }, failed.length);
    }
    this.#adopt(batch, files, next, captureIds);
  }

  /**
   * Writes the smaller batch back to its folder: rewritten files under new names (so batch.json names either the
   * old files or the new, whatever a crash cuts), then batch.json replaced atomically, then the folder synced
   * (SpoolRewriteError when any fails); then removes the files no longer named.
   */
  async #writeBack(
    batch: SpooledBatch,
    next: readonly SpoolFile[],
    rewritten: readonly SpoolFile[],
    captureIds: readonly string[],
  ): Promise<void> {
    const folder = join(this.#options.dir, batch.batchId);
    let name = Math.max(-1, ...batch.files.map((f) => Number(f.file))) + 1;
    for (const file of rewritten) file.file = String(name++);
    const stored: z.infer<typeof SpooledBatchSchema> = {
      v: 1,
      batchId: batch.batchId,
      createdAt: batch.createdAt,
      captureIds: [...captureIds],
      files: next.map(({ key, contentType, file, bytes, kind }) => ({ key, contentType, file, bytes, kind })),
    };
    try {
      for (const file of rewritten) await this.#writeFile(join(folder, file.file), file.body);
      await this.#writeFile(join(folder, BATCH_FILE), Buffer.from(JSON.stringify(stored)));
      await syncFolder(folder);
    } catch (error) {
      throw new SpoolRewriteError(folder, error);
    }
    // Files no longer named only waste disk until the batch's folder goes: a failure to remove them is no failure.
    const named = new Set(stored.files.map((f) => f.file));
    await Promise.all(
      batch.files
        .filter((f) => !named.has(f.file))
        .map((f) => rm(join(folder, f.file), { force: true }).catch(() => undefined)),
    );
  }

  /** The batch in memory becomes its smaller self: `next`'s files (and `files`, the attempt's, in place). */
  #adopt(batch: SpooledBatch, files: SpoolFile[], next: readonly SpoolFile[], captureIds: string[]): void {
    const bytes = next.reduce((n, f) => n + f.bytes, 0);
    if (this.#batches.includes(batch)) this.#bytes += bytes - batch.bytes;
    batch.bytes = bytes;
    batch.captureIds = captureIds;
    batch.files = next.map(({ key, contentType, file, bytes: b, kind }) => ({
      key,
      contentType,
      file,
      bytes: b,
      kind,
    }));
    files.splice(0, files.length, ...next);
  }

  /**
   * Files of the batch that are missing (cause `missing`: removed from its folder) or torn (cause `damaged`: a size
   * not the one batch.json records, or a manifest whose last line is cut, by a crash or a disk fault): the complete
   * records go on and only the captures whose Edge Manager record is lost (in a lost manifest, or naming a lost side
   * file) are marked FAILURE, counted (`reason: missing` / `damaged`; missing files in spoolMissingFiles too) and
   * logged with a warning (the first, then at most one a minute), instead of the store refusing the whole file or
   * the batch failing for ever. The smaller batch is written back as for a refusal, so a retry sends it as it is
   * now. `files` (with a missing file's body empty) is updated in place.
   */
  async #dropDamagedFiles(
    batch: SpooledBatch,
    files: SpoolFile[],
    torn: readonly SpoolFile[],
    cause: 'missing' | 'damaged',
  ): Promise<void> {
    if (torn.length === 0) return;
    const isManifest = (f: SpoolFile) => f.kind !== 'side';
    // A batch dropped for the quota meanwhile has its statuses already: it is sent as it is, less what is missing.
    if (batch.evicted) {
      if (cause === 'missing') files.splice(0, files.length, ...files.filter((f) => !torn.includes(f)));
      return;
    }
    const tornSideUrls = new Set(
      torn.filter((f) => !isManifest(f)).map((f) => this.#options.store.urlFor(f.key)),
    );
    const kept: SpoolFile[] = [];
    const rewritten: SpoolFile[] = [];
    const delivered = new Set<string>();
    let monitorFailed = new Set<string>();
    // Edge Manager manifests first: a Model Monitor copy keeps only the records of captures they still carry.
    const manifests = files
      .filter(isManifest)
      .sort((a, b) => Number(a.kind === 'monitor-manifest') - Number(b.kind === 'monitor-manifest'));
    for (const file of manifests) {
      if (file.kind === 'monitor-manifest' && monitorFailed.size === 0)
        monitorFailed = new Set(batch.captureIds.filter((id) => !delivered.has(id)));
      const text = file.body.toString('utf8');
      // The part after the last newline is a cut line (or nothing).
      const complete = text.slice(0, text.lastIndexOf('\n') + 1);
      const tornManifest = torn.includes(file);
      const records = manifestRecords(Buffer.from(complete, 'utf8')).filter((record) => {
        // In a torn manifest, a line that is no record of this agent's is taken as damaged.
        if (record.eventId === undefined) return !tornManifest;
        if ([...record.refs].some((ref) => tornSideUrls.has(ref))) return false;
        return file.kind !== 'monitor-manifest' || !monitorFailed.has(record.eventId);
      });
      if (file.kind !== 'monitor-manifest')
        for (const r of records) if (r.eventId !== undefined) delivered.add(r.eventId);
      const body = Buffer.from(records.map((r) => `${r.line}\n`).join(''), 'utf8');
      if (records.length === 0) continue;
      if (body.equals(file.body)) kept.push(file);
      else {
        const replacement = { ...file, body, bytes: body.byteLength, file: '' };
        rewritten.push(replacement);
        kept.push(replacement);
      }
    }
    const next: SpoolFile[] = [...files.filter((f) => !isManifest(f) && !torn.includes(f)), ...kept];
    const failed = batch.captureIds.filter((id) => !delivered.has(id));
    const detail =
      cause === 'missing'
        ? `the spooled batch ${batch.batchId} lost files on this device's disk (${torn
            .map((f) => `${f.key}: missing`)
            .join('; ')}); the capture's record was lost`
        : `the spooled batch ${batch.batchId} was damaged on this device's disk (${torn
            .map((f) => `${f.key}: ${f.body.byteLength} bytes, ${f.bytes} recorded`)
            .join('; ')}); the capture's record was lost`;
    if (failed.length > 0) this.#options.onDropped(failed, detail);
    const captureIds = batch.captureIds.filter((id) => delivered.has(id));
    await this.#writeBack(batch, next, rewritten, captureIds);
    this.#options.metrics?.dropped.inc({ reason: cause }, failed.length);
    if (cause === 'missing') this.#options.metrics?.spoolMissingFiles.inc(torn.length);
    const admitted = this.#diskLines.admit(cause);
    if (admitted !== undefined) {
      this.#options.logger?.warn(
        {
          event: cause === 'missing' ? 'capture-spool-file-missing' : 'capture-spool-damaged',
          batchId: batch.batchId,
          ...(cause === 'missing'
            ? { missingKeys: torn.map((f) => f.key) }
            : {
                damagedFiles: torn.map((f) => ({
                  key: f.key,
                  bytes: f.body.byteLength,
                  recordedBytes: f.bytes,
                })),
              }),
          dropped: failed.length,
          captures: captureIds.length,
          ...(admitted.leftOut > 0 && { linesNotLogged: admitted.leftOut }),
        },
        `capture spool: ${detail}s; sending the ${captureIds.length} complete capture(s) and marking the ${failed.length} lost one(s) FAILURE (${repeatsNote(admitted.leftOut, 'such line(s)')})`,
      );
    }
    this.#adopt(batch, files, next, captureIds);
  }

  /** One line for the files of a batch the store refused for good in an attempt (none: nothing). */
  #logRefusals(batch: SpooledBatch, refusals: readonly Refusal[]): void {
    if (refusals.length === 0) return;
    const captures = new Set(refusals.flatMap((r) => [...r.captureIds])).size;
    this.#options.metrics?.refusedFiles.inc({ via: 'spool' }, refusals.length);
    this.#options.logger?.warn(
      {
        event: 'capture-upload-refused',
        ...uploadFailureFields(refusals[0]!.error),
        batchId: batch.batchId,
        refusedKeys: refusals.map((r) => r.key),
        captures,
        ...(batch.files.length > 0 && { filesLeft: batch.files.length }),
      },
      `capture spool: ${this.#options.store.description} refused ${refusals.length} file(s) for good (${refusals
        .map((r) => r.error.message)
        .join(
          '; ',
        )}); dropped them and the records of ${captures} capture(s) that need them; the rest of the batch goes on`,
    );
  }

  async #enforceQuota(): Promise<void> {
    while (this.#bytes > this.#options.quotaBytes) {
      const batch = this.#batches[0];
      if (!batch) return;
      this.#forget(0);
      const detail = `dropped from the offline spool: ${this.#options.dir} was over its quota of ${this.#options.quotaBytes} bytes while ${this.#options.store.description} was unreachable`;
      this.#options.onDropped(batch.captureIds, detail);
      this.#options.metrics?.dropped.inc({ reason: 'spool-quota' }, batch.captureIds.length);
      this.#options.logger?.warn(
        {
          batchId: batch.batchId,
          captures: batch.captureIds.length,
          bytes: batch.bytes,
          quotaBytes: this.#options.quotaBytes,
        },
        `capture spool: over quota; dropped the oldest batch (${batch.captureIds.length} captures)`,
      );
      this.#clearRetry(batch);
      // The batch being uploaded keeps its folder until that attempt ends.
      if (batch === this.#uploading) batch.evicted = true;
      else await rm(join(this.#options.dir, batch.batchId), { recursive: true, force: true });
    }
  }

  #forget(index: number): void {
    const [batch] = this.#batches.splice(index, 1);
    if (batch) this.#bytes -= batch.bytes;
  }
}

/** A batch not spooled because its file system is nearly full: nothing was written; try again later. */
export class CaptureSpoolFullError extends Error {
  override readonly name = 'CaptureSpoolFullError';
  readonly code = 'ENOSPC';
}

/** This disk failed an upload (reading a spooled file, writing the smaller batch back): a local fault, not the store's. */
abstract class SpoolDiskError extends Error {
  /** The event of its log line. */
  abstract readonly event: string;
}

/** Writing the smaller batch back to the spool's folder failed. */
class SpoolRewriteError extends SpoolDiskError {
  override readonly name = 'SpoolRewriteError';
  readonly event = 'capture-spool-rewrite-failed';
  constructor(folder: string, cause: unknown) {
    super(`cannot rewrite the spooled batch ${folder} (${errorMessage(cause)})`, { cause });
  }
}

/** A spooled file could not be read (not for being missing: that drops the file). */
class SpoolReadError extends SpoolDiskError {
  override readonly name = 'SpoolReadError';
  readonly event = 'capture-spool-read-failed';
  constructor(folder: string, file: string, cause: unknown) {
    super(`cannot read ${join(folder, file)} of a spooled batch (${errorMessage(cause)})`, { cause });
  }
}

/**
 * Answers that pass (a timeout, a conflict, too early, too many requests): never a batch's own failure. 409: the
 * control plane's for a key an earlier upload of this device is still writing (a cut upload, retried: it passes
 * once that write is answered or its lease ends), for a write that outlasted its lease, and for a fleet output the
 * operator has yet to fix (no batch goes then, so it is no strike anyway); S3's (OperationAborted,
 * ConditionalRequestConflict) say "try again". None says anything lasting of the file.
 */
const PASSING_STATUSES = new Set([408, 409, 425, 429]);

/**
 * S3 error codes that pass although S3 sends them with a 400 or 403: none says anything lasting of the file. The
 * AWS SDK's own lists of transient, throttling and clock-skew codes (TRANSIENT_ERROR_CODES, THROTTLING_ERROR_CODES
 * and CLOCK_SKEW_ERROR_CODES of @smithy/service-error-classification, not installed here: its versions' lists
 * together), then a body cut or corrupted in transit (IncompleteBody, BadDigest) and credentials at their expiry
 * (ExpiredToken, TokenRefreshRequired: the IoT credentials provider's last for an hour). A slow link's largest file
 * times out (400 RequestTimeout) on the same key every attempt, so by its status alone it would look lasting.
 */
const PASSING_S3_CODES = new Set([
  // Transient.
  'AbortError',
  'TimeoutError',
  'RequestTimeout',
  'RequestTimeoutException',
  // Throttling.
  'BandwidthLimitExceeded',
  'EC2ThrottledException',
  'LimitExceededException',
  'PriorRequestNotComplete',
  'ProvisionedThroughputExceededException',
  'RequestLimitExceeded',
  'RequestThrottled',
  'RequestThrottledException',
  'SlowDown',
  'ThrottledException',
  'Throttling',
  'ThrottlingException',
  'TooManyRequestsException',
  'TransactionInProgressException',
  // Clock skew.
  'AuthFailure',
  'InvalidSignatureException',
  'RequestExpired',
  'RequestInTheFuture',
  'RequestTimeTooSkewed',
  'SignatureDoesNotMatch',
  // Damaged in transit, or credentials that expired.
  'IncompleteBody',
  'BadDigest',
  'ExpiredToken',
  'TokenRefreshRequired',
]);

/**
 * Whether a failed put may be the batch's own, lasting failure: the store's answer for one of its files (`key`) is
 * an HTTP 4xx status, not 408/409/425/429. False for failures that pass and say nothing of the batch: no answer
 * (network, timeout), a 5xx, a Retry-After (RetryLaterError: the store asked to wait), an S3 error whose code is one
 * of PASSING_S3_CODES whatever its status.
 */
function isOwnFailure(error: unknown, key: string | undefined): boolean {
  if (key === undefined || error instanceof RetryLaterError) return false;
  if (hasPassingS3Code(error, 0)) return false;
  const status = httpStatusOf(error, 0);
  return status !== undefined && status >= 400 && status < 500 && !PASSING_STATUSES.has(status);
}

/** Whether an S3 SDK error (or its cause) carries one of PASSING_S3_CODES: the SDK names the error by S3's code. */
function hasPassingS3Code(error: unknown, depth: number): boolean {
  if (depth > 4 || error === null || typeof error !== 'object') return false;
  const e = error as { name?: unknown; Code?: unknown; $metadata?: unknown; cause?: unknown };
  // Only the SDK's errors ($metadata): another error's name (the control plane's, say) is no S3 code.
  if (
    e.$metadata !== undefined &&
    [e.name, e.Code].some((c) => typeof c === 'string' && PASSING_S3_CODES.has(c))
  )
    return true;
  return hasPassingS3Code(e.cause, depth + 1);
}

/** The HTTP status an error (or its cause) carries: the control plane's (`status`) or the S3 SDK's. */
function httpStatusOf(error: unknown, depth: number): number | undefined {
  if (depth > 4 || error === null || typeof error !== 'object') return undefined;
  if (error instanceof RetryLaterError) return undefined;
  const e = error as { status?: unknown; $metadata?: { httpStatusCode?: unknown }; cause?: unknown };
  if (typeof e.status === 'number') return e.status;
  if (typeof e.$metadata?.httpStatusCode === 'number') return e.$metadata.httpStatusCode;
  return httpStatusOf(e.cause, depth + 1);
}

/** Files whose size is not the one batch.json records, or manifests whose last line is cut. */
function tornFiles(files: readonly SpoolFile[]): SpoolFile[] {
  return files.filter(
    (f) =>
      f.body.byteLength !== f.bytes ||
      (f.kind !== 'side' && f.body.byteLength > 0 && f.body[f.body.byteLength - 1] !== 0x0a),
  );
}

async function folderExists(path: string): Promise<boolean> {
  return stat(path).then(
    (info) => info.isDirectory(),
    () => false,
  );
}

/** A spooled file with its bytes. */
type SpoolFile = SpooledBatch['files'][number] & { body: Buffer };

/** A file the store refused for good, and the captures whose records were dropped for it. */
interface Refusal {
  key: string;
  kind: RenderedFileKind;
  error: RefusedByStoreError;
  captureIds: Set<string>;
}

/** A manifest's records: each line, its capture id (`eventMetadata.eventId`) and the data-refs it names. */
function manifestRecords(body: Buffer): { line: string; eventId: string | undefined; refs: Set<string> }[] {
  return body
    .toString('utf8')
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => {
      const refs = new Set<string>();
      let eventId: string | undefined;
      try {
        const record = JSON.parse(line) as { eventMetadata?: { eventId?: unknown } };
        const id = record.eventMetadata?.eventId;
        if (typeof id === 'string') eventId = id;
        collectDataRefs(record, refs, 0);
      } catch {
        // Not a record this agent wrote: kept as it is (it names nothing known).
      }
      return { line, eventId, refs };
    });
}

/**
 * The `data-ref` values in a record, Edge Manager's (`"data-ref"` in an entry) and Model Monitor's (in
 * `endpointInput`/`endpointOutput`, or in the tensors' `parameters` inside its JSON `data` text).
 */
function collectDataRefs(value: unknown, into: Set<string>, depth: number): void {
  if (depth > 8 || value === null || typeof value !== 'object') return;
  for (const [key, inner] of Object.entries(value)) {
    if (key === 'data-ref' && typeof inner === 'string') into.add(inner);
    else if (key === 'data' && typeof inner === 'string' && inner.startsWith('{')) {
      try {
        collectDataRefs(JSON.parse(inner), into, depth + 1);
      } catch {
        // Text that only looks like JSON: names nothing.
      }
    } else collectDataRefs(inner, into, depth + 1);
  }
}
