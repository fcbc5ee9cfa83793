import { BlobStoreUnavailableError } from '../blobs/blob-store.js';
import { DatabaseUnavailableError } from '../storage/database.js';
import { DomainError } from './domain-error.js';

/** How long a caller waits before trying again after an outage of the database or the blob store. */
const RETRY_AFTER_SECONDS = 5;

// SQLite's file held by another writer past busy_timeout (PostgreSQL's outages arrive as DatabaseUnavailableError).
const isSqliteBusy = (error: unknown) => (error as { code?: unknown } | undefined)?.code === 'SQLITE_BUSY';

/**
 * An outage of something the server depends on, as the answer a caller gets: 503 DependencyUnavailable naming
 * the component as /readyz does (`database`, `blobStore`), so that an operator knows it is not their request.
 * The cause (hosts, buckets) stays in the server's log, as /readyz keeps it. Undefined for any other error.
 */
export function dependencyUnavailableOf(error: unknown): DomainError | undefined {
  const component =
    error instanceof DatabaseUnavailableError || isSqliteBusy(error)
      ? 'database'
      : error instanceof BlobStoreUnavailableError
        ? 'blobStore'
        : undefined;
  if (component === undefined) return undefined;
  const what = component === 'database' ? "the server's database" : "the server's blob store";
  return new DomainError(
    'DependencyUnavailable',
    `${what} cannot be used now; try again later (GET /readyz names the failing dependency, the server's log says why)`,
    { component, retryAfterSeconds: RETRY_AFTER_SECONDS },
  );
}
