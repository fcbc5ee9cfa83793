import { setTimeout as sleep } from 'node:timers/promises';

/**
 * Waits `ms`, or less when `signal` aborts: then it resolves at once (it never rejects). A polling loop waits
 * out its interval with it, and stopping the loop (aborting) ends the wait instead of waiting for the timer.
 */
export function sleepUnlessAborted(ms: number, signal: AbortSignal): Promise<void> {
  return sleep(ms, undefined, { signal }).catch(() => {});
}
