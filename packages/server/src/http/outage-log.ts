import type { FastifyBaseLogger } from 'fastify';
import { BlobStoreUnavailableError } from '../blobs/index.js';
import { diskFaultComponentOf } from '../errors/dependency-unavailable.js';
import { LineLimiter, REPEATED_LINE_INTERVAL_MS } from '../logging/line-limiter.js';
import { damagedPostgresCodeOf } from '../storage/index.js';
import type { RecentDiskFaults } from './recent-disk-faults.js';

/** How often an outage of one component is logged while it lasts. */
export const OUTAGE_LOG_INTERVAL_MS = REPEATED_LINE_INTERVAL_MS;

/**
 * Logs requests failed by an outage (the database or a blob store cannot be used): the first per component,
 * then at most one per interval, with the number left out since. Every request of every device retrying
 * during an outage would otherwise be a warn line with a stack (1000 devices every 5 s: 200 a second).
 * One instance is shared by all of a server's listeners (the limit: LineLimiter).
 */
export class OutageLog {
  readonly #lines: LineLimiter;
  readonly #diskFaults: RecentDiskFaults | undefined;
  readonly #onOutage: ((component: string, error: unknown) => void) | undefined;

  /**
   * `diskFaults` hears every outage a full or failing disk caused, logged or not, for /readyz; `onOutage`
   * every outage, logged or not (metrics/: errors by kind).
   */
  constructor(
    options: {
      now?: () => number;
      intervalMs?: number;
      diskFaults?: RecentDiskFaults;
      onOutage?: (component: string, error: unknown) => void;
    } = {},
  ) {
    this.#lines = new LineLimiter(options);
    this.#diskFaults = options.diskFaults;
    this.#onOutage = options.onOutage;
  }

  /**
   * Logs `error` (the outage's cause) with `message` unless `component` was logged within the interval. A store
   * that refuses the server's own credentials or has lost its bucket is the operator's to fix: at error; so is
   * a full or failing disk, and PostgreSQL's damage (SQLSTATE class XX).
   */
  log(logger: FastifyBaseLogger, component: string, error: unknown, message: string): void {
    this.#diskFaults?.record(error);
    this.#onOutage?.(component, error);
    const admitted = this.#lines.admit(component);
    if (admitted === undefined) return;
    const { leftOut } = admitted;
    const operatorMistake =
      (error instanceof BlobStoreUnavailableError && error.problem !== 'unreachable') ||
      diskFaultComponentOf(error) !== undefined ||
      damagedPostgresCodeOf(error) !== undefined;
    logger[operatorMistake ? 'error' : 'warn'](
      { err: error, component, ...(leftOut > 0 && { requestsNotLogged: leftOut }) },
      `${message}${leftOut > 0 ? ` (${leftOut} more such failures since the last line, not logged)` : ''} (logged at most once a minute per component)`,
    );
  }
}
