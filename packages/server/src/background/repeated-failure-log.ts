import type { Logger } from 'pino';
import { LineLimiter, REPEATED_LINE_INTERVAL_MS } from '../logging/line-limiter.js';

/** How often a background worker's repeated failure is logged while it lasts (as requests': OUTAGE_LOG_INTERVAL_MS). */
export const REPEATED_FAILURE_LOG_INTERVAL_MS = REPEATED_LINE_INTERVAL_MS;

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
 * at most one a minute while failures go on, with the number left out since (the limit: LineLimiter, as
 * OutageLog's). During a database outage a worker polling every second would otherwise write a warn line with a
 * stack each second (an hour: 3,600 identical stacks per replica). A success ends the run of failures: the next
 * failure is logged at once, and after a run of more than one failure the recovery is logged, so the journal
 * shows when the outage ended. Only the first failure of each minute is logged: a second, different cause within
 * that minute is counted, not shown.
 */
export class RepeatedFailureLog {
  readonly #options: RepeatedFailureLogOptions;
  readonly #lines: LineLimiter;
  /** Failures in the current run (since the last success). */
  #failures = 0;

  constructor(options: RepeatedFailureLogOptions) {
    this.#options = options;
    this.#lines = new LineLimiter({
      ...(options.now !== undefined && { now: options.now }),
      intervalMs: options.intervalMs ?? REPEATED_FAILURE_LOG_INTERVAL_MS,
    });
  }

  failed(error: unknown): void {
    this.#failures += 1;
    const admitted = this.#lines.admit('failure');
    if (admitted === undefined) return;
    const { leftOut, first } = admitted;
    this.#options.logger.warn(
      { err: error, ...(leftOut > 0 && { failuresNotLogged: leftOut }) },
      first
        ? `${this.#options.message} (repeats logged at most once a minute)`
        : `${this.#options.message} (still failing; ${leftOut} more such failure(s) since the last line, not logged)`,
    );
  }

  succeeded(): void {
    const failures = this.#failures;
    if (failures === 0) return;
    this.#failures = 0;
    this.#lines.forget('failure');
    if (failures > 1) {
      this.#options.logger.info(
        { failures },
        `no longer failing after ${failures} failures in a row: ${this.#options.message}`,
      );
    }
  }
}
