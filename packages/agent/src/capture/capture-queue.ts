import {
  DamagedPayloadError,
  DEFAULT_INLINE_PAYLOAD_LIMIT_BYTES,
  UnsafePayloadFolderError,
  type CaptureReadTries,
  type StoredCaptureRow,
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
   * The bytes, by id, of the captures of open batches set aside whole (one of their captures could not be read
   * now): they still hold their place and bytes in the buffer until retrySetAside gives them back.
   */
  heldAside: ReadonlyMap<string, number>;
  /** Payload files a crash left that no queued capture names, removed. */
  orphansRemoved: number;
  /** What went wrong with the payload folder at start (an orphan not removed, the folder unsafe): to log. */
  problems: string[];
}

/** A set-aside batch tried again (see CaptureQueue.retrySetAside). */
export interface RetriedBatch {
  batchId: string;
  /** To be written again under the batch's own id (empty: nothing of it is left to write; it is recorded). */
  items: CaptureItem[];
  /** Captures dropped from it, marked FAILURE: damaged, or unreadable `maxTries` times. */
  damaged: string[];
}

/** What formBatch took. */
export interface FormedBatch {
  /** The batch's captures, oldest first. */
  items: CaptureItem[];
  /**
   * Captures the caller lets go of: they could not be read back (damaged, or deferred too many times), and are
   * dropped and marked FAILURE in the same transaction that records the batch.
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

/**
 * How captures that cannot be read now are tried again: not before a delay doubling from `firstDelayMs` up to
 * `maxDelayMs` (a try happens only when a batch is formed), passed over by the batches formed meanwhile (so that the
 * others go on), and marked FAILURE on the `maxTries`-th failed read. A read refused because the payload folder is
 * unsafe is not counted as a try: that is a fact about the folder (logged once per change), not the capture, and an
 * admin can fix it. The tries are kept in the local database with the capture (`read_tries`), so a restart goes
 * on counting: a payload that can never be read (EIO) is given up even by an agent restarted more often than the
 * tries take; the delay starts again from `firstDelayMs` after a restart.
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
  /**
   * Reads again, whole, the interrupted batches that recover set aside and whose next try has come (DeferralPolicy):
   * those now readable (a capture unreadable `maxTries` times dropped as FAILURE) come back, to be written under
   * their own ids; the others stay aside.
   */
  retrySetAside(): Promise<RetriedBatch[]>;
  /** In how many ms the next set-aside batch is due a try (undefined: none set aside). */
  nextSetAsideTryInMs(): number | undefined;
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

  retrySetAside(): Promise<RetriedBatch[]> {
    return Promise.resolve([]);
  }

  nextSetAsideTryInMs(): number | undefined {
    return undefined;
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
  readonly #onDamaged: ((captureId: string, error: Error) => void) | undefined;
  readonly #onPayloadFolder: ((problem: Error | undefined) => void) | undefined;
  readonly #onReadTriesRecording: ((problem: Error | undefined) => void) | undefined;
  readonly #inlineLimit: number;
  readonly #deferral: DeferralPolicy;
  /**
   * Captures whose last read failed for now: the tries counted towards the limit, the reads failed (the delay's
   * step, unsafe folder included), and when they may be tried again (on the monotonic clock).
   */
  readonly #deferrals = new Map<string, Deferral>();
  /** Whether the last large payload went inline because the folder was unsafe (logged once per change). */
  #folderUnsafe = false;
  /** Whether the last recording of read tries failed (told once per change). */
  #readTriesUnrecorded = false;
  #waiting: {
    row: QueuedCaptureRow;
    resolve: () => void;
    reject: (error: unknown) => void;
  }[] = [];
  #scheduled = false;
  /** Large payloads being written: close waits for them, then commits their rows. */
  readonly #storing = new Set<Promise<unknown>>();
  /**
   * Interrupted batches set aside whole by recover, by id: their rows, and the deferral records of their captures
   * (apart from #deferrals: these captures are not waiting, so no formation passes them over).
   */
  readonly #setAside = new Map<string, SetAsideBatch>();
  /** Set-aside batches being read again. */
  readonly #retrying = new Set<string>();
  /** Captures a formation is reading back: the formations started meanwhile pass over them. */
  readonly #reading = new Set<string>();
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
     * Told of a stored capture that cannot be read back (damaged, or deferred `deferral.maxTries` times), once it
     * is marked FAILURE and dropped.
     */
    onDamaged?: (captureId: string, error: Error) => void;
    /**
     * Told when large payloads start going into the database because the payload folder is unsafe (with why), and
     * when they go to files again (undefined): once per change.
     */
    onPayloadFolder?: (problem: Error | undefined) => void;
    /**
     * Told when the failed reads of an interrupted batch's captures cannot be recorded in the database (with why:
     * they are still counted in memory, but a restart would count from the last recorded try), and when they are
     * recorded again (undefined): once per change.
     */
    onReadTriesRecording?: (problem: Error | undefined) => void;
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
    this.#onReadTriesRecording = options.onReadTriesRecording;
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
      const outcome = await this.#tryOpenBatch(batchId, rows, new Map());
      if ('items' in outcome) {
        if (outcome.items.length > 0) openBatches.push({ batchId, items: outcome.items });
        continue;
      }
      problems.push(
        `interrupted batch ${batchId} (${rows.length} captures) is set aside, kept whole, and tried again later: ${outcome.why}`,
      );
      for (const row of rows) heldAside.set(row.captureId, row.payloadBytes ?? row.payload.byteLength);
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

  /**
   * Reads the captures first, then records the batch (and drops the damaged ones) in one transaction: a capture
   * that cannot be read now is never in a batch, and a kill or a failed transaction leaves every row as it was.
   */
  async formBatch(batchId: string, limit: number): Promise<FormedBatch> {
    const rows = this.#repository.waiting(limit, [...this.#waitingForTry(), ...this.#reading]);
    for (const row of rows) this.#reading.add(row.captureId);
    try {
      // Each read waits for one of the payload files' slots: rows are all asked for at once.
      const read = await Promise.all(rows.map((row) => this.#read(row)));
      const { items, damaged, deferred, deferrals } = this.#classify(rows, read);
      const assigned = new Set(
        this.#repository.assignBatch(
          batchId,
          items.map((item) => item.captureId),
          damaged.map(({ captureId, detail }) => ({ captureId, detail })),
          this.#now(),
          readTriesToRecord(rows, deferrals),
        ),
      );
      // Recorded: now the tries count.
      for (const [captureId, deferral] of deferrals) {
        if (deferral) this.#deferrals.set(captureId, deferral);
        else this.#deferrals.delete(captureId);
      }
      for (const { captureId, error } of damaged) this.#onDamaged?.(captureId, error);
      const taken = items.filter((item) => assigned.has(item.captureId));
      return {
        items: taken,
        damaged: damaged.map((d) => d.captureId),
        deferred,
        // Items not assigned (no longer waiting) are not held by this batch either.
        untaken: limit - rows.length + items.length - taken.length,
      };
    } finally {
      for (const row of rows) this.#reading.delete(row.captureId);
    }
  }

  passedOver(): number {
    return this.#waitingForTry().length;
  }

  async retrySetAside(): Promise<RetriedBatch[]> {
    const now = this.#monotonic();
    const due = [...this.#setAside].filter(
      ([batchId, aside]) => aside.notBefore <= now && !this.#retrying.has(batchId),
    );
    const retried: RetriedBatch[] = [];
    for (const [batchId] of due) this.#retrying.add(batchId);
    try {
      for (const [batchId, aside] of due) {
        const outcome = await this.#tryOpenBatch(batchId, aside.rows, aside.deferrals);
        if (!('items' in outcome)) continue;
        this.#setAside.delete(batchId);
        retried.push({ batchId, items: outcome.items, damaged: outcome.damaged });
      }
    } finally {
      for (const [batchId] of due) this.#retrying.delete(batchId);
    }
    return retried;
  }

  nextSetAsideTryInMs(): number | undefined {
    // Those being read now are not due: their try, once over, tells when they are.
    const waiting = [...this.#setAside].filter(([batchId]) => !this.#retrying.has(batchId));
    if (waiting.length === 0) return undefined;
    const next = Math.min(...waiting.map(([, aside]) => aside.notBefore));
    return Math.max(0, next - this.#monotonic());
  }

  /**
   * Reads an interrupted batch whole. Never split: the batch may have been written before the crash, and a
   * capture taken out of it would be written again under another id (its old manifest keeps it). So when one of
   * its captures cannot be read now, the whole batch is set aside under its id (why), tried again after the
   * deferral delay; a capture unreadable `maxTries` times (counted in `deferrals`) is then dropped as FAILURE, as a
   * damaged one, and the rest written under the same id: the old manifest keeps it or is replaced without it, so
   * it is delivered at most once.
   */
  async #tryOpenBatch(
    batchId: string,
    rows: StoredCaptureRow[],
    deferrals: Map<string, Deferral>,
  ): Promise<{ items: CaptureItem[]; damaged: string[] } | { why: string }> {
    const read = await Promise.all(rows.map((row) => this.#read(row)));
    const classified = this.#classify(rows, read, deferrals);
    const setAside = (why: string): { why: string } => {
      // Records only the failed reads: a capture given up stays counted, so its next failure gives it up again.
      const failed = [...classified.deferrals].flatMap(([captureId, deferral]) =>
        deferral ? [[captureId, deferral] as const] : [],
      );
      for (const [captureId, deferral] of failed) deferrals.set(captureId, deferral);
      try {
        this.#repository.recordReadTries(readTriesToRecord(rows, classified.deferrals));
        if (this.#readTriesUnrecorded) {
          this.#readTriesUnrecorded = false;
          this.#onReadTriesRecording?.(undefined);
        }
      } catch (error) {
        // Counted in memory still: only a restart before the next recorded try would count these again.
        if (!this.#readTriesUnrecorded) {
          this.#readTriesUnrecorded = true;
          this.#onReadTriesRecording?.(error instanceof Error ? error : new Error(String(error)));
        }
      }
      // The next try: the earliest of this try's failed reads (none: the discard failed; after the first delay).
      const notBefore = Math.min(...failed.map(([, d]) => d.notBefore));
      this.#setAside.set(batchId, {
        rows,
        deferrals,
        notBefore: Number.isFinite(notBefore) ? notBefore : this.#monotonic() + this.#deferral.firstDelayMs,
      });
      return { why };
    };
    const unreadable = classified.deferred[0];
    if (unreadable) {
      return setAside(
        `its capture ${unreadable.captureId} could not be read now: ${unreadable.error.message}`,
      );
    }
    try {
      this.#discard(classified.damaged);
    } catch (error) {
      // Written again without them, the batch would not replace every manifest it wrote.
      return setAside(`its unreadable captures could not be marked FAILURE: ${(error as Error).message}`);
    }
    return { items: classified.items, damaged: classified.damaged.map((d) => d.captureId) };
  }

  /** Deferred captures before their next try. */
  #waitingForTry(): string[] {
    const now = this.#monotonic();
    return [...this.#deferrals].filter(([, d]) => d.notBefore > now).map(([captureId]) => captureId);
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

  /** Large payloads go inline (problem) or to files again (undefined): told once per change. */
  #folderState(problem: Error | undefined): void {
    if (this.#folderUnsafe === (problem !== undefined)) return;
    this.#folderUnsafe = problem !== undefined;
    this.#onPayloadFolder?.(problem);
  }

  /** Drops unreadable captures, marked FAILURE (one transaction), then tells of them. */
  #discard(damaged: Classified['damaged']): void {
    this.#repository.discard(damaged, this.#now());
    for (const { captureId, error } of damaged) this.#onDamaged?.(captureId, error);
  }

  /**
   * Classifies what was read of the rows' captures, in order; changes nothing. Those damaged (file gone or not the
   * one written, bytes not matching the meta), or that could not be read `maxTries` times, are to be dropped,
   * marked FAILURE; those that cannot be read now for any other reason are deferred. `deferrals` is what the
   * deferral records become once that is recorded (undefined: forgotten).
   */
  #classify(
    rows: readonly StoredCaptureRow[],
    read: readonly ReadOutcome[],
    previous: ReadonlyMap<string, Deferral> = this.#deferrals,
  ): Classified {
    const sorted: Classified = {
      items: [],
      damaged: [],
      deferred: [],
      deferrals: new Map(),
    };
    read.forEach((outcome, i) => {
      const { captureId } = rows[i]!;
      if ('item' in outcome) {
        sorted.items.push(outcome.item);
        sorted.deferrals.set(captureId, undefined);
        return;
      }
      if ('damaged' in outcome) {
        const detail = `the stored capture could not be read back: ${outcome.damaged.message}`;
        sorted.damaged.push({ captureId, error: outcome.damaged, detail });
        sorted.deferrals.set(captureId, undefined);
        return;
      }
      const before = previous.get(captureId);
      // An unsafe folder is known and logged once per change: not counted against the capture.
      const counted = !(outcome.deferred instanceof UnsafePayloadFolderError);
      // Counted on from the database at a capture's first try in this run: a restart does not start it again.
      const tries = (before?.tries ?? rows[i]!.readTries) + (counted ? 1 : 0);
      const failures = (before?.failures ?? 0) + 1;
      if (tries >= this.#deferral.maxTries) {
        const error = new Error(
          `the stored capture could not be read back in ${tries} tries (the last: ${outcome.deferred.message}); given up`,
          { cause: outcome.deferred },
        );
        sorted.damaged.push({ captureId, error, detail: error.message });
        sorted.deferrals.set(captureId, undefined);
        return;
      }
      const delay = Math.min(this.#deferral.firstDelayMs * 2 ** (failures - 1), this.#deferral.maxDelayMs);
      sorted.deferrals.set(captureId, { tries, failures, notBefore: this.#monotonic() + delay });
      sorted.deferred.push({ captureId, error: outcome.deferred });
    });
    return sorted;
  }

  async #read(row: StoredCaptureRow): Promise<ReadOutcome> {
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

/** The deferred captures whose count of tries grew (not those only refused by an unsafe folder): to record. */
function readTriesToRecord(
  rows: readonly StoredCaptureRow[],
  deferrals: ReadonlyMap<string, Deferral | undefined>,
): CaptureReadTries[] {
  return rows.flatMap((row) => {
    const tries = deferrals.get(row.captureId)?.tries;
    return tries !== undefined && tries !== row.readTries ? [{ captureId: row.captureId, tries }] : [];
  });
}

/** A deferred capture: tries counted towards the limit, reads failed (the delay's step), next try (monotonic). */
interface Deferral {
  tries: number;
  failures: number;
  notBefore: number;
}

/** An interrupted batch set aside whole (see SqliteCaptureQueue.#tryOpenBatch). */
interface SetAsideBatch {
  rows: StoredCaptureRow[];
  deferrals: Map<string, Deferral>;
  /** Its next try (monotonic): the earliest of its captures'. */
  notBefore: number;
}

/** What a formation read, sorted (see SqliteCaptureQueue.#classify). */
interface Classified {
  items: CaptureItem[];
  damaged: { captureId: string; error: Error; detail: string }[];
  deferred: FormedBatch['deferred'];
  deferrals: Map<string, Deferral | undefined>;
}

type ReadOutcome = { item: CaptureItem } | { damaged: Error } | { deferred: Error };

const EMPTY = Buffer.alloc(0);
