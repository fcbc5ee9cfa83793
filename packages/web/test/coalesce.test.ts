/**
 * The console's live reloads at most once per interval (S5: an open Overview re-fetched every fleet's report
 * on each `devices` change, about every 2 s with 300 devices heartbeating). A stepped clock, not wall time.
 */
import { describe, expect, it } from 'vitest';
import { coalesced, type Timers } from '../src/api/coalesce.js';

/** Timers whose clock moves only when the test says. */
function steppedTimers(): Timers & { advance(ms: number): void } {
  let now = 0;
  let queue: { at: number; run: () => void; id: number }[] = [];
  let ids = 0;
  return {
    now: () => now,
    setTimeout(run, ms) {
      ids += 1;
      queue.push({ at: now + ms, run, id: ids });
      return ids;
    },
    clearTimeout(handle) {
      queue = queue.filter((t) => t.id !== handle);
    },
    advance(ms) {
      const until = now + ms;
      for (;;) {
        const next = queue.filter((t) => t.at <= until).sort((a, b) => a.at - b.at)[0];
        if (next === undefined) break;
        queue = queue.filter((t) => t !== next);
        now = next.at;
        next.run();
      }
      now = until;
    },
  };
}

describe('coalesced reloads', () => {
  it('runs at once after a quiet interval, then folds a burst into one run at the interval end', () => {
    const timers = steppedTimers();
    const runs: number[] = [];
    const reload = coalesced(() => runs.push(timers.now()), 10_000, timers);
    reload.trigger();
    expect(runs).toEqual([0]);
    // A change every 2 s for 30 s: a run per 10 s, not 15 (the change at 30 s came after that run: one more).
    for (let t = 2_000; t <= 30_000; t += 2_000) {
      timers.advance(2_000);
      reload.trigger();
    }
    timers.advance(10_000);
    expect(runs).toEqual([0, 10_000, 20_000, 30_000, 40_000]);
    // Quiet for longer than the interval: the next change runs at once.
    timers.advance(20_000);
    reload.trigger();
    expect(runs.at(-1)).toBe(timers.now());
  });

  it('without an interval runs on every trigger; a cancelled pending run does not happen', () => {
    const timers = steppedTimers();
    let every = 0;
    const immediate = coalesced(() => (every += 1), 0, timers);
    for (let i = 0; i < 5; i++) immediate.trigger();
    expect(every).toBe(5);
    let folded = 0;
    const reload = coalesced(() => (folded += 1), 10_000, timers);
    reload.trigger();
    reload.trigger();
    reload.cancel();
    timers.advance(60_000);
    expect(folded).toBe(1);
    // now(): runs at once in place of the pending run, which then does not happen on its own.
    reload.trigger();
    reload.trigger();
    expect(folded).toBe(2);
    reload.now();
    expect(folded).toBe(3);
    timers.advance(60_000);
    expect(folded).toBe(3);
  });
});
