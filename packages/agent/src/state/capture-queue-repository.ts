import type { Database, Statement } from 'better-sqlite3';
import { CapturePayloadFiles } from './capture-payload-files.js';

export type StoredCaptureStatus = 'IN_PROGRESS' | 'SUCCESS' | 'FAILURE';

/** A capture as the queue holds it: what it is about, and its serialised form (opaque here). */
export interface QueuedCaptureRow {
  captureId: string;
  model: string;
  meta: string;
  /** The bytes, kept in the row; empty when payloadFile names them. */
  payload: Buffer;
  /** A file written with storePayload that holds the bytes instead (a large capture). */
  payloadFile?: string | null;
  enqueuedAt: number;
  /** Keep a status for GetCaptureDataStatus (default true; automatic captures have no one to ask). */
  trackStatus?: boolean;
}

export interface BatchedCaptureRow extends QueuedCaptureRow {
  payloadFile: string | null;
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
  payload_file: string | null;
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
 * fsynced) when it returns. A large payload is not written into the database (that would hold the event loop for
 * the whole write): storePayload writes it as a file first, off the event loop, and the row names the file (see
 * CapturePayloadFiles for the order of writes and removals that keeps rows and files consistent across crashes).
 */
export class CaptureQueueRepository {
  readonly #db: Database;
  readonly #files: CapturePayloadFiles;
  readonly #insertCapture: Statement;
  readonly #insertStatus: Statement;
  readonly #selectStatus: Statement;
  readonly #updateStatus: Statement;

  /** `payloadDir`: where large payloads are kept (capturePayloadFolder of the database's path). */
  constructor(db: Database, options: { payloadDir: string }) {
    this.#db = db;
    this.#files = new CapturePayloadFiles({ dir: options.payloadDir, walPath: `${db.name}-wal` });
    this.#insertCapture = db.prepare(
      'INSERT INTO capture_queue (capture_id, model, meta, payload, payload_file, enqueued_at) VALUES (?, ?, ?, ?, ?, ?)',
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

  /**
   * Adds captures and (unless trackStatus is false) their IN_PROGRESS statuses, all or none. Throws
   * SQLITE_CONSTRAINT_UNIQUE on an id queued twice. When it throws, the payload files the rows named are removed.
   */
  enqueue(rows: readonly QueuedCaptureRow[]): void {
    const files = rows.flatMap((row) => (row.payloadFile ? [row.payloadFile] : []));
    try {
      this.#db
        .transaction(() => {
          for (const row of rows) {
            this.#insertCapture.run(
              row.captureId,
              row.model,
              row.meta,
              row.payload,
              row.payloadFile ?? null,
              row.enqueuedAt,
            );
            if (row.trackStatus !== false) this.#insertStatus.run(row.captureId, row.model, row.enqueuedAt);
          }
        })
        .immediate();
    } catch (error) {
      this.#files.removeUnreferenced(files);
      throw error;
    }
    for (const name of files) this.#files.settle(name);
  }

  /**
   * Writes a large payload as a file, durably (fsynced, renamed, folder fsynced), on the thread pool; resolves
   * with the name to give enqueue as payloadFile. A file no row comes to name is removed at the next start.
   */
  storePayload(chunks: readonly Uint8Array[]): Promise<string> {
    return this.#files.write(chunks);
  }

  /** Removes a file from storePayload that will not be enqueued after all. */
  dropStoredPayload(name: string): void {
    this.#files.removeUnreferenced([name]);
  }

  /** A row's bytes: its own, or its file's (read on the thread pool). Rejects when the file cannot be read. */
  async readPayload(row: Pick<BatchedCaptureRow, 'payload' | 'payloadFile'>): Promise<Buffer> {
    return row.payloadFile === null ? row.payload : this.#files.read(row.payloadFile);
  }

  /**
   * Removes the payload files no row names (left by a crash between a file's write and its row's insert, or
   * before a finished row's file was removed); files being written now are left alone. Returns how many.
   */
  removeOrphanPayloads(): Promise<number> {
    return this.#files.sweep(
      () =>
        new Set(
          (
            this.#db
              .prepare('SELECT payload_file FROM capture_queue WHERE payload_file IS NOT NULL')
              .all() as { payload_file: string }[]
          ).map((row) => row.payload_file),
        ),
    );
  }

  /** Resolves once the payload files of the rows removed so far are removed too. */
  payloadRemovalsDone(): Promise<void> {
    return this.#files.idle();
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
    const removed = this.#db
      .transaction(() => {
        const ids = this.#db
          .prepare('DELETE FROM capture_queue WHERE batch_id = ? RETURNING capture_id, payload_file')
          .all(batchId) as { capture_id: string; payload_file: string | null }[];
        if (status !== null) {
          for (const { capture_id } of ids) this.#updateStatus.run(status, at, detail ?? null, capture_id);
        }
        return ids;
      })
      .immediate();
    this.#files.removeCommitted(removed.flatMap((row) => (row.payload_file ? [row.payload_file] : [])));
  }

  /** Drops one capture from the queue (its stored form is unreadable) and marks it FAILURE. */
  discard(captureId: string, at: number, detail: string): void {
    const removed = this.#db
      .transaction(() => {
        const rows = this.#db
          .prepare('DELETE FROM capture_queue WHERE capture_id = ? RETURNING payload_file')
          .all(captureId) as { payload_file: string | null }[];
        this.#updateStatus.run('FAILURE', at, detail, captureId);
        return rows;
      })
      .immediate();
    this.#files.removeCommitted(removed.flatMap((row) => (row.payload_file ? [row.payload_file] : [])));
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
    payloadFile: row.payload_file,
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
