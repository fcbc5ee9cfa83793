import type { CaptureQueueRepository } from '../state/index.js';
import { decodeCaptureItem, encodeCaptureItem, type CaptureItem } from './capture-item.js';

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
}

/**
 * The queue of accepted captures and the status of each. `memory` keeps everything in the process (a crash loses
 * what is queued, as the original agent without its database); `sqlite` keeps it in the local database, so a
 * capture is durable once `enqueue` resolves.
 */
export interface CaptureQueue {
  readonly durable: boolean;
  recover(): RecoveredQueue;
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
  formBatch(batchId: string, limit: number): { items: CaptureItem[]; damaged: string[] };
  /** The batch was written (SUCCESS), given up (FAILURE), or handed to the spool (null: stays IN_PROGRESS). */
  completeBatch(batchId: string, status: 'SUCCESS' | 'FAILURE' | null, detail?: string): void;
  /** Ids whose status is IN_PROGRESS but that are no longer queued (handed to the spool). */
  inProgressOutsideQueue(): string[];
  /** For captures outside the queue (in the spool). */
  setStatuses(captureIds: readonly string[], status: CaptureStatus, detail?: string): void;
  status(captureId: string): StatusRecord | undefined;
  pruneStatuses(retention: StatusRetention): number;
  close(): void;
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

  recover(): RecoveredQueue {
    return {
      pending: this.#pending.length,
      openBatches: [...this.#batches].map(([batchId, items]) => ({ batchId, items })),
    };
  }

  enqueue(item: CaptureItem, trackStatus = true): Promise<void> {
    this.#pending.push(item);
    if (trackStatus) this.#set(item.captureId, { status: 'IN_PROGRESS', updatedAt: this.#now() });
    return Promise.resolve();
  }

  formBatch(batchId: string, limit: number): { items: CaptureItem[]; damaged: string[] } {
    const items = this.#pending.splice(0, limit);
    if (items.length > 0) this.#batches.set(batchId, items);
    return { items, damaged: [] };
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

  close(): void {}

  #set(id: string, record: StatusRecord): void {
    this.#statuses.delete(id);
    this.#statuses.set(id, record);
  }
}

/**
 * The queue in the local database. Captures arriving together are committed together: `enqueue` calls made in
 * the same turn of the event loop share one transaction (one fsync), committed on the next turn.
 */
export class SqliteCaptureQueue implements CaptureQueue {
  readonly durable = true;
  readonly #repository: CaptureQueueRepository;
  readonly #now: () => number;
  readonly #onDamaged: ((captureId: string, error: Error) => void) | undefined;
  #waiting: {
    item: CaptureItem;
    trackStatus: boolean;
    resolve: () => void;
    reject: (error: unknown) => void;
  }[] = [];
  #scheduled = false;

  constructor(options: {
    repository: CaptureQueueRepository;
    now?: () => number;
    /** Told of a stored capture that cannot be read back (it is marked FAILURE and dropped). */
    onDamaged?: (captureId: string, error: Error) => void;
  }) {
    this.#repository = options.repository;
    this.#now = options.now ?? Date.now;
    this.#onDamaged = options.onDamaged;
  }

  recover(): RecoveredQueue {
    const openBatches = this.#repository.openBatches().map(({ batchId, rows }) => ({
      batchId,
      items: rows.map((row) => this.#decode(row)).filter((item): item is CaptureItem => item !== undefined),
    }));
    return {
      pending: this.#repository.pendingCount(),
      openBatches: openBatches.filter((b) => b.items.length > 0),
    };
  }

  enqueue(item: CaptureItem, trackStatus = true): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#waiting.push({ item, trackStatus, resolve, reject });
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
    try {
      this.#repository.enqueue(
        waiting.map(({ item, trackStatus }) => ({
          captureId: item.captureId,
          model: item.model,
          enqueuedAt: item.receivedAt,
          trackStatus,
          ...encodeCaptureItem(item),
        })),
      );
    } catch (error) {
      for (const w of waiting) w.reject(error);
      return;
    }
    for (const w of waiting) w.resolve();
  }

  formBatch(batchId: string, limit: number): { items: CaptureItem[]; damaged: string[] } {
    const items: CaptureItem[] = [];
    const damaged: string[] = [];
    for (const row of this.#repository.formBatch(batchId, limit)) {
      const item = this.#decode(row);
      if (item) items.push(item);
      else damaged.push(row.captureId);
    }
    return { items, damaged };
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

  close(): void {
    if (this.#waiting.length > 0) this.#commit();
  }

  #decode(row: { captureId: string; meta: string; payload: Buffer }): CaptureItem | undefined {
    try {
      return decodeCaptureItem(row.meta, row.payload);
    } catch (error) {
      const detail = `the stored capture could not be read back: ${(error as Error).message}`;
      this.#repository.discard(row.captureId, this.#now(), detail);
      this.#onDamaged?.(row.captureId, error as Error);
      return undefined;
    }
  }
}
