import { afterEach, describe, expect, it, vi } from 'vitest';
import { armDeadline } from '../../src/background/deadline.js';

const DAY_MS = 24 * 60 * 60 * 1000;

describe('armDeadline', () => {
  afterEach(() => vi.useRealTimers());

  it('waits out a deadline past setTimeout’s 24.8-day limit (Node would run such a timer at once)', () => {
    vi.useFakeTimers();
    const fired = vi.fn();
    // A year: the longest StoppingCondition.MaxRuntimeInSeconds the facade accepts.
    armDeadline(Date.now() + 365 * DAY_MS, fired);
    vi.advanceTimersByTime(364 * DAY_MS);
    expect(fired).not.toHaveBeenCalled();
    vi.advanceTimersByTime(DAY_MS);
    expect(fired).toHaveBeenCalledTimes(1);
  });

  it('fires at once for a deadline already past, and not at all once cleared', () => {
    vi.useFakeTimers();
    const past = vi.fn();
    armDeadline(Date.now() - 1000, past);
    vi.advanceTimersByTime(0);
    expect(past).toHaveBeenCalledTimes(1);
    const cleared = vi.fn();
    armDeadline(Date.now() + 30 * DAY_MS, cleared).clear();
    vi.advanceTimersByTime(31 * DAY_MS);
    expect(cleared).not.toHaveBeenCalled();
  });
});
