import { randomBytes } from 'node:crypto';
import { access, chmod, mkdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import SqliteDatabase from 'better-sqlite3';
import type { FolderLock } from '@edgefleet/core';
import { serverVersion } from '../server/version.js';
import {
  DatabaseInUseError,
  lockSqliteDatabase,
  newerDatabaseWords,
  unknownMigrations,
} from '../storage/index.js';

export interface BackupResult {
  file: string;
  bytes: number;
  /** The schema migrations the backup carries (its version). */
  migrations: string[];
}

/** Why a backup or restore cannot go ahead; the message says what was wrong and what was expected. */
export class BackupError extends Error {
  override readonly name = 'BackupError';
}

async function exists(file: string): Promise<boolean> {
  return access(file).then(
    () => true,
    () => false,
  );
}

/** A sibling of `file` to write into and rename over it, so `file` is never seen half written. */
function partialName(file: string): string {
  return path.join(path.dirname(file), `.${path.basename(file)}.${randomBytes(4).toString('hex')}.partial`);
}

/**
 * Checks that `file` is a sound EdgeFleet state database this build can run: SQLite's integrity check passes
 * and every migration it records is one this build knows. Returns its migrations.
 */
export function inspectStateFile(file: string): string[] {
  let sqlite: SqliteDatabase.Database;
  try {
    sqlite = new SqliteDatabase(file, { readonly: true, fileMustExist: true });
  } catch (error) {
    throw new BackupError(`${file}: cannot be opened as SQLite (${(error as Error).message})`);
  }
  try {
    let integrity: unknown;
    try {
      integrity = sqlite.pragma('integrity_check', { simple: true });
    } catch (error) {
      throw new BackupError(`${file}: not a SQLite database (${(error as Error).message})`);
    }
    if (integrity !== 'ok')
      throw new BackupError(`${file}: SQLite integrity check failed: ${String(integrity)}`);
    const table = sqlite
      .prepare("select name from sqlite_master where type = 'table' and name = 'edgefleet_migrations'")
      .get();
    if (table === undefined) {
      throw new BackupError(`${file}: not an EdgeFleet state database (no edgefleet_migrations table)`);
    }
    const applied = (
      sqlite.prepare('select name from edgefleet_migrations order by name').all() as { name: string }[]
    ).map((row) => row.name);
    const unknown = unknownMigrations(applied);
    if (unknown.length > 0) {
      throw new BackupError(
        `${file}: ${newerDatabaseWords(unknown, serverVersion())}; restore it with that version`,
      );
    }
    return applied;
  } finally {
    sqlite.close();
  }
}

/**
 * An online, consistent copy of a SQLite state database while the server keeps running: `VACUUM INTO` reads
 * one snapshot (a single read transaction, so writes committed during the copy are either all in it or not
 * at all) and writes a compact file. The copy lands under a temporary name and is renamed to `out` once
 * checked, so `out` is never a half-written backup. An existing `out` is refused.
 */
export async function backupSqlite(source: string, out: string): Promise<BackupResult> {
  const target = path.resolve(out);
  if (await exists(target))
    throw new BackupError(`${target} already exists; expected a new file name for --out`);
  if (!(await exists(source)))
    throw new BackupError(`no state database at ${source}; expected the server's SQLite file`);
  if (!(await exists(path.dirname(target)))) {
    throw new BackupError(`${path.dirname(target)} does not exist; expected --out in an existing folder`);
  }
  const partial = partialName(target);
  try {
    const sqlite = new SqliteDatabase(source, { fileMustExist: true });
    try {
      sqlite.pragma('busy_timeout = 5000');
      sqlite.prepare('vacuum into ?').run(partial);
    } finally {
      sqlite.close();
    }
    const migrations = inspectStateFile(partial);
    // The state database lives in a private folder; its copy may land anywhere: owner only, like the original.
    await chmod(partial, 0o600);
    await rename(partial, target);
    return { file: target, bytes: (await stat(target)).size, migrations };
  } finally {
    await rm(partial, { force: true });
  }
}

export interface RestoreResult {
  file: string;
  migrations: string[];
  /** Where the database it replaced was kept, if there was one. */
  previous?: string;
}

/**
 * Puts a backup in place of the state database. Run it with the server stopped. The backup is checked
 * first; the database it replaces is checkpointed (its WAL folded in) and kept next to it as
 * `<file>.before-restore-<time>`, so a restore loses nothing. Migrations newer than the backup run when the
 * server next starts.
 */
export async function restoreSqlite(
  backup: string,
  target: string,
  now = new Date(),
): Promise<RestoreResult> {
  const from = path.resolve(backup);
  const migrations = inspectStateFile(from);
  await mkdir(path.dirname(target), { recursive: true, mode: 0o700 });
  // Held through the swap, so a server cannot start on the database half-way through it.
  const lock = lockForRestore(target);
  const partial = partialName(target);
  let previous: string | undefined;
  try {
    const copy = new SqliteDatabase(from, { readonly: true, fileMustExist: true });
    try {
      await copy.backup(partial);
    } finally {
      copy.close();
    }
    if (await exists(target)) {
      const current = new SqliteDatabase(target, { fileMustExist: true });
      try {
        current.pragma('busy_timeout = 0');
        // Leaving WAL mode needs the only connection: it fails while a server has the database open.
        current.pragma('wal_checkpoint(TRUNCATE)');
        const mode = current.pragma('journal_mode = DELETE', { simple: true });
        if (mode !== 'delete') throw new Error(`journal mode stayed ${String(mode)}`);
      } catch (error) {
        throw new BackupError(
          `${target} is in use (${(error as Error).message}); stop edgefleet-server before restoring`,
        );
      } finally {
        current.close();
      }
      previous = `${target}.before-restore-${now.toISOString().replace(/[:.]/g, '-')}`;
      await rename(target, previous);
    }
    await rm(`${target}-wal`, { force: true });
    await rm(`${target}-shm`, { force: true });
    await rename(partial, target);
    return { file: target, migrations, ...(previous !== undefined ? { previous } : {}) };
  } finally {
    await rm(partial, { force: true });
    lock.release();
  }
}

/** The lock `serve` holds on the database (a running server's pid named), refused as a restore error. */
function lockForRestore(target: string): FolderLock {
  try {
    return lockSqliteDatabase(target);
  } catch (error) {
    if (!(error instanceof DatabaseInUseError)) throw error;
    const pid = error.holderPid === undefined ? '' : ` (pid ${error.holderPid})`;
    throw new BackupError(
      `${target} is in use by edgefleet-server${pid}; stop edgefleet-server before restoring`,
      {
        cause: error,
      },
    );
  }
}
