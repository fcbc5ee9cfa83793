import type { Logger } from 'pino';

/** A task running on a timer until stopped. */
export interface PeriodicTask {
  /** Stops the timer and waits for a run under way. */
  stop(): Promise<void>;
}

/**
 * Runs `run` every `intervalMs` until stopped. A run never overlaps the last (a tick that finds one under way
 * is skipped), so a slow database cannot pile runs up; a failed run is logged as `failureMessage` and the
 * next tick tries again. The timer does not keep the process alive.
 */
export function startPeriodicTask(
  run: () => Promise<void>,
  options: { intervalMs: number; logger: Logger; failureMessage: string },
): PeriodicTask {
  let running: Promise<void> | undefined;
  const timer = setInterval(() => {
    if (running !== undefined) return;
    running = run()
      .catch((error: unknown) => options.logger.warn({ err: error }, options.failureMessage))
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
