import { describe, expect, it } from 'vitest';
import { describeMetrics } from '../../src/device/metrics-table.js';

const point = (timestamp: string, values: number[]) => ({
  timestamp,
  min: Math.min(...values),
  max: Math.max(...values),
  avg: values.reduce((a, b) => a + b, 0) / values.length,
  count: values.length,
});

describe('edgefleet device metrics (human output)', () => {
  it('shows per-heartbeat counters as whole counts summed over the window, gauges by bucket average', () => {
    const text = describeMetrics({
      deviceName: 'cam-1',
      since: '2026-01-01T10:00:00.000Z',
      until: '2026-01-01T11:00:00.000Z',
      step: 60,
      series: [
        // Three heartbeats in the last bucket reported 2, 0 and 0 inferences: avg 0.667, but 2 inferences.
        {
          metricName: 'InferenceCount',
          modelName: 'mlp',
          modelVersion: '1.0',
          points: [point('2026-01-01T10:58:00.000Z', [1, 4]), point('2026-01-01T10:59:00.000Z', [2, 0, 0])],
        },
        { metricName: 'AgentStarts', points: [point('2026-01-01T10:59:00.000Z', [3, 3])] },
        { metricName: 'CpuUtilization', points: [point('2026-01-01T10:59:00.000Z', [10, 20])] },
      ],
    });
    expect(text).toMatch(/^metric +model +count +counted as +heartbeats +latest heartbeat bucket$/m);
    expect(text).toMatch(/^InferenceCount +mlp 1\.0 +7 +sum over the window +5 +2026-01-01T10:59:00\.000Z$/m);
    expect(text).toMatch(/^AgentStarts +- +3 +running total, latest +2 /m);
    expect(text).toMatch(/^metric +model +dimension +latest bucket avg +min +max +samples +latest bucket$/m);
    expect(text).toMatch(/^CpuUtilization +- +- +15 +10 +20 +2 /m);
    expect(text).not.toContain('0.667');
  });
});
