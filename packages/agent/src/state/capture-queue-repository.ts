import type { Database, Statement } from 'better-sqlite3';

export type StoredCaptureStatus = 'IN_PROGRESS' | 'SUCCESS' | 'FAILURE';

/** A capture as the queue holds it: what it is about, and its serialised form (opaque here). */
export interface QueuedCaptureRow {
  captureId: string;
  model: string;
  meta: string;
  payload: Buffer;
  enqueuedAt: number;
  /** Keep a status for GetCaptureDataStatus (default true; automatic captures have no one to ask). */
  trackStatus?: boolean;
}

export interface BatchedCaptureRow extends QueuedCaptureRow {
  batchId: string;
}

export interface CaptureStatusRow {
  captureId: string;
  status: StoredCaptureStatus;
  model: string;
  updatedAt: number;
  detail: string | null;
}

interface RawQueueRow {
  capture_id: string;
  model: string;
  meta: string;
  payload: Buffer;
  enqueued_at: number;
  batch_id: string | null;
}

interface RawStatusRow {
  capture_id: string;
  status: StoredCaptureStatus;
  model: string;
  updated_at: number;
  detail: string | null;
}

/**
 * The durable capture queue: captures waiting to be written, the batch each was put in, and every capture's
 * status. Synchronous (better-sqlite3): each method is one transaction, committed (and, with synchronous=FULL,
 * fsynced) when it returns.
 */
export class CaptureQueueRepository {
  readonly #db: Database;
  readonly #insertCapture: Statement;
  readonly #insertStatus: Statement;
  readonly #selectStatus: Statement;
  readonly #updateStatus: Statement;

  constructor(db: Database) {
    this.#db = db;
    this.#insertCapture = db.prepare(
      'INSERT INTO capture_queue (capture_id, model, meta, payload, enqueued_at) VALUES (?, ?, ?, ?, ?)',
    );
    // A status left from an earlier capture with the same id (pruned by age, or the caller checked) is replaced.
    this.#insertStatus = db.prepare(
      "INSERT OR REPLACE INTO capture_status (capture_id, status, model, updated_at, detail) VALUES (?, 'IN_PROGRESS', ?, ?, NULL)",
    );
    this.#selectStatus = db.prepare('SELECT * FROM capture_status WHERE capture_id = ?');
    this.#updateStatus = db.prepare(
      'UPDATE capture_status SET status = ?, updated_at = ?, detail = ? WHERE capture_id = ?',
    );
  }

  /** Adds captures and (unless trackStatus is false) their IN_PROGRESS statuses, all or none. Throws SQLITE_CONSTRAINT_UNIQUE on an id queued twice. */
  enqueue(rows: readonly QueuedCaptureRow[]): void {
    this.#db
      .transaction(() => {
        for (const row of rows) {
          this.#insertCapture.run(row.captureId, row.model, row.meta, row.payload, row.enqueuedAt);
          if (row.trackStatus !== false) this.#insertStatus.run(row.captureId, row.model, row.enqueuedAt);
        }
      })
      .immediate();
  }

  /** Captures held: waiting, or in a batch not yet written. */
  heldCount(): number {
    return (this.#db.prepare('SELECT count(*) AS n FROM capture_queue').get() as { n: number }).n;
  }

  /** Captures not yet in a batch. */
  pendingCount(): number {
    return (
      this.#db.prepare('SELECT count(*) AS n FROM capture_queue WHERE batch_id IS NULL').get() as {
        n: number;
      }
    ).n;
  }

  /** Puts up to `limit` of the oldest waiting captures in batch `batchId`; returns them, oldest first. */
  formBatch(batchId: string, limit: number): BatchedCaptureRow[] {
    return this.#db
      .transaction(() => {
        const raw = this.#db
          .prepare(
            `UPDATE capture_queue SET batch_id = ?
             WHERE seq IN (SELECT seq FROM capture_queue WHERE batch_id IS NULL ORDER BY seq LIMIT ?)
             RETURNING *`,
          )
          .all(batchId, limit) as (RawQueueRow & { seq: number })[];
        return raw.sort((a, b) => a.seq - b.seq).map(toBatched);
      })
      .immediate();
  }

  /** Batches formed but not completed (what a crash interrupted), each oldest capture first. */
  openBatches(): { batchId: string; rows: BatchedCaptureRow[] }[] {
    const raw = this.#db
      .prepare('SELECT * FROM capture_queue WHERE batch_id IS NOT NULL ORDER BY seq')
      .all() as RawQueueRow[];
    const batches = new Map<string, BatchedCaptureRow[]>();
    for (const row of raw) {
      const batch = batches.get(row.batch_id!) ?? [];
      batch.push(toBatched(row));
      batches.set(row.batch_id!, batch);
    }
    return [...batches].map(([batchId, rows]) => ({ batchId, rows }));
  }

  /**
   * Removes a batch's captures from the queue and, unless `status` is null (the batch went to the spool and
   * stays IN_PROGRESS until uploaded), sets their statuses. One transaction.
   */
  completeBatch(
    batchId: string,
    status: Exclude<StoredCaptureStatus, 'IN_PROGRESS'> | null,
    at: number,
    detail?: string,
  ): void {
    this.#db
      .transaction(() => {
        const ids = this.#db
          .prepare('DELETE FROM capture_queue WHERE batch_id = ? RETURNING capture_id')
          .all(batchId) as { capture_id: string }[];
        if (status !== null) {
          for (const { capture_id } of ids) this.#updateStatus.run(status, at, detail ?? null, capture_id);
        }
      })
      .immediate();
  }

  /** Drops one capture from the queue (its stored form is unreadable) and marks it FAILURE. */
  discard(captureId: string, at: number, detail: string): void {
    this.#db
      .transaction(() => {
        this.#db.prepare('DELETE FROM capture_queue WHERE capture_id = ?').run(captureId);
        this.#updateStatus.run('FAILURE', at, detail, captureId);
      })
      .immediate();
  }

  /** Sets the statuses of captures no longer in the queue (delivered or dropped from the spool). */
  setStatuses(captureIds: readonly string[], status: StoredCaptureStatus, at: number, detail?: string): void {
    this.#db
      .transaction(() => {
        for (const id of captureIds) this.#updateStatus.run(status, at, detail ?? null, id);
      })
      .immediate();
  }

  status(captureId: string): CaptureStatusRow | undefined {
    const row = this.#selectStatus.get(captureId) as RawStatusRow | undefined;
    return row && toStatus(row);
  }

  /** Ids whose status is IN_PROGRESS but that are not in the queue: captures handed to the spool. */
  inProgressOutsideQueue(): string[] {
    return (
      this.#db
        .prepare(
          `SELECT s.capture_id FROM capture_status s
           WHERE s.status = 'IN_PROGRESS' AND NOT EXISTS (SELECT 1 FROM capture_queue q WHERE q.capture_id = s.capture_id)`,
        )
        .all() as { capture_id: string }[]
    ).map((r) => r.capture_id);
  }

  /**
   * Forgets finished statuses (SUCCESS, FAILURE) older than `olderThan`, and beyond the `keep` newest ones.
   * IN_PROGRESS statuses are never pruned. Returns how many were removed.
   */
  pruneStatuses(options: { olderThan: number; keep: number }): number {
    return this.#db
      .transaction(() => {
        let removed = this.#db
          .prepare("DELETE FROM capture_status WHERE status != 'IN_PROGRESS' AND updated_at < ?")
          .run(options.olderThan).changes;
        removed += this.#db
          .prepare(
            `DELETE FROM capture_status WHERE capture_id IN (
               SELECT capture_id FROM capture_status WHERE status != 'IN_PROGRESS'
               ORDER BY updated_at DESC LIMIT -1 OFFSET ?)`,
          )
          .run(Math.max(0, Math.trunc(options.keep))).changes;
        return removed;
      })
      .immediate();
  }
}

function toBatched(row: RawQueueRow): BatchedCaptureRow {
  return {
    captureId: row.capture_id,
    model: row.model,
    meta: row.meta,
    payload: row.payload,
    enqueuedAt: row.enqueued_at,
    batchId: row.batch_id!,
  };
}

function toStatus(row: RawStatusRow): CaptureStatusRow {
  return {
    captureId: row.capture_id,
    status: row.status,
    model: row.model,
    updatedAt: row.updated_at,
    detail: row.detail,
  };
}
