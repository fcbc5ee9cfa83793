import { randomBytes } from 'node:crypto';
import { mkdir, readFile, readdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { backoffDelay, type BackoffPolicy } from '../retry/index.js';
import { TEMP_FILE_MARK, syncFolder, writeFileAtomic } from './atomic-files.js';
import type { CaptureLogger, CaptureMetrics } from './capture-metrics.js';
import { putAll } from './destinations.js';
import {
  MAX_RETRY_AFTER_MS,
  RefusedByStoreError,
  RetryLaterError,
  type ObjectStore,
} from './object-store.js';
import type { RenderedBatch, RenderedFile } from './records.js';
import { uploadFailureFields } from './upload-failure.js';

const errorMessage = (error: unknown): string => (error instanceof Error ? error.message : String(error));

const BATCH_FILE = 'batch.json';

const SpooledBatchSchema = z.object({
  v: z.literal(1),
  batchId: z.string().regex(/^[0-9a-f]{32}$/),
  /** When the batch's oldest capture was received. */
  createdAt: z.number(),
  captureIds: z.array(z.string()),
  files: z.array(
    z.object({
      key: z.string().min(1),
      contentType: z.string(),
      file: z.string().regex(/^\d+$/),
      bytes: z.number().int().nonnegative(),
    }),
  ),
});
type SpooledBatch = z.infer<typeof SpooledBatchSchema> & {
  bytes: number;
  /** Dropped for the quota while an upload of it was under way: its folder goes when that attempt ends. */
  evicted?: boolean;
};

export interface CaptureSpoolOptions {
  /** The spool folder (under the local data root). */
  dir: string;
  /** Disk the spool may take; past it, the oldest batches are dropped. */
  quotaBytes: number;
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
 * Batches for the bucket that could not be put there, kept on local disk and retried with exponential backoff
 * and jitter until they are; when the store said how long to wait (Retry-After on a 429 or 503), at least that
 * long (capped at MAX_RETRY_AFTER_MS, then up to a tenth more of jitter: at most 66 min). Each batch is a folder `<batch id>/` (its rendered files and a `batch.json` naming
 * their keys and captures), created under a temporary name and renamed into place, so a crash never leaves half
 * a batch. The folder is the record: it survives restarts with or without the local database. Past the quota,
 * the oldest batches go first, counted and logged.
 */
export class CaptureSpool {
  readonly #options: CaptureSpoolOptions;
  readonly #random: () => number;
  /** Oldest first. */
  #batches: SpooledBatch[] = [];
  #bytes = 0;
  #failures = 0;
  readonly #timers: SpoolTimers;
  #timer: unknown;
  #uploading: SpooledBatch | undefined;
  #idle: Promise<void> = Promise.resolve();
  #closed = false;

  constructor(options: CaptureSpoolOptions) {
    this.#options = options;
    this.#random = options.random ?? Math.random;
    this.#timers = options.timers ?? REAL_TIMERS;
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
    return this.#failures > 0;
  }

  /** Ids of the captures waiting in the spool. */
  captureIds(): Set<string> {
    return new Set(this.#batches.flatMap((b) => b.captureIds));
  }

  /** Reads what earlier runs left (dropping temporary folders of interrupted writes) and starts uploading it. */
  async open(): Promise<void> {
    await mkdir(this.#options.dir, { recursive: true, mode: 0o700 });
    const found: SpooledBatch[] = [];
    for (const entry of await readdir(this.#options.dir, { withFileTypes: true })) {
      const path = join(this.#options.dir, entry.name);
      if (entry.name.startsWith('.')) {
        await rm(path, { recursive: true, force: true });
        continue;
      }
      if (!entry.isDirectory()) continue;
      try {
        const batch = SpooledBatchSchema.parse(JSON.parse(await readFile(join(path, BATCH_FILE), 'utf8')));
        found.push({ ...batch, bytes: batch.files.reduce((n, f) => n + f.bytes, 0) });
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
    this.#kick();
  }

  /** Keeps a batch until the store takes it. Durable once this resolves. */
  async add(batch: RenderedBatch): Promise<void> {
    const dir = this.#options.dir;
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
      })),
      bytes: batch.files.reduce((n, f) => n + f.body.byteLength, 0),
    };
    try {
      await mkdir(temp, { recursive: true });
      for (const [i, file] of batch.files.entries()) await writeFileAtomic(join(temp, String(i)), file.body);
      const { bytes: _bytes, ...stored } = record;
      await writeFileAtomic(join(temp, BATCH_FILE), Buffer.from(JSON.stringify(stored)));
      await syncFolder(temp);
      // The same batch id again: an earlier run spooled it, then crashed before recording that. Replace it.
      const existing = this.#batches.findIndex((b) => b.batchId === batch.batchId);
      if (existing >= 0) this.#forget(existing);
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
    if (this.#timer !== undefined) this.#timers.clear(this.#timer);
    this.#timer = undefined;
    await this.#idle;
  }

  #kick(): void {
    if (this.#closed || this.#uploading || this.#timer !== undefined || this.#batches.length === 0) return;
    const batch = this.#batches[0]!;
    this.#uploading = batch;
    this.#idle = this.#upload(batch).finally(() => {
      this.#uploading = undefined;
      this.#kick();
    });
  }

  async #upload(batch: SpooledBatch): Promise<void> {
    const began = performance.now();
    try {
      const folder = join(this.#options.dir, batch.batchId);
      const files: RenderedFile[] = [];
      for (const f of batch.files) {
        files.push({ key: f.key, contentType: f.contentType, body: await readFile(join(folder, f.file)) });
      }
      // Side files first, then manifests, as a direct write does.
      const manifests = files.filter((f) => f.key.endsWith('.jsonl'));
      await putAll(
        this.#options.store,
        files.filter((f) => !f.key.endsWith('.jsonl')),
        this.#options.uploadConcurrency ?? 4,
      );
      await putAll(this.#options.store, manifests, this.#options.uploadConcurrency ?? 4);
    } catch (error) {
      if (error instanceof RefusedByStoreError) {
        await this.#dropRefused(batch, error);
        return;
      }
      if (batch.evicted) await rm(join(this.#options.dir, batch.batchId), { recursive: true, force: true });
      this.#failures++;
      const backoff = backoffDelay(this.#options.retry, this.#failures, this.#random);
      // The store's own word on when it can take more beats a guess. Up to a tenth more, drawn at random, so that
      // the devices a server told the same time do not all come back at once.
      const asked =
        error instanceof RetryLaterError ? Math.min(error.retryAfterMs, MAX_RETRY_AFTER_MS) : undefined;
      const delay =
        asked === undefined ? backoff : Math.max(backoff, Math.round(asked * (1 + 0.1 * this.#random())));
      this.#options.metrics?.writeFailures.inc({ destination: 'spool' });
      // One line per wait; the store's message carries no credentials (the answer's text, the key).
      this.#options.logger?.warn(
        {
          event: 'capture-upload-failed',
          ...uploadFailureFields(error),
          batchId: batch.batchId,
          failures: this.#failures,
          retryInMs: delay,
          ...(asked !== undefined && { retryAfterMs: asked }),
          spooledBatches: this.#batches.length,
          spooledBytes: this.#bytes,
        },
        asked === undefined
          ? `capture spool: cannot upload to ${this.#options.store.description} (${errorMessage(error)}); retrying in ${Math.round(delay / 1000)} s`
          : `capture spool: ${this.#options.store.description} asked to wait ${Math.ceil(asked / 1000)} s (Retry-After); retrying in ${Math.round(delay / 1000)} s`,
      );
      if (!this.#closed) {
        this.#timer = this.#timers.set(() => {
          this.#timer = undefined;
          this.#kick();
        }, delay);
      }
      return;
    }
    if (this.#failures > 0) {
      this.#options.logger?.info(
        { event: 'capture-upload-resumed', store: this.#options.store.description, failures: this.#failures },
        'capture spool: the store is reachable again',
      );
    }
    this.#failures = 0;
    this.#options.metrics?.uploadDuration.observe({ via: 'spool' }, (performance.now() - began) / 1000);
    this.#options.metrics?.uploadedFiles.inc({ via: 'spool' }, batch.files.length);
    this.#options.metrics?.uploaded.inc({ via: 'spool' }, batch.captureIds.length);
    // Statuses first: a crash before the folder is gone uploads it again (same keys), never loses it. A batch
    // dropped for the quota while this attempt ran did arrive after all: SUCCESS is the truth.
    this.#options.onDelivered(batch.captureIds);
    const index = this.#batches.indexOf(batch);
    if (index >= 0) this.#forget(index);
    await rm(join(this.#options.dir, batch.batchId), { recursive: true, force: true });
  }

  /** The store will never take this batch: its captures fail with the store's reason, and the next batch goes. */
  async #dropRefused(batch: SpooledBatch, error: RefusedByStoreError): Promise<void> {
    const index = this.#batches.indexOf(batch);
    if (index >= 0) this.#forget(index);
    if (!batch.evicted) {
      this.#options.onDropped(
        batch.captureIds,
        `refused by ${this.#options.store.description}: ${error.message}`,
      );
      this.#options.metrics?.dropped.inc({ reason: 'refused' }, batch.captureIds.length);
    }
    this.#options.logger?.warn(
      {
        event: 'capture-upload-refused',
        ...uploadFailureFields(error),
        batchId: batch.batchId,
        captures: batch.captureIds.length,
      },
      `capture spool: ${this.#options.store.description} refused a batch for good (${error.message}); dropped it (${batch.captureIds.length} captures)`,
    );
    await rm(join(this.#options.dir, batch.batchId), { recursive: true, force: true });
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
