import {
  DamagedPayloadError,
  DEFAULT_INLINE_PAYLOAD_LIMIT_BYTES,
  UnsafePayloadFolderError,
  type BatchedCaptureRow,
  type CaptureQueueRepository,
  type QueuedCaptureRow,
} from '../state/index.js';
import { captureBytes, decodeCaptureItem, encodeCaptureItemParts, type CaptureItem } from './capture-item.js';

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
  /** The bytes of each capture waiting for a batch, by id: what they hold of the buffer's byte cap. */
  pendingBytes: ReadonlyMap<string, number>;
  /** Batches formed but never completed (a crash interrupted their write): to be written again, same ids. */
  openBatches: { batchId: string; items: CaptureItem[] }[];
  /**
   * The bytes, by id, of the captures of open batches set aside whole until the next start (one of their captures
   * could not be read now): they still hold their place and bytes in the buffer.
   */
  heldAside: ReadonlyMap<string, number>;
  /** Payload files a crash left that no queued capture names, removed. */
  orphansRemoved: number;
  /** What went wrong with the payload folder at start (an orphan not removed, the folder unsafe): to log. */
  problems: string[];
}

/** What formBatch took. */
export interface FormedBatch {
  /** The batch's captures, oldest first. */
  items: CaptureItem[];
  /**
   * Captures the caller lets go of: they could not be read back (damaged, or deferred too many times) and are
   * marked FAILURE (or, when even that could not be recorded, set aside in a new batch for the next start).
   */
  damaged: string[];
  /**
   * Captures whose stored bytes could not be read now (EMFILE, EIO, the payload folder unsafe, …) but are not
   * known to be damaged: not in the batch, they wait again in their place, passed over by the batches formed
   * before their next try (see DeferralPolicy).
   */
  deferred: { captureId: string; error: Error }[];
  /** How many of the `limit` asked for were not taken: nothing more was waiting, or only deferred captures. */
  untaken: number;
}

/** What became of a capture that could not be read back: marked FAILURE, or (when even that failed) set aside. */
export type UnreadableOutcome = 'marked FAILURE' | 'set aside until the next start';

/**
 * How captures that cannot be read now are tried again: not before a delay doubling from `firstDelayMs` up to
 * `maxDelayMs` (a try happens only when a batch is formed), passed over by the batches formed meanwhile (so that the
 * others go on), and marked FAILURE on the `maxTries`-th failed read. A read refused because the payload folder is
 * unsafe is not counted as a try: that is a fact about the folder (logged once per change), not the capture, and an
 * admin can fix it. Counted in memory: a restart starts the count again.
 */
export interface DeferralPolicy {
  firstDelayMs: number;
  maxDelayMs: number;
  maxTries: number;
}

/** 15 tries at least 1 s, 2 s, 4 s, … up to 10 min apart: about an hour (1023 s + 4 × 600 s) at the least. */
export const DEFAULT_DEFERRAL_POLICY: DeferralPolicy = {
  firstDelayMs: 1_000,
  maxDelayMs: 600_000,
  maxTries: 15,
};

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
  /** Puts up to `limit` of the oldest waiting captures in a batch (see FormedBatch). */
  formBatch(batchId: string, limit: number): Promise<FormedBatch>;
  /** How many waiting captures a batch formed now would pass over (deferred, before their next try). */
  passedOver(): number;
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
      pendingBytes: new Map(this.#pending.map((item) => [item.captureId, captureBytes(item)])),
      openBatches: [...this.#batches].map(([batchId, items]) => ({ batchId, items })),
      heldAside: new Map(),
      orphansRemoved: 0,
      problems: [],
    });
  }

  enqueue(item: CaptureItem, trackStatus = true): Promise<void> {
    this.#pending.push(item);
    if (trackStatus) this.#set(item.captureId, { status: 'IN_PROGRESS', updatedAt: this.#now() });
    return Promise.resolve();
  }

  formBatch(batchId: string, limit: number): Promise<FormedBatch> {
    const items = this.#pending.splice(0, limit);
    if (items.length > 0) this.#batches.set(batchId, items);
    return Promise.resolve({ items, damaged: [], deferred: [], untaken: limit - items.length });
  }

  passedOver(): number {
    return 0;
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
 * serving meanwhile), then its row joins the next commit; it is acknowledged once that row is committed. While
 * the payload folder is unsafe to use (see CapturePayloadFiles), large payloads are kept in their rows instead.
 */
export class SqliteCaptureQueue implements CaptureQueue {
  readonly durable = true;
  readonly #repository: CaptureQueueRepository;
  readonly #now: () => number;
  readonly #monotonic: () => number;
  readonly #onDamaged: ((captureId: string, error: Error, outcome: UnreadableOutcome) => void) | undefined;
  readonly #onPayloadFolder: ((problem: Error | undefined) => void) | undefined;
  readonly #inlineLimit: number;
  readonly #deferral: DeferralPolicy;
  /**
   * Captures whose last read failed for now: the tries counted towards the limit, the reads failed (the delay's
   * step, unsafe folder included), and when they may be tried again (on the monotonic clock).
   */
  readonly #deferrals = new Map<string, { tries: number; failures: number; notBefore: number }>();
  /** Whether the last large payload went inline because the folder was unsafe (logged once per change). */
  #folderUnsafe = false;
  #waiting: {
    row: QueuedCaptureRow;
    resolve: () => void;
    reject: (error: unknown) => void;
  }[] = [];
  #scheduled = false;
  /** Large payloads being written: close waits for them, then commits their rows. */
  readonly #storing = new Set<Promise<unknown>>();
  /** Per batch: captures that are not in what the caller writes but could not be taken out of the batch. */
  readonly #leftInBatch = new Map<string, string[]>();
  #closed = false;

  constructor(options: {
    repository: CaptureQueueRepository;
    /** Wall clock (ms), for statuses. */
    now?: () => number;
    /**
     * Monotonic clock (ms) the deferral delays are measured on, so that a wall clock stepped back never holds a
     * deferred capture for the step (default performance.now).
     */
    monotonic?: () => number;
    /**
     * Told of a stored capture that cannot be read back (damaged, or deferred `deferral.maxTries` times) and of
     * what became of it: marked FAILURE and dropped, or, when that could not be recorded, set aside for the next
     * start.
     */
    onDamaged?: (captureId: string, error: Error, outcome: UnreadableOutcome) => void;
    /**
     * Told when large payloads start going into the database because the payload folder is unsafe (with why), and
     * when they go to files again (undefined): once per change.
     */
    onPayloadFolder?: (problem: Error | undefined) => void;
    /** Payloads larger than this are written as files, off the event loop (default 64 KiB). */
    inlinePayloadLimitBytes?: number;
    /** How captures that cannot be read now are tried again (default DEFAULT_DEFERRAL_POLICY). */
    deferral?: DeferralPolicy;
  }) {
    this.#repository = options.repository;
    this.#now = options.now ?? Date.now;
    this.#monotonic = options.monotonic ?? (() => performance.now());
    this.#onDamaged = options.onDamaged;
    this.#onPayloadFolder = options.onPayloadFolder;
    this.#inlineLimit = options.inlinePayloadLimitBytes ?? DEFAULT_INLINE_PAYLOAD_LIMIT_BYTES;
    this.#deferral = options.deferral ?? DEFAULT_DEFERRAL_POLICY;
  }

  async recover(): Promise<RecoveredQueue> {
    const problems: string[] = [];
    let orphansRemoved = 0;
    try {
      const swept = await this.#repository.removeOrphanPayloads();
      orphansRemoved = swept.removed;
      problems.push(
        ...swept.failed.map((failure) => `a leftover payload file could not be removed: ${failure}`),
      );
    } catch (error) {
      // Orphans only waste disk: the agent starts without removing them.
      problems.push(`the payload folder was not swept: ${(error as Error).message}`);
    }
    const openBatches: RecoveredQueue['openBatches'] = [];
    const heldAside = new Map<string, number>();
    for (const { batchId, rows } of this.#repository.openBatches()) {
      const read = await Promise.all(rows.map((row) => this.#read(row)));
      const unreadable = read.findIndex((outcome) => 'deferred' in outcome);
      if (unreadable >= 0) {
        // Never split: the batch may have been written before the crash, and a capture taken out of it would be
        // written again under another id (its old manifest keeps it). Kept whole under its id for the next start.
        const error = (read[unreadable] as { deferred: Error }).deferred;
        problems.push(
          `interrupted batch ${batchId} (${rows.length} captures) is set aside until the next start, kept whole: its capture ${rows[unreadable]!.captureId} could not be read now: ${error.message}`,
        );
        for (const row of rows) heldAside.set(row.captureId, row.payloadBytes ?? row.payload.byteLength);
        continue;
      }
      const { items } = this.#classify(batchId, rows, read);
      if (items.length > 0) openBatches.push({ batchId, items });
      // Never completed: what was left stays under this id, never written, for the next start.
      else this.#leftInBatch.delete(batchId);
    }
    const pendingBytes = this.#repository.pendingBytes();
    return { pending: pendingBytes.size, pendingBytes, openBatches, heldAside, orphansRemoved, problems };
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
        this.#folderState(undefined);
      } catch (error) {
        // Nothing was written: kept in the row (on the event loop), as before large captures had files.
        if (!(error instanceof UnsafePayloadFolderError)) throw error;
        this.#folderState(error);
      } finally {
        this.#storing.delete(storing);
      }
    }
    if (row.payloadFile === null) row.payload = Buffer.concat(chunks, bytes);
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

  async formBatch(batchId: string, limit: number): Promise<FormedBatch> {
    const rows = this.#repository.formBatch(batchId, limit, this.#waitingForTry());
    // Each read waits for one of the payload files' slots: rows are all asked for at once.
    const read = await Promise.all(rows.map((row) => this.#read(row)));
    const formed = this.#classify(batchId, rows, read);
    // Never completed (nothing is written under it): what was left stays under this id for the next start.
    if (formed.items.length === 0) this.#leftInBatch.delete(batchId);
    return { ...formed, untaken: limit - rows.length };
  }

  passedOver(): number {
    return this.#waitingForTry().length;
  }

  /** Deferred captures before their next try. */
  #waitingForTry(): string[] {
    const now = this.#monotonic();
    return [...this.#deferrals].filter(([, d]) => d.notBefore > now).map(([captureId]) => captureId);
  }

  completeBatch(batchId: string, status: 'SUCCESS' | 'FAILURE' | null, detail?: string): void {
    const leave = this.#leftInBatch.get(batchId) ?? [];
    this.#leftInBatch.delete(batchId);
    this.#repository.completeBatch(batchId, status, this.#now(), detail, leave);
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

  /** Large payloads go inline (problem) or to files again (undefined): told once per change. */
  #folderState(problem: Error | undefined): void {
    if (this.#folderUnsafe === (problem !== undefined)) return;
    this.#folderUnsafe = problem !== undefined;
    this.#onPayloadFolder?.(problem);
  }

  /**
   * Classifies what was read of the rows' captures, in order. Those that cannot be read because they are damaged (file
   * gone or not the one written, bytes not matching the meta), or could not be read `maxTries` times, are marked
   * FAILURE and named in damaged; those that cannot be read now for any other reason go back to the queue, in their
   * place, and are named in deferred.
   */
  #classify(
    batchId: string,
    rows: readonly BatchedCaptureRow[],
    read: readonly ReadOutcome[],
  ): Omit<FormedBatch, 'untaken'> {
    const formed: Omit<FormedBatch, 'untaken'> = { items: [], damaged: [], deferred: [] };
    const left: string[] = [];
    const drop = (captureId: string, error: Error, detail: string): void => {
      formed.damaged.push(captureId);
      try {
        this.#repository.discard(captureId, this.#now(), detail);
      } catch {
        // Out of what is written: set aside in a new batch by completeBatch, read again at the next start.
        left.push(captureId);
        this.#onDamaged?.(captureId, error, 'set aside until the next start');
        return;
      }
      this.#onDamaged?.(captureId, error, 'marked FAILURE');
    };
    read.forEach((outcome, i) => {
      const { captureId } = rows[i]!;
      const before = this.#deferrals.get(captureId);
      const deferred = 'deferred' in outcome;
      // An unsafe folder is known and logged once per change: not counted against the capture.
      const counted = deferred && !(outcome.deferred instanceof UnsafePayloadFolderError);
      const tries = (before?.tries ?? 0) + (counted ? 1 : 0);
      const failures = (before?.failures ?? 0) + (deferred ? 1 : 0);
      if (!deferred || tries >= this.#deferral.maxTries) this.#deferrals.delete(captureId);
      if ('item' in outcome) formed.items.push(outcome.item);
      else if ('damaged' in outcome) {
        drop(
          captureId,
          outcome.damaged,
          `the stored capture could not be read back: ${outcome.damaged.message}`,
        );
      } else if (tries >= this.#deferral.maxTries) {
        const error = new Error(
          `the stored capture could not be read back in ${tries} tries (the last: ${outcome.deferred.message}); given up`,
          { cause: outcome.deferred },
        );
        drop(captureId, error, error.message);
      } else {
        const delay = Math.min(this.#deferral.firstDelayMs * 2 ** (failures - 1), this.#deferral.maxDelayMs);
        this.#deferrals.set(captureId, { tries, failures, notBefore: this.#monotonic() + delay });
        formed.deferred.push({ captureId, error: outcome.deferred });
      }
    });
    if (formed.deferred.length > 0) {
      try {
        this.#repository.returnToQueue(formed.deferred.map((d) => d.captureId));
      } catch {
        // Set aside in a new batch (by completeBatch), out of what is written, for the next start; the caller
        // lets go of them.
        left.push(...formed.deferred.map((d) => d.captureId));
        for (const { captureId, error } of formed.deferred) {
          this.#deferrals.delete(captureId);
          this.#onDamaged?.(captureId, error, 'set aside until the next start');
        }
        formed.damaged.push(...formed.deferred.map((d) => d.captureId));
        formed.deferred = [];
      }
    }
    if (left.length > 0) this.#leftInBatch.set(batchId, left);
    return formed;
  }

  async #read(row: BatchedCaptureRow): Promise<ReadOutcome> {
    let payload: Buffer;
    try {
      payload = await this.#repository.readPayload(row);
    } catch (error) {
      return error instanceof DamagedPayloadError ? { damaged: error } : { deferred: error as Error };
    }
    try {
      return { item: decodeCaptureItem(row.meta, payload) };
    } catch (error) {
      return { damaged: error as Error };
    }
  }
}

type ReadOutcome = { item: CaptureItem } | { damaged: Error } | { deferred: Error };

const EMPTY = Buffer.alloc(0);
