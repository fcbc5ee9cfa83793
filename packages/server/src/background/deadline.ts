/** setTimeout's longest delay (2^31 − 1 ms, about 24.8 days): Node runs a longer one after 1 ms. */
const MAX_TIMER_MS = 2 ** 31 - 1;

export interface Deadline {
  clear(): void;
}

/**
 * Calls `onDeadline` once at `at` (epoch ms, by `now`), however far away: a deadline beyond setTimeout's limit is
 * waited for in steps. The timers do not keep the process alive.
 */
export function armDeadline(at: number, onDeadline: () => void, now: () => number = Date.now): Deadline {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const arm = () => {
    const left = at - now();
    timer = setTimeout(left > MAX_TIMER_MS ? arm : onDeadline, Math.max(0, Math.min(left, MAX_TIMER_MS)));
    timer.unref();
  };
  arm();
  return { clear: () => clearTimeout(timer) };
}
