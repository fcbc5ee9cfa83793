import { realpathSync } from 'node:fs';
import path from 'node:path';
import SqliteDatabase from 'better-sqlite3';
import { FolderInUseError, FolderLock, type LockedFolderKind } from '@edgefleet/core';

/** What `serve` exits with when another process holds its SQLite database (as the agent does for its data root). */
export const DATABASE_IN_USE_EXIT_CODE = 4;

/** Another edgefleet-server (or a restore) holds the SQLite database: a person must stop it, or use PostgreSQL. */
export class DatabaseInUseError extends Error {
  override readonly name = 'DatabaseInUseError';
  readonly exitCode = DATABASE_IN_USE_EXIT_CODE;
  constructor(
    readonly file: string,
    /** The holder's pid, when the kernel says (Linux /proc/locks). */
    readonly holderPid: number | undefined,
    options?: { cause?: unknown },
  ) {
    super(
      `database ${file} is in use by another edgefleet-server` +
        `${holderPid === undefined ? '' : ` (pid ${holderPid})`}; SQLite serves one process: stop that server, ` +
        'or use PostgreSQL (--database, EDGEFLEET_DATABASE=postgres://…) for replicas',
      options,
    );
  }
}

/** The lock file beside a SQLite database: `<file>.lock` (SQLite's own files are `-wal`, `-shm`, `-journal`). */
export function sqliteLockFileOf(file: string): string {
  return `${file}.lock`;
}

/**
 * Takes the one-process lock on a SQLite state database, for a `serve` (and a `restore`) to hold while it runs:
 * a FolderLock on `<file>.lock`, so the kernel drops it whenever the process ends (SIGKILL included). The
 * database itself is not locked: `backup`, `init` and `token` open it beside a running server, as SQLite's WAL
 * mode allows. Throws DatabaseInUseError when another process holds it, the FolderLockError (which names the
 * file and what was expected) when it cannot be taken.
 */
export function lockSqliteDatabase(file: string, options: { procLocksPath?: string } = {}): FolderLock {
  const real = realFileOf(file);
  const kind: LockedFolderKind = {
    label: 'the SQLite database folder',
    configKey: 'database (--database, EDGEFLEET_DATABASE; default <data-dir>/state.db)',
    logField: 'database',
    onePerFolder: 'SQLite serves one process',
    ownFolder: 'a database of its own',
    program: 'edgefleet-server',
    holder: 'server',
    lockFileName: path.basename(sqliteLockFileOf(real)),
    // As the data dir is made (start-server.ts openStores).
    folderMode: 0o700,
  };
  try {
    return FolderLock.acquire(path.dirname(real), kind, {
      ...options,
      // timeout 0: a held lock is reported at once instead of being waited for.
      openDatabase: (lockFile) => new SqliteDatabase(lockFile, { timeout: 0 }),
    });
  } catch (error) {
    if (error instanceof FolderInUseError)
      throw new DatabaseInUseError(file, error.holderPid, { cause: error });
    throw error;
  }
}

/**
 * The database file as the kernel finds it (links resolved: a link to state.db and state.db itself are one
 * database, so they take one lock), or, before it exists, in its folder's real path; the path as given when
 * neither exists yet (the lock creates the folder).
 */
function realFileOf(file: string): string {
  try {
    return realpathSync(file);
  } catch {
    try {
      return path.join(realpathSync(path.dirname(file)), path.basename(file));
    } catch {
      return file;
    }
  }
}
