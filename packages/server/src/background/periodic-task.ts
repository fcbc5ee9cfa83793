import type { Logger } from 'pino';
import { RepeatedFailureLog } from './repeated-failure-log.js';

/** A task running on a timer until stopped. */
export interface PeriodicTask {
  /** Stops the timer and waits for a run under way. */
  stop(): Promise<void>;
}

/**
 * Runs `run` every `intervalMs` until stopped. A run never overlaps the last (a tick that finds one under way
 * is skipped), so a slow database cannot pile runs up; a failed run is logged as `failureMessage` (the first
 * of a run of failures, then at most once a minute: RepeatedFailureLog) and the next tick tries again. The timer
 * does not keep the process alive.
 */
export function startPeriodicTask(
  run: () => Promise<void>,
  options: {
    intervalMs: number;
    logger: Logger;
    failureMessage: string;
    /** The failure log's clock (ms); injected by tests. */
    now?: () => number;
  },
): PeriodicTask {
  const failures = new RepeatedFailureLog({
    logger: options.logger,
    message: options.failureMessage,
    ...(options.now && { now: options.now }),
  });
  let running: Promise<void> | undefined;
  const timer = setInterval(() => {
    if (running !== undefined) return;
    running = run()
      .then(
        () => failures.succeeded(),
        (error: unknown) => failures.failed(error),
      )
      .finally(() => {
        running = undefined;
      });
  }, options.intervalMs);
  timer.unref();
  return {
    stop: async () => {
      clearInterval(timer);
      await running;
    },
  };
}
