import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { histogramDelta, histogramQuantile, readLatencyHistograms } from '../../src/fleet/index.js';
import { AgentMetrics } from '../../src/metrics/index.js';

/** Random cumulative histograms: ascending finite bounds, then +Inf; nondecreasing counts. */
const histogram = fc
  .tuple(
    fc.uniqueArray(fc.double({ min: 1e-6, max: 100, noNaN: true }), { minLength: 1, maxLength: 12 }),
    fc.array(fc.nat(50), { minLength: 13, maxLength: 13 }),
  )
  .map(([bounds, increments]) => {
    const les = [...bounds.sort((a, b) => a - b), Number.POSITIVE_INFINITY];
    let total = 0;
    return les.map((le, i) => ({ le, count: (total += increments[i] ?? 0) }));
  });

describe('histogramQuantile', () => {
  it('stays within [0, largest finite bound], grows with q, and is undefined only when empty', () => {
    fc.assert(
      fc.property(
        histogram,
        fc.double({ min: 0, max: 1, noNaN: true }),
        fc.double({ min: 0, max: 1, noNaN: true }),
        (buckets, a, b) => {
          const total = buckets[buckets.length - 1]!.count;
          const [lo, hi] = a <= b ? [a, b] : [b, a];
          const qLo = histogramQuantile(lo, buckets);
          const qHi = histogramQuantile(hi, buckets);
          if (total === 0) {
            expect(qLo).toBeUndefined();
            return;
          }
          const maxFinite = buckets[buckets.length - 2]!.le;
          for (const q of [qLo!, qHi!]) {
            expect(q).toBeGreaterThanOrEqual(0);
            expect(q).toBeLessThanOrEqual(maxFinite);
          }
          expect(qLo!).toBeLessThanOrEqual(qHi! + 1e-12);
        },
      ),
    );
  });

  it('puts every quantile of a single populated bucket inside that bucket', () => {
    const buckets = [
      { le: 0.001, count: 0 },
      { le: 0.005, count: 10 },
      { le: 0.01, count: 10 },
      { le: Number.POSITIVE_INFINITY, count: 10 },
    ];
    expect(histogramQuantile(0.5, buckets)).toBeCloseTo(0.003, 9);
    expect(histogramQuantile(0.99, buckets)).toBeGreaterThan(0.001);
    expect(histogramQuantile(0.99, buckets)).toBeLessThanOrEqual(0.005);
  });
});

describe('readLatencyHistograms + histogramDelta', () => {
  it('reads the agent’s request-duration histogram per model and the difference between readings', async () => {
    const metrics = new AgentMetrics({ defaultMetrics: false });
    expect((await readLatencyHistograms(undefined)).size).toBe(0);
    for (let i = 0; i < 20; i++) metrics.observeRequest({ model: 'a', requestMs: 3, computeMs: 2 });
    metrics.observeRequest({ model: 'b', requestMs: 700, errorCode: 'INTERNAL' });
    const first = await readLatencyHistograms(metrics);
    expect([...first.keys()].sort()).toEqual(['a', 'b']);
    expect(first.get('a')).toMatchObject({ count: 20 });
    expect(first.get('a')!.sum).toBeCloseTo(0.06, 9);
    expect(first.get('a')!.buckets.at(-1)).toEqual({ le: Number.POSITIVE_INFINITY, count: 20 });

    for (let i = 0; i < 5; i++) metrics.observeRequest({ model: 'a', requestMs: 40, computeMs: 39 });
    const second = await readLatencyHistograms(metrics);
    const period = histogramDelta(second.get('a')!, first.get('a'));
    expect(period.count).toBe(5);
    expect(period.sum).toBeCloseTo(0.2, 9);
    const p50 = histogramQuantile(0.5, period.buckets)!;
    expect(p50).toBeGreaterThan(0.025);
    expect(p50).toBeLessThanOrEqual(0.05);
    // A reading that went backwards (a new process) counts from zero.
    expect(histogramDelta(first.get('a')!, second.get('a'))).toBe(first.get('a'));
  });
});
