/**
 * A sleep that `wake()` ends early: a polling loop waits out its interval, and stopping the loop wakes it
 * at once instead of waiting for the timer.
 */
export interface InterruptibleSleep {
  sleep(ms: number): Promise<void>;
  /** Ends the sleep in progress, if any (a later sleep is not affected). */
  wake(): void;
}

export function interruptibleSleep(): InterruptibleSleep {
  let wake: (() => void) | undefined;
  return {
    sleep: (ms) =>
      new Promise<void>((resolve) => {
        const timer = setTimeout(done, ms);
        function done() {
          clearTimeout(timer);
          wake = undefined;
          resolve();
        }
        wake = done;
      }),
    wake: () => wake?.(),
  };
}
