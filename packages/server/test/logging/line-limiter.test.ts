/** The limiter behind every "at most once a minute, with a count" line: per key, bounded in memory. */
import { describe, expect, it } from 'vitest';
import { LineLimiter } from '../../src/logging/line-limiter.js';

describe('LineLimiter', () => {
  it('admits a key once an interval, with the number left out since, each key on its own', () => {
    let now = 0;
    const lines = new LineLimiter({ now: () => now, intervalMs: 1000 });
    expect(lines.admit('a')).toEqual({ leftOut: 0, first: true });
    expect(lines.admit('a')).toBeUndefined();
    expect(lines.admit('a')).toBeUndefined();
    expect(lines.admit('b')).toEqual({ leftOut: 0, first: true });
    now = 1000;
    expect(lines.admit('a')).toEqual({ leftOut: 2, first: false });
    expect(lines.admit('a')).toBeUndefined();
    // Forgotten: the run ended, the next line is written at once.
    expect(lines.forget('a')).toBe(1);
    expect(lines.admit('a')).toEqual({ leftOut: 0, first: true });
  });

  it('remembers at most maxKeys keys, forgetting the oldest first', () => {
    const lines = new LineLimiter({ now: () => 0, maxKeys: 2 });
    expect(lines.admit('a')).toBeDefined();
    expect(lines.admit('b')).toBeDefined();
    expect(lines.admit('c')).toBeDefined();
    // 'a' was forgotten to make room: admitted again at once; 'c' is still remembered.
    expect(lines.admit('a')).toEqual({ leftOut: 0, first: true });
    expect(lines.admit('c')).toBeUndefined();
  });
});
