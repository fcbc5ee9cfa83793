import { describe, expect, it } from 'vitest';
import { BackgroundLoads } from '../../src/daemon/background-loads.js';

/** A promise the test settles. */
function deferred() {
  let resolve!: () => void;
  let reject!: (error: Error) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

const turn = () => new Promise((resolve) => setImmediate(resolve));

describe('start-up loads finishing in the background', () => {
  it('is not settled (the agent not ready) until every tracked load has loaded or failed', async () => {
    let settledCalls = 0;
    const loads = new BackgroundLoads({ onSettled: () => settledCalls++ });
    expect(loads.settled).toBe(true);

    const slow = deferred();
    const broken = deferred();
    broken.promise.catch(() => {}); // its failure is the caller's to log
    loads.track('slow', slow.promise);
    loads.track('broken', broken.promise);
    expect(loads.settled).toBe(false);
    expect(loads.pending).toEqual(['slow', 'broken']);

    broken.reject(new Error('its package is gone'));
    await turn();
    // A failed load no longer holds readiness up; the other still does.
    expect(loads.pending).toEqual(['slow']);
    expect(loads.settled).toBe(false);
    expect(settledCalls).toBe(0);

    slow.resolve();
    await turn();
    expect(loads.settled).toBe(true);
    expect(loads.pending).toEqual([]);
    expect(settledCalls).toBe(1);
  });
});
