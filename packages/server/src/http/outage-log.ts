import type { FastifyBaseLogger } from 'fastify';
import { BlobStoreUnavailableError } from '../blobs/index.js';

/** How often an outage of one component is logged while it lasts. */
export const OUTAGE_LOG_INTERVAL_MS = 60_000;

/**
 * Logs requests failed by an outage (the database or a blob store cannot be used): the first per component,
 * then at most one per interval, with the number left out since. Every request of every device retrying
 * during an outage would otherwise be a warn line with a stack (1000 devices every 5 s: 200 a second).
 * One instance is shared by all of a server's listeners.
 */
export class OutageLog {
  readonly #now: () => number;
  readonly #intervalMs: number;
  readonly #components = new Map<string, { loggedAt: number; leftOut: number }>();

  constructor(options: { now?: () => number; intervalMs?: number } = {}) {
    this.#now = options.now ?? Date.now;
    this.#intervalMs = options.intervalMs ?? OUTAGE_LOG_INTERVAL_MS;
  }

  /**
   * Logs `error` (the outage's cause) with `message` unless `component` was logged within the interval. A store
   * that refuses the server's own credentials or has lost its bucket is the operator's to fix: at error.
   */
  log(logger: FastifyBaseLogger, component: string, error: unknown, message: string): void {
    const at = this.#now();
    const seen = this.#components.get(component);
    if (seen !== undefined && at - seen.loggedAt < this.#intervalMs) {
      seen.leftOut += 1;
      return;
    }
    this.#components.set(component, { loggedAt: at, leftOut: 0 });
    const operatorMistake = error instanceof BlobStoreUnavailableError && error.problem !== 'unreachable';
    logger[operatorMistake ? 'error' : 'warn'](
      {
        err: error,
        component,
        ...(seen !== undefined && seen.leftOut > 0 && { requestsNotLogged: seen.leftOut }),
      },
      `${message}${seen !== undefined && seen.leftOut > 0 ? ` (${seen.leftOut} more such failures since the last line, not logged)` : ''} (logged at most once a minute per component)`,
    );
  }
}
