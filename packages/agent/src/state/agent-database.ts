import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import SqliteDatabase, { type Database } from 'better-sqlite3';
import { CaptureQueueRepository } from './capture-queue-repository.js';
import { LoadedModelsRepository } from './loaded-models-repository.js';
import { migrate } from './migrations.js';
import { ModelCountersRepository } from './model-counters-repository.js';
import { UploadLedgerRepository } from './upload-ledger-repository.js';

/** The database file's name under `sagemaker_edge_local_data_root_path`. */
export const AGENT_DATABASE_FILE = 'agent.db';

export function agentDatabasePath(localDataRootPath: string): string {
  return join(localDataRootPath, AGENT_DATABASE_FILE);
}

export interface OpenAgentDatabaseOptions {
  /** The database file; created (with its folder) when missing. */
  path: string;
  /**
   * FULL (the default): every commit is fsynced before it returns, so what the agent acknowledged survives a
   * power cut as well as a crash. NORMAL: in WAL mode a commit survives the agent being killed, but the last
   * commits before a power cut or kernel crash may be rolled back; faster on slow storage (SD cards).
   */
  synchronous?: 'FULL' | 'NORMAL';
  /** How long a write waits for another connection's lock (tools reading the database). Default 5 s. */
  busyTimeoutMs?: number;
}

/**
 * The agent's local database (SQLite in WAL mode): the capture queue and statuses, the models to restore after a
 * restart, per-model counters, the periodic-upload ledger. One per agent; repositories share its connection.
 */
export class AgentDatabase {
  readonly path: string;
  readonly captureQueue: CaptureQueueRepository;
  readonly loadedModels: LoadedModelsRepository;
  readonly modelCounters: ModelCountersRepository;
  readonly uploadLedger: UploadLedgerRepository;
  readonly #db: Database;

  private constructor(path: string, db: Database) {
    this.path = path;
    this.#db = db;
    this.captureQueue = new CaptureQueueRepository(db);
    this.loadedModels = new LoadedModelsRepository(db);
    this.modelCounters = new ModelCountersRepository(db);
    this.uploadLedger = new UploadLedgerRepository(db);
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
      db.pragma(`synchronous = ${options.synchronous ?? 'FULL'}`);
      // Keep the WAL from staying large after a burst of big captures.
      db.pragma('journal_size_limit = 67108864');
      migrate(db);
      return new AgentDatabase(options.path, db);
    } catch (error) {
      db.close();
      throw new Error(`cannot use the agent database ${options.path}: ${(error as Error).message}`, {
        cause: error,
      });
    }
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

  close(): void {
    if (this.#db.open) this.#db.close();
  }
}
