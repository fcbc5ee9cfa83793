import type { FastifyBaseLogger } from 'fastify';
import { BlobStoreUnavailableError } from '../blobs/index.js';
import { LineLimiter, REPEATED_LINE_INTERVAL_MS } from '../logging/line-limiter.js';

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

  constructor(options: { now?: () => number; intervalMs?: number } = {}) {
    this.#lines = new LineLimiter(options);
  }

  /**
   * Logs `error` (the outage's cause) with `message` unless `component` was logged within the interval. A store
   * that refuses the server's own credentials or has lost its bucket is the operator's to fix: at error.
   */
  log(logger: FastifyBaseLogger, component: string, error: unknown, message: string): void {
    const admitted = this.#lines.admit(component);
    if (admitted === undefined) return;
    const { leftOut } = admitted;
    const operatorMistake = error instanceof BlobStoreUnavailableError && error.problem !== 'unreachable';
    logger[operatorMistake ? 'error' : 'warn'](
      { err: error, component, ...(leftOut > 0 && { requestsNotLogged: leftOut }) },
      `${message}${leftOut > 0 ? ` (${leftOut} more such failures since the last line, not logged)` : ''} (logged at most once a minute per component)`,
    );
  }
}
