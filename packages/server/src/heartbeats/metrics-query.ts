import type { Kysely } from 'kysely';
import { DomainError } from '../errors/index.js';
import type { DatabaseSchema } from '../storage/index.js';
import type { StoredMetric } from './heartbeat-service.js';

export const MAX_BUCKETS_PER_SERIES = 10_000;
/** Most heartbeats' worth of metrics one query reads (a week of 30 s heartbeats is about 20 000). */
export const MAX_BATCHES_PER_QUERY = 100_000;

export interface MetricsQuery {
  deviceName: string;
  since: number;
  until: number;
  stepMs: number;
  metricName?: string;
  modelName?: string;
}

export interface MetricSeries {
  metricName: string;
  dimension: string | null;
  modelName: string | null;
  modelVersion: string | null;
  points: { timestamp: number; min: number; max: number; avg: number; count: number }[];
}

/** Nulls first, then by text: the same order whatever the database engine. */
function compareNullable(a: string | null, b: string | null): number {
  if (a === b) return 0;
  if (a === null) return -1;
  if (b === null) return 1;
  return a < b ? -1 : 1;
}

/**
 * A device's metrics between two times (by the metrics' own timestamps), bucketed by `stepMs` (aligned to
 * the epoch), one series per metric, dimension and model: what a dashboard plots. Buckets without data are
 * absent. Reads the heartbeats whose metric time range overlaps the window and aggregates here.
 */
export async function queryDeviceMetrics(
  db: Kysely<DatabaseSchema>,
  query: MetricsQuery,
): Promise<MetricSeries[]> {
  if (query.until <= query.since) {
    throw new DomainError('ValidationError', 'until must be after since', { in: 'querystring' });
  }
  const buckets = Math.ceil((query.until - query.since) / query.stepMs);
  if (buckets > MAX_BUCKETS_PER_SERIES) {
    throw new DomainError(
      'ValidationError',
      `${buckets} buckets per series asked for; at most ${MAX_BUCKETS_PER_SERIES}: widen step or narrow the window`,
      { in: 'querystring' },
    );
  }
  const rows = await db
    .selectFrom('device_metric_batches')
    .select('metrics')
    .where('device_name', '=', query.deviceName)
    .where('last_timestamp', '>=', query.since)
    .where('first_timestamp', '<', query.until)
    .limit(MAX_BATCHES_PER_QUERY + 1)
    .execute();
  if (rows.length > MAX_BATCHES_PER_QUERY) {
    throw new DomainError(
      'ValidationError',
      `the window holds more than ${MAX_BATCHES_PER_QUERY} heartbeats' metrics; narrow it`,
      { in: 'querystring' },
    );
  }

  type Bucket = { min: number; max: number; sum: number; count: number };
  const series = new Map<string, { head: Omit<MetricSeries, 'points'>; buckets: Map<number, Bucket> }>();
  for (const row of rows) {
    for (const [metricName, dimension, modelName, modelVersion, value, timestamp] of JSON.parse(
      row.metrics,
    ) as StoredMetric[]) {
      if (timestamp < query.since || timestamp >= query.until) continue;
      if (query.metricName !== undefined && metricName !== query.metricName) continue;
      if (query.modelName !== undefined && modelName !== query.modelName) continue;
      const key = JSON.stringify([metricName, dimension, modelName, modelVersion]);
      let entry = series.get(key);
      if (entry === undefined) {
        entry = { head: { metricName, dimension, modelName, modelVersion }, buckets: new Map() };
        series.set(key, entry);
      }
      const at = Math.floor(timestamp / query.stepMs) * query.stepMs;
      const bucket = entry.buckets.get(at);
      if (bucket === undefined) entry.buckets.set(at, { min: value, max: value, sum: value, count: 1 });
      else {
        bucket.min = Math.min(bucket.min, value);
        bucket.max = Math.max(bucket.max, value);
        bucket.sum += value;
        bucket.count += 1;
      }
    }
  }
  return [...series.values()]
    .sort(
      (a, b) =>
        compareNullable(a.head.metricName, b.head.metricName) ||
        compareNullable(a.head.dimension, b.head.dimension) ||
        compareNullable(a.head.modelName, b.head.modelName) ||
        compareNullable(a.head.modelVersion, b.head.modelVersion),
    )
    .map(({ head, buckets: points }) => ({
      ...head,
      points: [...points.entries()]
        .sort(([a], [b]) => a - b)
        .map(([timestamp, b]) => ({
          timestamp,
          min: b.min,
          max: b.max,
          avg: b.sum / b.count,
          count: b.count,
        })),
    }));
}
