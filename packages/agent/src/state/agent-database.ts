import { mkdirSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import SqliteDatabase, { type Database } from 'better-sqlite3';
import { capturePayloadFolder } from './capture-payload-files.js';
import { CaptureQueueRepository } from './capture-queue-repository.js';
import { DeploymentsRepository } from './deployments-repository.js';
import { LoadedModelsRepository } from './loaded-models-repository.js';
import { MIGRATIONS, migrate, NewerAgentDatabaseError, type Migration } from './migrations.js';
import { ModelCountersRepository } from './model-counters-repository.js';
import { UploadLedgerRepository } from './upload-ledger-repository.js';

/** The database file's name under `sagemaker_edge_local_data_root_path`. */
export const AGENT_DATABASE_FILE = 'agent.db';

/** The tables whose rows are worth saving from a damaged database, in the order to restore them. */
export const SALVAGEABLE_TABLES = [
  'capture_queue',
  'capture_status',
  'loaded_models',
  'model_counters',
  'uploaded_files',
  // The update engine's state: without it an update interrupted by the damage could not resume where it was.
  'deployment_models',
] as const;
export type SalvageableTable = (typeof SALVAGEABLE_TABLES)[number];

export function agentDatabasePath(localDataRootPath: string): string {
  return join(localDataRootPath, AGENT_DATABASE_FILE);
}

export interface OpenAgentDatabaseOptions {
  /** The database file; created (with its folder) when missing. */
  path: string;
  /**
   * NORMAL (the default): in WAL mode a commit is in the operating system's hands when it returns, so it survives
   * the agent being killed (kill -9, OOM killer, a crash); the WAL is also fsynced every `walSyncIntervalMs` off
   * the event loop, so a power cut or kernel crash loses at most the commits of that interval. FULL: every commit
   * is fsynced before it returns, so nothing acknowledged is lost even to a power cut — but better-sqlite3 is
   * synchronous, so each fsync stalls the agent's event loop (0.4 ms on an SSD, tens of ms on an SD card).
   */
  synchronous?: 'FULL' | 'NORMAL';
  /** With NORMAL: how often the WAL is fsynced in the background. Default 1000 ms; 0 = never (SQLite's own). */
  walSyncIntervalMs?: number;
  /** How long a write waits for another connection's lock (tools reading the database). Default 5 s. */
  busyTimeoutMs?: number;
}

/**
 * The agent's local database (SQLite in WAL mode): the capture queue and statuses, the models to restore after a
 * restart, per-model counters, the periodic-upload ledger. One per agent; repositories share its connection.
 */
export class AgentDatabase {
  readonly path: string;
  /** The schema version now (PRAGMA user_version), and the migrations this open applied (start-up log). */
  readonly schema: { readonly version: number; readonly applied: readonly Migration[] };
  readonly captureQueue: CaptureQueueRepository;
  readonly loadedModels: LoadedModelsRepository;
  readonly modelCounters: ModelCountersRepository;
  readonly uploadLedger: UploadLedgerRepository;
  readonly deployments: DeploymentsRepository;
  readonly #db: Database;
  #walTimer: NodeJS.Timeout | undefined;
  #walSync: Promise<void> = Promise.resolve();

  private constructor(
    path: string,
    db: Database,
    walSyncIntervalMs: number,
    schema: AgentDatabase['schema'],
  ) {
    this.path = path;
    this.schema = schema;
    this.#db = db;
    if (walSyncIntervalMs > 0) {
      this.#walTimer = setInterval(() => {
        this.#walSync = this.#walSync.then(() => syncWal(`${path}-wal`));
      }, walSyncIntervalMs);
      this.#walTimer.unref();
    }
    this.captureQueue = new CaptureQueueRepository(db, { payloadDir: capturePayloadFolder(path) });
    this.loadedModels = new LoadedModelsRepository(db);
    this.modelCounters = new ModelCountersRepository(db);
    this.uploadLedger = new UploadLedgerRepository(db);
    this.deployments = new DeploymentsRepository(db);
  }

  /** Opens (creating and migrating as needed). Throws when the file is not a database or is from a newer agent. */
  static open(options: OpenAgentDatabaseOptions): AgentDatabase {
    mkdirSync(dirname(options.path), { recursive: true, mode: 0o700 });
    let db: Database;
    try {
      db = new SqliteDatabase(options.path, { timeout: options.busyTimeoutMs ?? 5000 });
    } catch (error) {
      throw new Error(`cannot open the agent database ${options.path}: ${(error as Error).message}`, {
        cause: error,
      });
    }
    try {
      const mode = db.pragma('journal_mode = WAL', { simple: true });
      if (mode !== 'wal')
        throw new Error(
          `SQLite would not switch to WAL (journal_mode is ${String(mode)}); is the folder on a network file system?`,
        );
      const synchronous = options.synchronous ?? 'NORMAL';
      db.pragma(`synchronous = ${synchronous}`);
      // Keep the WAL from staying large after a burst of big captures.
      db.pragma('journal_size_limit = 67108864');
      const applied = migrate(db);
      return new AgentDatabase(
        options.path,
        db,
        synchronous === 'NORMAL' ? (options.walSyncIntervalMs ?? 1000) : 0,
        {
          version: db.pragma('user_version', { simple: true }) as number,
          applied: MIGRATIONS.filter((m) => applied.includes(m.version)),
        },
      );
    } catch (error) {
      db.close();
      // Its message names the file and says what to do already.
      if (error instanceof NewerAgentDatabaseError) throw error;
      throw new Error(`cannot use the agent database ${options.path}: ${(error as Error).message}`, {
        cause: error,
      });
    }
  }

  /**
   * What SQLite's quick_check finds wrong with the file (at most `limit` problems); empty when it is sound.
   * Reads every page, so it is for start-up, not for a running agent. Throws when the file is too damaged to check.
   */
  integrityProblems(limit = 10): string[] {
    const rows = this.#db.pragma(`quick_check(${Math.trunc(limit)})`) as Array<{ quick_check: string }>;
    return rows.map((row) => row.quick_check).filter((result) => result !== 'ok');
  }

  /**
   * Inserts rows read from a damaged copy of the database (see database-recovery.ts), as they were, in one
   * transaction. Only the columns the table has are written; a row that clashes with one already there is skipped.
   */
  insertSalvagedRows(table: SalvageableTable, rows: readonly Record<string, unknown>[]): number {
    const columns = new Set(
      (this.#db.pragma(`table_info(${table})`) as Array<{ name: string }>).map((column) => column.name),
    );
    let inserted = 0;
    this.#db.transaction(() => {
      for (const row of rows) {
        const names = Object.keys(row).filter((name) => columns.has(name));
        const sql = `INSERT OR IGNORE INTO ${table} (${names.join(', ')}) VALUES (${names.map(() => '?').join(', ')})`;
        inserted += this.#db.prepare(sql).run(...names.map((name) => row[name])).changes;
      }
    })();
    return inserted;
  }

  /** The schema version (PRAGMA user_version). */
  get schemaVersion(): number {
    return this.#db.pragma('user_version', { simple: true }) as number;
  }

  /** The synchronous setting in force: 2 = FULL, 1 = NORMAL. */
  get synchronous(): number {
    return this.#db.pragma('synchronous', { simple: true }) as number;
  }

  get open(): boolean {
    return this.#db.open;
  }

  /** fsyncs the WAL now (what the background timer does); resolves when it is on disk. */
  async syncWal(): Promise<void> {
    this.#walSync = this.#walSync.then(() => syncWal(`${this.path}-wal`));
    await this.#walSync;
  }

  close(): void {
    clearInterval(this.#walTimer);
    if (this.#db.open) this.#db.close();
  }
}

/**
 * fsync of the WAL file through a descriptor of our own, on the libuv thread pool: the kernel flushes the file's
 * dirty pages whichever descriptor wrote them. A missing WAL (nothing written yet, or closed) is fine.
 */
async function syncWal(walPath: string): Promise<void> {
  try {
    const handle = await open(walPath, 'r');
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  } catch {
    // Nothing to flush, or the disk is failing: SQLite reports that on the next write.
  }
}
