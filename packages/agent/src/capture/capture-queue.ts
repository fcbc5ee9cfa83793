import {
  DEFAULT_INLINE_PAYLOAD_LIMIT_BYTES,
  type BatchedCaptureRow,
  type CaptureQueueRepository,
  type QueuedCaptureRow,
} from '../state/index.js';
import { decodeCaptureItem, encodeCaptureItemParts, type CaptureItem } from './capture-item.js';

export type CaptureStatus = 'IN_PROGRESS' | 'SUCCESS' | 'FAILURE';

export interface StatusRecord {
  status: CaptureStatus;
  updatedAt: number;
  /** Why a capture failed. */
  detail?: string;
}

export interface StatusRetention {
  /** Finished statuses older than this are forgotten (GetCaptureDataStatus then answers NOT_FOUND). */
  maxAgeMs: number;
  /** At most this many finished statuses are kept, newest first. */
  maxEntries: number;
}

export interface RecoveredQueue {
  /** Captures waiting for a batch. */
  pending: number;
  /** Batches formed but never completed (a crash interrupted their write): to be written again, same ids. */
  openBatches: { batchId: string; items: CaptureItem[] }[];
  /** Payload files a crash left that no queued capture names, removed. */
  orphansRemoved: number;
}

/**
 * The queue of accepted captures and the status of each. `memory` keeps everything in the process (a crash loses
 * what is queued, as the original agent without its database); `sqlite` keeps it in the local database, so a
 * capture is durable once `enqueue` resolves.
 */
export interface CaptureQueue {
  readonly durable: boolean;
  recover(): Promise<RecoveredQueue>;
  /**
   * Resolves once the capture is held (for sqlite: committed). Ids must be new (the caller checks). With
   * `trackStatus` false no status is kept (automatic captures: nobody knows their ids to ask).
   */
  enqueue(item: CaptureItem, trackStatus?: boolean): Promise<void>;
  /**
   * Puts up to `limit` of the oldest waiting captures in a batch. `damaged` names the waiting captures used up
   * that could not be read back (they are marked FAILURE and dropped), so the caller can let go of what it held
   * for them.
   */
  formBatch(batchId: string, limit: number): Promise<{ items: CaptureItem[]; damaged: string[] }>;
  /** The batch was written (SUCCESS), given up (FAILURE), or handed to the spool (null: stays IN_PROGRESS). */
  completeBatch(batchId: string, status: 'SUCCESS' | 'FAILURE' | null, detail?: string): void;
  /** Ids whose status is IN_PROGRESS but that are no longer queued (handed to the spool). */
  inProgressOutsideQueue(): string[];
  /** For captures outside the queue (in the spool). */
  setStatuses(captureIds: readonly string[], status: CaptureStatus, detail?: string): void;
  status(captureId: string): StatusRecord | undefined;
  pruneStatuses(retention: StatusRetention): number;
  /** Commits what is being enqueued (large payloads still being written: once written), then stops taking more. */
  close(): Promise<void>;
}

/** The queue in memory. */
export class MemoryCaptureQueue implements CaptureQueue {
  readonly durable = false;
  readonly #now: () => number;
  readonly #pending: CaptureItem[] = [];
  readonly #batches = new Map<string, CaptureItem[]>();
  /** Insertion-ordered by last update (re-inserted on change), so the oldest come first when pruning. */
  readonly #statuses = new Map<string, StatusRecord>();

  constructor(options: { now?: () => number } = {}) {
    this.#now = options.now ?? Date.now;
  }

  recover(): Promise<RecoveredQueue> {
    return Promise.resolve({
      pending: this.#pending.length,
      openBatches: [...this.#batches].map(([batchId, items]) => ({ batchId, items })),
      orphansRemoved: 0,
    });
  }

  enqueue(item: CaptureItem, trackStatus = true): Promise<void> {
    this.#pending.push(item);
    if (trackStatus) this.#set(item.captureId, { status: 'IN_PROGRESS', updatedAt: this.#now() });
    return Promise.resolve();
  }

  formBatch(batchId: string, limit: number): Promise<{ items: CaptureItem[]; damaged: string[] }> {
    const items = this.#pending.splice(0, limit);
    if (items.length > 0) this.#batches.set(batchId, items);
    return Promise.resolve({ items, damaged: [] });
  }

  inProgressOutsideQueue(): string[] {
    const queued = new Set([...this.#pending, ...[...this.#batches.values()].flat()].map((i) => i.captureId));
    return [...this.#statuses]
      .filter(([id, s]) => s.status === 'IN_PROGRESS' && !queued.has(id))
      .map(([id]) => id);
  }

  completeBatch(batchId: string, status: 'SUCCESS' | 'FAILURE' | null, detail?: string): void {
    const items = this.#batches.get(batchId) ?? [];
    this.#batches.delete(batchId);
    if (status !== null)
      this.setStatuses(
        items.map((i) => i.captureId),
        status,
        detail,
      );
  }

  setStatuses(captureIds: readonly string[], status: CaptureStatus, detail?: string): void {
    const updatedAt = this.#now();
    for (const id of captureIds) {
      if (this.#statuses.has(id))
        this.#set(id, { status, updatedAt, ...(detail !== undefined && { detail }) });
    }
  }

  status(captureId: string): StatusRecord | undefined {
    return this.#statuses.get(captureId);
  }

  pruneStatuses(retention: StatusRetention): number {
    const cutoff = this.#now() - retention.maxAgeMs;
    const finished = [...this.#statuses].filter(([, s]) => s.status !== 'IN_PROGRESS');
    let removed = 0;
    finished.forEach(([id, record], index) => {
      const beyondCount = finished.length - index > retention.maxEntries;
      if (record.updatedAt < cutoff || beyondCount) {
        this.#statuses.delete(id);
        removed++;
      }
    });
    return removed;
  }

  close(): Promise<void> {
    return Promise.resolve();
  }

  #set(id: string, record: StatusRecord): void {
    this.#statuses.delete(id);
    this.#statuses.set(id, record);
  }
}

/**
 * The queue in the local database. Captures arriving together are committed together: `enqueue` calls made in
 * the same turn of the event loop share one transaction (one fsync), committed on the next turn. A capture whose
 * bytes pass `inlinePayloadLimitBytes` is first written as a file on the thread pool (the event loop keeps
 * serving meanwhile), then its row joins the next commit; it is acknowledged once that row is committed.
 */
export class SqliteCaptureQueue implements CaptureQueue {
  readonly durable = true;
  readonly #repository: CaptureQueueRepository;
  readonly #now: () => number;
  readonly #onDamaged: ((captureId: string, error: Error) => void) | undefined;
  readonly #inlineLimit: number;
  #waiting: {
    row: QueuedCaptureRow;
    resolve: () => void;
    reject: (error: unknown) => void;
  }[] = [];
  #scheduled = false;
  /** Large payloads being written: close waits for them, then commits their rows. */
  readonly #storing = new Set<Promise<unknown>>();
  #closed = false;

  constructor(options: {
    repository: CaptureQueueRepository;
    now?: () => number;
    /** Told of a stored capture that cannot be read back (it is marked FAILURE and dropped). */
    onDamaged?: (captureId: string, error: Error) => void;
    /** Payloads larger than this are written as files, off the event loop (default 64 KiB). */
    inlinePayloadLimitBytes?: number;
  }) {
    this.#repository = options.repository;
    this.#now = options.now ?? Date.now;
    this.#onDamaged = options.onDamaged;
    this.#inlineLimit = options.inlinePayloadLimitBytes ?? DEFAULT_INLINE_PAYLOAD_LIMIT_BYTES;
  }

  async recover(): Promise<RecoveredQueue> {
    const orphansRemoved = await this.#repository.removeOrphanPayloads();
    const openBatches: RecoveredQueue['openBatches'] = [];
    for (const { batchId, rows } of this.#repository.openBatches()) {
      const items = await this.#decodeAll(rows);
      if (items.items.length > 0) openBatches.push({ batchId, items: items.items });
    }
    return { pending: this.#repository.pendingCount(), openBatches, orphansRemoved };
  }

  async enqueue(item: CaptureItem, trackStatus = true): Promise<void> {
    if (this.#closed) throw new Error('the capture queue is closed');
    const { meta, chunks, bytes } = encodeCaptureItemParts(item);
    const row: QueuedCaptureRow & { payloadFile: string | null } = {
      captureId: item.captureId,
      model: item.model,
      meta,
      enqueuedAt: item.receivedAt,
      trackStatus,
      payload: EMPTY,
      payloadFile: null,
    };
    if (bytes > this.#inlineLimit) {
      const storing = this.#repository.storePayload(chunks);
      this.#storing.add(storing);
      try {
        row.payloadFile = await storing;
      } finally {
        this.#storing.delete(storing);
      }
    } else {
      row.payload = Buffer.concat(chunks, bytes);
    }
    return new Promise((resolve, reject) => {
      this.#waiting.push({ row, resolve, reject });
      if (!this.#scheduled) {
        this.#scheduled = true;
        setImmediate(() => this.#commit());
      }
    });
  }

  #commit(): void {
    this.#scheduled = false;
    const waiting = this.#waiting;
    this.#waiting = [];
    if (waiting.length === 0) return;
    try {
      // Removes the rows' payload files itself when it throws.
      this.#repository.enqueue(waiting.map(({ row }) => row));
    } catch (error) {
      for (const w of waiting) w.reject(error);
      return;
    }
    for (const w of waiting) w.resolve();
  }

  async formBatch(batchId: string, limit: number): Promise<{ items: CaptureItem[]; damaged: string[] }> {
    return this.#decodeAll(this.#repository.formBatch(batchId, limit));
  }

  completeBatch(batchId: string, status: 'SUCCESS' | 'FAILURE' | null, detail?: string): void {
    this.#repository.completeBatch(batchId, status, this.#now(), detail);
  }

  setStatuses(captureIds: readonly string[], status: CaptureStatus, detail?: string): void {
    this.#repository.setStatuses(captureIds, status, this.#now(), detail);
  }

  status(captureId: string): StatusRecord | undefined {
    const row = this.#repository.status(captureId);
    return (
      row && {
        status: row.status,
        updatedAt: row.updatedAt,
        ...(row.detail !== null && { detail: row.detail }),
      }
    );
  }

  inProgressOutsideQueue(): string[] {
    return this.#repository.inProgressOutsideQueue();
  }

  pruneStatuses(retention: StatusRetention): number {
    return this.#repository.pruneStatuses({
      olderThan: this.#now() - retention.maxAgeMs,
      keep: retention.maxEntries,
    });
  }

  async close(): Promise<void> {
    // Writes under way were accepted before the close: let them finish and commit them with the rest.
    while (this.#storing.size > 0) await Promise.allSettled([...this.#storing]);
    this.#closed = true;
    this.#commit();
    await this.#repository.payloadRemovalsDone();
  }

  /** Reads the rows' captures back, in order; those that cannot be read are marked FAILURE and named in damaged. */
  async #decodeAll(rows: readonly BatchedCaptureRow[]): Promise<{ items: CaptureItem[]; damaged: string[] }> {
    const decoded = await Promise.all(rows.map((row) => this.#decode(row)));
    const items: CaptureItem[] = [];
    const damaged: string[] = [];
    decoded.forEach((item, i) => {
      if (item) items.push(item);
      else damaged.push(rows[i]!.captureId);
    });
    return { items, damaged };
  }

  async #decode(row: BatchedCaptureRow): Promise<CaptureItem | undefined> {
    try {
      return decodeCaptureItem(row.meta, await this.#repository.readPayload(row));
    } catch (error) {
      const detail = `the stored capture could not be read back: ${(error as Error).message}`;
      try {
        this.#repository.discard(row.captureId, this.#now(), detail);
      } catch {
        // Left in its batch: the next start reads it again (and fails it then). The batch is taken either way.
      }
      this.#onDamaged?.(row.captureId, error as Error);
      return undefined;
    }
  }
}

const EMPTY = Buffer.alloc(0);
