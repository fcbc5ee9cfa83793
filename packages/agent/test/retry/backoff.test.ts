import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { backoffDelay, type BackoffPolicy } from '../../src/retry/index.js';

// The one backoff of the agent: capture's spool and disk-write retries and the fleet client's heartbeats use it.
const policy = fc
  .record({ initialMs: fc.integer({ min: 1, max: 60_000 }), maxMs: fc.integer({ min: 1, max: 3_600_000 }) })
  .filter((p) => p.initialMs <= p.maxMs);
const failures = fc.integer({ min: 1, max: 1_000_000 });
const draw = fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true });

/** d = min(max, initial · 2^(n−1)). */
const ceilingOf = (p: BackoffPolicy, n: number) => Math.min(p.maxMs, p.initialMs * 2 ** Math.min(n - 1, 30));

describe('backoffDelay', () => {
  it('draws each delay from [d/2, d], d = min(max, initial · 2^(n−1)), whatever the failure count (property)', () => {
    fc.assert(
      fc.property(policy, failures, draw, (p, n, r) => {
        const delay = backoffDelay(p, n, () => r);
        const ceiling = ceilingOf(p, n);
        expect(Number.isInteger(delay)).toBe(true);
        expect(delay).toBeGreaterThanOrEqual(Math.floor(ceiling / 2));
        expect(delay).toBeLessThanOrEqual(Math.ceil(ceiling));
      }),
    );
  });

  it('never shrinks from one failure to the next for the same draw, and stays at the ceiling once there (property)', () => {
    fc.assert(
      fc.property(policy, fc.integer({ min: 1, max: 60 }), draw, (p, n, r) => {
        expect(backoffDelay(p, n + 1, () => r)).toBeGreaterThanOrEqual(backoffDelay(p, n, () => r));
      }),
    );
  });

  it('doubles from the initial delay up to the cap: 1 s, 2 s, 4 s … 5 min at the top of the draw', () => {
    const spool = { initialMs: 1000, maxMs: 300_000 };
    const top = (n: number) => backoffDelay(spool, n, () => 1);
    expect([1, 2, 3, 4, 9, 10, 50].map(top)).toEqual([1000, 2000, 4000, 8000, 256_000, 300_000, 300_000]);
    // The bottom of the draw is half of that: the jitter never lets the delay fall back to the start.
    expect(backoffDelay(spool, 10, () => 0)).toBe(150_000);
    // A count of 0 (no failure yet) is treated as the first failure.
    expect(backoffDelay(spool, 0, () => 1)).toBe(1000);
  });
});
