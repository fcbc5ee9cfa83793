/**
 * Latency summaries for heartbeats, from the agent's Prometheus request-duration histogram: the difference
 * between two readings gives the requests of one heartbeat period, from which the mean and quantiles follow.
 */
import type { AgentMetrics } from '../metrics/index.js';

export const REQUEST_DURATION_METRIC = 'edgefleet_inference_request_duration_seconds';

/** One model's cumulative histogram: bucket upper bounds (seconds, ascending, last is +Inf) and counts. */
export interface HistogramReading {
  /** Cumulative counts per upper bound, as Prometheus keeps them. */
  buckets: Array<{ le: number; count: number }>;
  sum: number;
  count: number;
}

/** Reads the request-duration histogram of every model, by model name. Empty without metrics. */
export async function readLatencyHistograms(
  metrics: AgentMetrics | undefined,
): Promise<Map<string, HistogramReading>> {
  const readings = new Map<string, HistogramReading>();
  const metric = metrics?.registry.getSingleMetric(REQUEST_DURATION_METRIC);
  if (metric === undefined) return readings;
  const { values } = await metric.get();
  const entry = (model: string) => {
    let reading = readings.get(model);
    if (!reading) {
      reading = { buckets: [], sum: 0, count: 0 };
      readings.set(model, reading);
    }
    return reading;
  };
  for (const value of values) {
    const model = value.labels.model;
    if (typeof model !== 'string') continue;
    const name = (value as { metricName?: string }).metricName ?? '';
    if (name.endsWith('_bucket')) {
      const le = value.labels.le === '+Inf' ? Number.POSITIVE_INFINITY : Number(value.labels.le);
      entry(model).buckets.push({ le, count: value.value });
    } else if (name.endsWith('_sum')) entry(model).sum = value.value;
    else if (name.endsWith('_count')) entry(model).count = value.value;
  }
  for (const reading of readings.values()) reading.buckets.sort((a, b) => a.le - b.le);
  return readings;
}

/** `now − before`, bucket by bucket; a reading that went backwards (counters reset) counts from zero. */
export function histogramDelta(
  now: HistogramReading,
  before: HistogramReading | undefined,
): HistogramReading {
  if (before === undefined || now.count < before.count || now.buckets.length !== before.buckets.length)
    return now;
  return {
    buckets: now.buckets.map((b, i) => ({
      le: b.le,
      count: Math.max(0, b.count - (before.buckets[i]?.count ?? 0)),
    })),
    sum: Math.max(0, now.sum - before.sum),
    count: now.count - before.count,
  };
}

/**
 * The q-quantile (0 ≤ q ≤ 1) of a cumulative histogram, interpolated linearly inside the bucket it falls in
 * (as Prometheus' histogram_quantile does); in the +Inf bucket, the largest finite bound. Undefined when empty.
 */
export function histogramQuantile(q: number, buckets: HistogramReading['buckets']): number | undefined {
  const total = buckets[buckets.length - 1]?.count ?? 0;
  if (total <= 0 || buckets.length === 0) return undefined;
  const rank = Math.min(Math.max(q, 0), 1) * total;
  let lowerBound = 0;
  let lowerCount = 0;
  for (const bucket of buckets) {
    if (bucket.count >= rank && bucket.count > 0) {
      if (!Number.isFinite(bucket.le)) return lowerBound;
      const inBucket = bucket.count - lowerCount;
      if (inBucket <= 0) return bucket.le;
      return lowerBound + ((bucket.le - lowerBound) * (rank - lowerCount)) / inBucket;
    }
    if (Number.isFinite(bucket.le)) lowerBound = bucket.le;
    lowerCount = bucket.count;
  }
  return lowerBound;
}
