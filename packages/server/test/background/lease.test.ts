import { afterEach, describe, expect, it, vi } from 'vitest';
import { leaseRenewalIntervalMs, renewLease } from '../../src/background/index.js';

describe('renewLease (review N7)', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('skips a tick while a renewal is in flight: a stalled database never piles renewals up', async () => {
    vi.useFakeTimers();
    let calls = 0;
    let finish!: (held: boolean) => void;
    const lease = renewLease(() => {
      calls++;
      return new Promise<boolean>((resolve) => (finish = resolve));
    }, 4000);
    await vi.advanceTimersByTimeAsync(leaseRenewalIntervalMs(4000) * 10);
    expect(calls).toBe(1);
    finish(true);
    await vi.advanceTimersByTimeAsync(leaseRenewalIntervalMs(4000));
    expect(calls).toBe(2);
    lease.stop();
  });

  it('reports a lost claim once, and renews no more', async () => {
    vi.useFakeTimers();
    let calls = 0;
    let lostCalls = 0;
    const lease = renewLease(
      async () => {
        calls++;
        return false;
      },
      4000,
      () => lostCalls++,
    );
    await vi.advanceTimersByTimeAsync(leaseRenewalIntervalMs(4000) * 5);
    expect(lease.lost).toBe(true);
    expect(lostCalls).toBe(1);
    expect(calls).toBe(1);
    lease.stop();
  });
});
