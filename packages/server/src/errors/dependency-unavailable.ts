import { BlobStoreUnavailableError } from '../blobs/blob-store.js';
import {
  DatabaseUnavailableError,
  damagedPostgresCodeOf,
  diskFaultCodeOf,
  isDamagedDatabaseError,
} from '../storage/database.js';
import { DomainError } from './domain-error.js';

/** How long a caller waits before trying again after an outage of the database or the blob store. */
const RETRY_AFTER_SECONDS = 5;

/** A component of the server's state, as /readyz names it. */
export type StateComponent = 'database' | 'blobStore';

// SQLite's file held by another writer past busy_timeout (PostgreSQL's outages arrive as DatabaseUnavailableError).
export const isSqliteBusy = (error: unknown) =>
  (error as { code?: unknown } | undefined)?.code === 'SQLITE_BUSY';

/**
 * The component a full or failing disk failed, and how: the database's own codes (SQLITE_FULL, SQLITE_IOERR*,
 * PostgreSQL's disk_full) are the database's; a file system error (ENOSPC, EDQUOT, EIO) comes from the files
 * the server writes itself, the blob folder and the uploads' temporary files beside it.
 */
export function diskFaultComponentOf(
  error: unknown,
): { component: StateComponent; fault: 'full' | 'io' } | undefined {
  const disk = diskFaultCodeOf(error);
  if (disk === undefined) return undefined;
  // Decided by the code found (through any wrapper), not by the outermost error's own code.
  const database =
    error instanceof DatabaseUnavailableError || disk.code.startsWith('SQLITE_') || disk.code === '53100';
  return { component: database ? 'database' : 'blobStore', fault: disk.fault };
}

/**
 * An outage of something the server depends on, as the answer a caller gets: 503 DependencyUnavailable naming
 * the component as /readyz does (`database`, `blobStore`), so that an operator knows it is not their request.
 * A full or failing disk is such an outage too (503 rather than WebDAV's 507: every client, the agent's
 * included, already waits Retry-After and tries again on a 503, and the condition passes once space is freed);
 * its answer says so (`details.cause` `diskFull` / `diskError`), as it names no host or path. So is a SQLite
 * file found damaged while serving (`databaseDamaged`): the server gives it up and exits to be restarted, and
 * its start check then refuses the file until a person restores a backup. So is PostgreSQL reporting damaged
 * data or an internal error (SQLSTATE class XX: XX001 data corrupted, XX002 index corrupted, XX000), also
 * `databaseDamaged`, but the server goes on: it does not own PostgreSQL's files (its operator repairs them, or
 * restores PostgreSQL's own backup), the damage may be one index or table while the rest serves, other
 * replicas share the database, and a restart would find it again.
 * The cause (hosts, buckets, files) stays in the server's log, as /readyz keeps it. Undefined for any other error.
 */
export function dependencyUnavailableOf(error: unknown): DomainError | undefined {
  const disk = diskFaultComponentOf(error);
  const postgresDamage = disk === undefined ? damagedPostgresCodeOf(error) : undefined;
  const component: StateComponent | undefined =
    disk?.component ??
    (error instanceof DatabaseUnavailableError || isSqliteBusy(error) || postgresDamage !== undefined
      ? 'database'
      : error instanceof BlobStoreUnavailableError
        ? 'blobStore'
        : undefined);
  if (component === undefined) return undefined;
  const what = component === 'database' ? "the server's database" : "the server's blob store";
  const damaged =
    component === 'database' &&
    disk === undefined &&
    (postgresDamage !== undefined || isDamagedDatabaseError(error));
  const cause = damaged
    ? 'databaseDamaged'
    : disk === undefined
      ? undefined
      : disk.fault === 'full'
        ? 'diskFull'
        : 'diskError';
  const why =
    postgresDamage !== undefined
      ? ` (PostgreSQL reports damaged data or an internal error, SQLSTATE ${postgresDamage}: an operator must repair ` +
        "it or restore PostgreSQL's backup, see docs/operations.md)"
      : cause === 'databaseDamaged'
        ? ' (its file is damaged: an operator must restore a backup)'
        : cause === 'diskFull'
          ? ": the server's disk is full (an operator must free space)"
          : cause === 'diskError'
            ? ": the server's disk failed a write (an I/O error)"
            : '';
  return new DomainError(
    'DependencyUnavailable',
    `${what} cannot be used now${why}; try again later (GET /readyz names the failing dependency, the server's log says why)`,
    {
      component,
      ...(cause !== undefined && { cause }),
      retryAfterSeconds: RETRY_AFTER_SECONDS,
    },
  );
}
