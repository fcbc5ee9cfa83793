import type { Logger } from 'pino';

/** How often a background worker's repeated failure is logged while it lasts (as requests': OUTAGE_LOG_INTERVAL_MS). */
export const REPEATED_FAILURE_LOG_INTERVAL_MS = 60_000;

export interface RepeatedFailureLogOptions {
  logger: Logger;
  /** The failure's line, e.g. 'packaging worker: could not look for jobs; will retry'. */
  message: string;
  /** The clock (ms); injected by tests. */
  now?: () => number;
  intervalMs?: number;
}

/**
 * The failure lines of one background worker that retries on a timer (a poll, a sweep): the first failure, then
 * at most one a minute while failures go on, with the number left out since. During a database outage a
 * worker polling every second would otherwise write a warn line with a stack each second (an hour: 3,600
 * identical stacks per replica). A success ends the run of failures: the next failure is logged at once, and
 * the recovery is logged when failures were left out, so the journal shows when the outage ended.
 */
export class RepeatedFailureLog {
  readonly #options: RepeatedFailureLogOptions;
  readonly #intervalMs: number;
  #failing: { since: number; loggedAt: number; failures: number; leftOut: number } | undefined;

  constructor(options: RepeatedFailureLogOptions) {
    this.#options = options;
    this.#intervalMs = options.intervalMs ?? REPEATED_FAILURE_LOG_INTERVAL_MS;
  }

  failed(error: unknown): void {
    const at = (this.#options.now ?? Date.now)();
    const failing = this.#failing;
    if (failing !== undefined && at - failing.loggedAt < this.#intervalMs) {
      failing.failures += 1;
      failing.leftOut += 1;
      return;
    }
    const leftOut = failing?.leftOut ?? 0;
    this.#failing = {
      since: failing?.since ?? at,
      loggedAt: at,
      failures: (failing?.failures ?? 0) + 1,
      leftOut: 0,
    };
    this.#options.logger.warn(
      { err: error, ...(leftOut > 0 && { failuresNotLogged: leftOut }) },
      failing === undefined
        ? `${this.#options.message} (repeats logged at most once a minute)`
        : `${this.#options.message} (still failing; ${leftOut} more such failure(s) since the last line, not logged)`,
    );
  }

  succeeded(): void {
    const failing = this.#failing;
    if (failing === undefined) return;
    this.#failing = undefined;
    if (failing.failures > 1) {
      this.#options.logger.info(
        { failures: failing.failures },
        `no longer failing after ${failing.failures} failures in a row: ${this.#options.message}`,
      );
    }
  }
}
