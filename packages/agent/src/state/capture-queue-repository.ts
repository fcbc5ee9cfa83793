import type { Database, Statement } from 'better-sqlite3';
import { CapturePayloadFiles, DamagedPayloadError, type PayloadFileSystem } from './capture-payload-files.js';

export type StoredCaptureStatus = 'IN_PROGRESS' | 'SUCCESS' | 'FAILURE';

/** A capture as the queue holds it: what it is about, and its serialised form (opaque here). */
export interface QueuedCaptureRow {
  captureId: string;
  model: string;
  meta: string;
  /** The bytes, kept in the row; empty when payloadFile names them. */
  payload: Buffer;
  /** A file written with storePayload that holds the bytes instead (a large capture); its size is recorded. */
  payloadFile?: string | null;
  enqueuedAt: number;
  /** Keep a status for GetCaptureDataStatus (default true; automatic captures have no one to ask). */
  trackStatus?: boolean;
}

/** A queued capture as stored. */
export interface StoredCaptureRow extends QueuedCaptureRow {
  payloadFile: string | null;
  /** The payload file's size, as written (null when the bytes are in the row). */
  payloadBytes: number | null;
  /** Failed reads of the payload counted towards giving it up, over every run (see recordReadTries). */
  readTries: number;
}

/** How many failed reads of a capture's payload count towards giving it up, now. */
export interface CaptureReadTries {
  captureId: string;
  tries: number;
}

export interface BatchedCaptureRow extends StoredCaptureRow {
  batchId: string;
}

/** A capture to drop from the queue as unreadable, marked FAILURE with `detail`. */
export interface DiscardedCapture {
  captureId: string;
  detail: string;
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
  payload_bytes: number | null;
  read_tries: number;
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

  /**
   * `payloadDir`: where large payloads are kept (capturePayloadFolder of the database's path). `fileSystem`: the
   * payload files' operations (default node:fs; a test records their order).
   */
  constructor(db: Database, options: { payloadDir: string; fileSystem?: PayloadFileSystem }) {
    this.#db = db;
    this.#files = new CapturePayloadFiles({
      dir: options.payloadDir,
      walPath: `${db.name}-wal`,
      ...(options.fileSystem && { fileSystem: options.fileSystem }),
    });
    this.#insertCapture = db.prepare(
      'INSERT INTO capture_queue (capture_id, model, meta, payload, payload_file, payload_bytes, enqueued_at) VALUES (?, ?, ?, ?, ?, ?, ?)',
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
   * A payload file must be one storePayload returned and no row names yet (its size is recorded from the write).
   */
  enqueue(rows: readonly QueuedCaptureRow[]): void {
    const files = rows.flatMap((row) => (row.payloadFile ? [row.payloadFile] : []));
    const sizes = files.map((name) => {
      const size = this.#files.writtenSize(name);
      if (size === undefined) {
        throw new Error(
          `a capture names the payload file ${JSON.stringify(name)}, which this queue is not holding for a row; expected a name storePayload returned, used once`,
        );
      }
      return size;
    });
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
              row.payloadFile ? sizes[files.indexOf(row.payloadFile)] : null,
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

  /**
   * A row's bytes: its own, or its file's (read on the thread pool). Rejects with DamagedPayloadError when the
   * file is gone or is not the one written; with UnsafePayloadFolderError or the file system's error (EMFILE,
   * EIO, …) when it cannot be read now but may be later.
   */
  async readPayload(
    row: Pick<StoredCaptureRow, 'payload' | 'payloadFile' | 'payloadBytes'>,
  ): Promise<Buffer> {
    if (row.payloadFile === null) return row.payload;
    if (row.payloadBytes === null) {
      throw new DamagedPayloadError(`its row names the payload file ${row.payloadFile} but not its size`);
    }
    return this.#files.read(row.payloadFile, row.payloadBytes);
  }

  /**
   * Removes the payload files no row names (left by a crash between a file's write and its row's insert, or
   * before a finished row's file was removed); files being written now are left alone. Returns how many, and
   * those it could not remove. Rejects (nothing removed) when the folder is not safe to use.
   */
  removeOrphanPayloads(): Promise<{ removed: number; failed: string[] }> {
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

  /** The bytes of each capture not yet in a batch, by id (what it holds of the buffer's byte cap). */
  pendingBytes(): Map<string, number> {
    const rows = this.#db
      .prepare(
        'SELECT capture_id, coalesce(payload_bytes, length(payload)) AS bytes FROM capture_queue WHERE batch_id IS NULL',
      )
      .all() as { capture_id: string; bytes: number }[];
    return new Map(rows.map((row) => [row.capture_id, row.bytes]));
  }

  /**
   * Up to `limit` of the oldest captures not in a batch, passing over those named in `skip` (deferred ones waiting
   * for their next try, those another formation is reading); oldest first. Changes nothing: see assignBatch.
   */
  waiting(limit: number, skip: readonly string[] = []): StoredCaptureRow[] {
    const raw = this.#db
      .prepare(
        `SELECT * FROM capture_queue
         WHERE batch_id IS NULL AND capture_id NOT IN (SELECT value FROM json_each(?))
         ORDER BY seq LIMIT ?`,
      )
      .all(JSON.stringify(skip), limit) as RawQueueRow[];
    return raw.map(toStored);
  }

  /**
   * One transaction: puts the captures named in `captureIds` that are not in a batch into batch `batchId`, drops
   * those in `discards` (marked FAILURE), and records `readTries` (see recordReadTries). Returns the ids put in the
   * batch. When it throws, nothing changed.
   */
  assignBatch(
    batchId: string,
    captureIds: readonly string[],
    discards: readonly DiscardedCapture[],
    at: number,
    readTries: readonly CaptureReadTries[] = [],
  ): string[] {
    const { assigned, files } = this.#db
      .transaction(() => {
        const rows = this.#db
          .prepare(
            `UPDATE capture_queue SET batch_id = ?
             WHERE batch_id IS NULL AND capture_id IN (SELECT value FROM json_each(?))
             RETURNING capture_id`,
          )
          .all(batchId, JSON.stringify(captureIds)) as { capture_id: string }[];
        this.#recordReadTries(readTries);
        return { assigned: rows.map((row) => row.capture_id), files: this.#discard(discards, at) };
      })
      .immediate();
    this.#files.removeCommitted(files);
    return assigned;
  }

  /**
   * Records how many failed reads of each capture's payload count towards giving it up, so that a restart goes on
   * counting (a payload that can never be read is given up even by an agent restarted more often than the tries
   * take). One transaction; captures no longer queued are passed over.
   */
  recordReadTries(readTries: readonly CaptureReadTries[]): void {
    if (readTries.length === 0) return;
    this.#db.transaction(() => this.#recordReadTries(readTries)).immediate();
  }

  #recordReadTries(readTries: readonly CaptureReadTries[]): void {
    if (readTries.length === 0) return;
    const update = this.#db.prepare('UPDATE capture_queue SET read_tries = ? WHERE capture_id = ?');
    for (const { captureId, tries } of readTries) update.run(tries, captureId);
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

  /** Drops captures from the queue (their stored forms are unreadable) and marks them FAILURE. One transaction. */
  discard(discards: readonly DiscardedCapture[], at: number): void {
    if (discards.length === 0) return;
    const files = this.#db.transaction(() => this.#discard(discards, at)).immediate();
    this.#files.removeCommitted(files);
  }

  /** Inside a transaction: drops the captures and marks them FAILURE; returns their payload files to remove. */
  #discard(discards: readonly DiscardedCapture[], at: number): string[] {
    const remove = this.#db.prepare('DELETE FROM capture_queue WHERE capture_id = ? RETURNING payload_file');
    return discards.flatMap(({ captureId, detail }) => {
      const rows = remove.all(captureId) as { payload_file: string | null }[];
      this.#updateStatus.run('FAILURE', at, detail, captureId);
      return rows.flatMap((row) => (row.payload_file ? [row.payload_file] : []));
    });
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

function toStored(row: RawQueueRow): StoredCaptureRow {
  return {
    captureId: row.capture_id,
    model: row.model,
    meta: row.meta,
    payload: row.payload,
    payloadFile: row.payload_file,
    payloadBytes: row.payload_bytes,
    readTries: row.read_tries,
    enqueuedAt: row.enqueued_at,
  };
}

function toBatched(row: RawQueueRow): BatchedCaptureRow {
  return { ...toStored(row), batchId: row.batch_id! };
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
