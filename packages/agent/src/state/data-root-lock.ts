import { FolderLock, type LockedFolderKind } from '@edgefleet/core';
import SqliteDatabase, { type Database } from 'better-sqlite3';

// The lock itself (FolderLock) is shared with the server's SQLite database lock: it lives in @edgefleet/core.
export {
  FolderInUseError,
  FolderLock,
  FolderLockError,
  lockHolder,
  lockHolderPid,
  type LockedFolderKind,
  type NestedFolder,
} from '@edgefleet/core';

/** The lock file's name under `sagemaker_edge_local_data_root_path`. */
export const DATA_ROOT_LOCK_FILE = 'agent.lock';

export interface DataRootLockOptions {
  /** Where the kernel lists file locks (default /proc/locks); read only to name the holder's pid. */
  procLocksPath?: string;
  /** Opens the lock file as a SQLite database (default better-sqlite3, no busy wait). */
  openDatabase?: (path: string) => Database;
}
export type FolderLockOptions = DataRootLockOptions;

/** Takes an agent's folder lock (see FolderLock.acquire), opening the lock file with better-sqlite3 unless told. */
export function acquireAgentFolderLock(
  folder: string,
  kind: LockedFolderKind,
  options: FolderLockOptions = {},
): FolderLock {
  return FolderLock.acquire(folder, kind, {
    ...options,
    openDatabase: options.openDatabase ?? openLockDatabase,
  });
}

export const DATA_ROOT_FOLDER: LockedFolderKind = {
  label: 'the data root',
  configKey: 'sagemaker_edge_local_data_root_path',
  logField: 'dataRoot',
  onePerFolder: 'one agent per data root',
  ownFolder: 'a data root of its own',
  program: 'edgefleet-agent',
  holder: 'agent',
  lockFileName: DATA_ROOT_LOCK_FILE,
  folderMode: 0o700,
};

/**
 * One agent per data root (agent.db, its payload files, deployments, the capture spool): a FolderLock on
 * `<data root>/agent.lock`, the data root made 0700. Readers of agent.db (tools, tests, database recovery) are not
 * affected.
 */
export class DataRootLock {
  readonly #lock: FolderLock;

  private constructor(lock: FolderLock) {
    this.#lock = lock;
  }

  /** Takes the lock (see FolderLock.acquire): FolderInUseError when held elsewhere, else FolderLockError. */
  static acquire(dataRoot: string, options: DataRootLockOptions = {}): DataRootLock {
    return new DataRootLock(acquireAgentFolderLock(dataRoot, DATA_ROOT_FOLDER, options));
  }

  get dataRoot(): string {
    return this.#lock.folder;
  }

  /** The lock file. */
  get path(): string {
    return this.#lock.path;
  }

  get held(): boolean {
    return this.#lock.held;
  }

  release(): void {
    this.#lock.release();
  }
}

// timeout 0: a held lock is reported at once instead of being waited for.
function openLockDatabase(path: string): Database {
  return new SqliteDatabase(path, { timeout: 0 });
}
