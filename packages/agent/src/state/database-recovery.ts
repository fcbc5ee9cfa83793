import { existsSync, renameSync } from 'node:fs';
import SqliteDatabase, { type Database } from 'better-sqlite3';
import {
  AgentDatabase,
  SALVAGEABLE_TABLES,
  type OpenAgentDatabaseOptions,
  type SalvageableTable,
} from './agent-database.js';

/** What happened when the database file was found damaged at start-up. */
export interface DatabaseRecovery {
  /** The damaged file (it is no longer there: see damagedCopy). */
  path: string;
  /** Where the damaged file (and its -wal / -shm) was moved, for inspection. */
  damagedCopy: string;
  /** What SQLite said was wrong. */
  reason: string;
  /** Rows read back from the damaged copy into the fresh database, per table. */
  salvaged: Record<SalvageableTable, number>;
  /** Whether every queued capture could be read (false: some may be lost beyond lostCaptureIds). */
  captureQueueComplete: boolean;
  /**
   * Captures acknowledged (IN_PROGRESS) whose data could not be read back: their status is now FAILURE, so that
   * GetCaptureDataStatus says so.
   */
  lostCaptureIds: string[];
}

export interface OpenedAgentDatabase {
  database: AgentDatabase;
  /** Present when the file was damaged and replaced. */
  recovery?: DatabaseRecovery;
}

/** SQLite's result codes for a file that is damaged or not a database at all. */
function isCorruption(error: unknown): boolean {
  for (let cause: unknown = error; cause instanceof Error; cause = cause.cause) {
    const code = (cause as { code?: unknown }).code;
    if (typeof code === 'string' && (code.startsWith('SQLITE_CORRUPT') || code === 'SQLITE_NOTADB'))
      return true;
  }
  return false;
}

/**
 * Opens the agent's database. The database holds caches and queues, so a damaged file must not stop the agent
 * for good (under a supervisor that restarts it, a crash loop with no inference): when SQLite reports the file
 * damaged, on opening or in a quick_check, the file is moved aside (kept for inspection, never deleted), a
 * fresh one is created, and whatever rows SQLite can still read from the damaged copy are put back, queued
 * captures first. The caller reports the recovery loudly. Other failures (a newer schema, permissions) throw.
 */
export function openAgentDatabase(options: OpenAgentDatabaseOptions, now = new Date()): OpenedAgentDatabase {
  let reason: string;
  try {
    const database = AgentDatabase.open(options);
    let problems: string[];
    try {
      problems = database.integrityProblems();
    } catch (error) {
      database.close();
      if (!isCorruption(error)) throw error;
      problems = [(error as Error).message];
    }
    if (problems.length === 0) return { database };
    database.close();
    reason = problems.join('; ');
  } catch (error) {
    if (!isCorruption(error)) throw error;
    reason = ((error as Error).cause as Error | undefined)?.message ?? (error as Error).message;
  }

  const damagedCopy = `${options.path}.damaged-${now.toISOString().replace(/[:.]/g, '-')}`;
  try {
    // The WAL and shared-memory files first: a crash after moving the main file alone would leave a stale WAL
    // beside the fresh database, which SQLite would try to apply to it.
    for (const suffix of ['-wal', '-shm', '']) {
      if (existsSync(options.path + suffix)) renameSync(options.path + suffix, damagedCopy + suffix);
    }
  } catch (error) {
    throw new Error(
      `the agent database ${options.path} is damaged (${reason}), and it cannot be moved aside to ${damagedCopy}: ${(error as Error).message}; move or remove it yourself`,
      { cause: error },
    );
  }
  const database = AgentDatabase.open(options);
  const salvage = salvageRows(damagedCopy);
  const salvaged = {} as Record<SalvageableTable, number>;
  for (const table of SALVAGEABLE_TABLES) {
    salvaged[table] = database.insertSalvagedRows(table, salvage.rows[table]);
  }
  // Acknowledged captures still in progress whose data is gone: say so rather than leave them in progress.
  const queued = new Set(salvage.rows.capture_queue.map((row) => row.capture_id));
  const lostCaptureIds = salvage.rows.capture_status
    .filter((row) => row.status === 'IN_PROGRESS' && !queued.has(row.capture_id))
    .map((row) => String(row.capture_id));
  if (lostCaptureIds.length > 0) {
    database.captureQueue.setStatuses(
      lostCaptureIds,
      'FAILURE',
      now.getTime(),
      'lost: the agent database was damaged and this capture could not be read back',
    );
  }
  // Salvaged captures whose status row was lost get one again, so GetCaptureDataStatus still answers.
  const statuses = new Set(salvage.rows.capture_status.map((row) => row.capture_id));
  database.insertSalvagedRows(
    'capture_status',
    salvage.rows.capture_queue
      .filter((row) => !statuses.has(row.capture_id))
      .map((row) => ({
        capture_id: row.capture_id,
        status: 'IN_PROGRESS',
        model: row.model,
        updated_at: row.enqueued_at,
        detail: null,
      })),
  );
  return {
    database,
    recovery: {
      path: options.path,
      damagedCopy,
      reason,
      salvaged,
      captureQueueComplete: salvage.complete.capture_queue,
      lostCaptureIds,
    },
  };
}

type Row = Record<string, unknown>;

/**
 * Reads what it can of each table of a damaged database, read-only: rows in rowid order until a damaged page
 * stops the scan, then from the other end back to the damage. Rows between two damaged pages are lost.
 */
function salvageRows(path: string): {
  rows: Record<SalvageableTable, Row[]>;
  complete: Record<SalvageableTable, boolean>;
} {
  const rows = {} as Record<SalvageableTable, Row[]>;
  const complete = {} as Record<SalvageableTable, boolean>;
  for (const table of SALVAGEABLE_TABLES) {
    rows[table] = [];
    complete[table] = false;
  }
  let db: Database;
  try {
    db = new SqliteDatabase(path, { readonly: true, fileMustExist: true });
  } catch {
    return { rows, complete };
  }
  try {
    for (const table of SALVAGEABLE_TABLES) {
      const byRowid = new Map<number, Row>();
      complete[table] = scan(db, `SELECT rowid AS salvage_rowid, * FROM ${table} ORDER BY rowid`, byRowid);
      if (!complete[table]) {
        scan(db, `SELECT rowid AS salvage_rowid, * FROM ${table} ORDER BY rowid DESC`, byRowid);
      }
      rows[table] = [...byRowid.entries()]
        .sort(([a], [b]) => a - b)
        .map(([, row]) => {
          const { salvage_rowid: _rowid, ...columns } = row;
          return columns;
        });
    }
  } finally {
    db.close();
  }
  return { rows, complete };
}

/** Collects rows until the statement fails or reaches a row already seen; returns whether it read them all. */
function scan(db: Database, sql: string, into: Map<number, Row>): boolean {
  try {
    for (const row of db.prepare(sql).iterate() as Iterable<Row>) {
      const rowid = Number(row.salvage_rowid);
      if (into.has(rowid)) return true;
      into.set(rowid, row);
    }
    return true;
  } catch {
    return false;
  }
}
