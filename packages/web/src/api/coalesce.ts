/** The clock and timers `coalesced` uses; the page's own by default, a test's stepped ones in tests. */
export interface Timers {
  now(): number;
  setTimeout(run: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

const pageTimers: Timers = {
  now: () => Date.now(),
  setTimeout: (run, ms) => setTimeout(run, ms),
  clearTimeout: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
};

/**
 * Runs `run` at most once per `intervalMs`: a trigger after a quiet interval runs it at once; triggers within
 * the interval after a run are folded into one run at the interval's end, so the last change is never missed.
 * (With hundreds of devices heartbeating, the change feed names `devices` every ~2 s; a view that reloads a
 * report per fleet on each would send tens of requests a second per open tab.)
 */
export function coalesced(
  run: () => void,
  intervalMs: number,
  timers: Timers = pageTimers,
): { trigger(): void; now(): void; cancel(): void } {
  let lastRun = Number.NEGATIVE_INFINITY;
  let pending: unknown;
  let scheduled = false;
  const fire = () => {
    scheduled = false;
    lastRun = timers.now();
    run();
  };
  return {
    trigger() {
      if (scheduled) return;
      const wait = lastRun + intervalMs - timers.now();
      if (wait <= 0) {
        fire();
        return;
      }
      scheduled = true;
      pending = timers.setTimeout(fire, wait);
    },
    /** Runs it now, in place of any run pending (a reload everything asks for, such as a new stream's). */
    now() {
      if (scheduled) timers.clearTimeout(pending);
      fire();
    },
    cancel() {
      if (scheduled) timers.clearTimeout(pending);
      scheduled = false;
    },
  };
}
