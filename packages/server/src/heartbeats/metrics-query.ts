import { setImmediate as nextTurn } from 'node:timers/promises';
import { sql, type Kysely, type RawBuilder } from 'kysely';
import { DomainError } from '../errors/index.js';
import type { DatabaseEngine, DatabaseSchema } from '../storage/index.js';

export const MAX_BUCKETS_PER_SERIES = 10_000;
/** Default for the most stored metrics one query reads (heartbeat.maxMetricsPerQuery). */
export const DEFAULT_MAX_METRICS_PER_QUERY = 2_000_000;
/** Stored metrics one aggregating statement reads at most (about): the window is split in spans of this many. */
export const METRICS_PER_STATEMENT = 50_000;

export interface MetricsQuery {
  deviceName: string;
  since: number;
  until: number;
  stepMs: number;
  metricName?: string;
  modelName?: string;
  /** Most stored metrics (of every name) the window may hold; more is refused. */
  maxMetrics?: number;
  /** Stored metrics one aggregating statement reads at most, about (default METRICS_PER_STATEMENT). */
  metricsPerStatement?: number;
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
 * absent. First the stored metric count of the heartbeats whose metric time range overlaps the window (a window
 * with too many is refused before any is read); then the database aggregates them per series and bucket
 * (bucketedMetrics), span by span of the window, so that what is read back is one row per bucket, whatever the
 * number of heartbeats, and the event loop is served between spans.
 */
export async function queryDeviceMetrics(
  db: Kysely<DatabaseSchema>,
  engine: DatabaseEngine,
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
  const maxMetrics = query.maxMetrics ?? DEFAULT_MAX_METRICS_PER_QUERY;
  const { stored } = await rowsInWindow(db, query)
    .select((eb) => eb.fn.coalesce(eb.fn.sum<number | string>('metric_count'), eb.lit(0)).as('stored'))
    .executeTakeFirstOrThrow();
  if (Number(stored) > maxMetrics) {
    throw new DomainError(
      'ValidationError',
      `the window holds ${Number(stored)} stored metrics of device ${query.deviceName}; a query reads at most ${maxMetrics} (heartbeat.maxMetricsPerQuery): narrow the window`,
      { in: 'querystring', storedMetrics: Number(stored), maxMetrics },
    );
  }

  type Bucket = { min: number; max: number; sum: number; count: number };
  const series = new Map<string, { head: Omit<MetricSeries, 'points'>; buckets: Map<number, Bucket> }>();
  // The window in spans of about METRICS_PER_STATEMENT stored metrics each, the event loop served between them:
  // one aggregation never holds the server (SQLite's runs on its thread) however long the window.
  const spans = Math.max(1, Math.ceil(Number(stored) / (query.metricsPerStatement ?? METRICS_PER_STATEMENT)));
  const spanMs = Math.ceil((query.until - query.since) / spans);
  for (let from = query.since; from < query.until; from += spanMs) {
    await nextTurn();
    const to = Math.min(query.until, from + spanMs);
    const { rows } = await bucketedMetrics(engine, query, from, to).execute(db);
    for (const row of rows) {
      const head = {
        metricName: row.metric_name,
        dimension: row.dimension,
        modelName: row.model_name,
        modelVersion: row.model_version,
      };
      const key = JSON.stringify([head.metricName, head.dimension, head.modelName, head.modelVersion]);
      let entry = series.get(key);
      if (entry === undefined) {
        entry = { head, buckets: new Map() };
        series.set(key, entry);
      }
      // A bucket across two spans is aggregated in each: the parts are merged.
      const at = Number(row.bucket);
      const part = {
        min: Number(row.min),
        max: Number(row.max),
        sum: Number(row.sum),
        count: Number(row.count),
      };
      const bucket = entry.buckets.get(at);
      if (bucket === undefined) entry.buckets.set(at, part);
      else {
        bucket.min = Math.min(bucket.min, part.min);
        bucket.max = Math.max(bucket.max, part.max);
        bucket.sum += part.sum;
        bucket.count += part.count;
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

/** One series' bucket as the database aggregates it. */
interface BucketRow {
  metric_name: string;
  dimension: string | null;
  model_name: string | null;
  model_version: string | null;
  bucket: number | string;
  min: number | string;
  max: number | string;
  sum: number | string;
  count: number | string;
}

/**
 * The device's metrics whose timestamps lie in [from, to), aggregated in the database per series and bucket of
 * `stepMs` (aligned to the epoch): min, max, sum and count, so that what comes back is one row per bucket, not
 * one per heartbeat. The heartbeats' rows are found by the (device_name, last_timestamp) index, and their
 * metrics (a JSON array per row) are expanded by the engine's own JSON functions. Timestamps are whole,
 * non-negative milliseconds (the device API's rule), so integer division buckets them as Math.floor would.
 * Exported for the test of its query plan.
 */
export function bucketedMetrics(
  engine: DatabaseEngine,
  query: Pick<MetricsQuery, 'deviceName' | 'stepMs' | 'metricName' | 'modelName'>,
  from: number,
  to: number,
): RawBuilder<BucketRow> {
  const step = Math.trunc(query.stepMs);
  if (engine === 'sqlite') {
    const at = (i: number) => sql.raw(`json_extract(j.value, '$[${i}]')`);
    const ts = sql`cast(${at(5)} as integer)`;
    return sql<BucketRow>`select ${at(0)} as metric_name, ${at(1)} as dimension, ${at(2)} as model_name,
      ${at(3)} as model_version, (${ts} / cast(${step} as integer)) * cast(${step} as integer) as bucket,
      min(${at(4)}) as min, max(${at(4)}) as max, total(${at(4)}) as sum, count(*) as count
      from device_metric_batches as b, json_each(b.metrics) as j
      where b.device_name = ${query.deviceName} and b.last_timestamp >= ${from} and b.first_timestamp < ${to}
        and ${ts} >= ${from} and ${ts} < ${to}
        ${query.metricName !== undefined ? sql`and ${at(0)} = ${query.metricName}` : sql``}
        ${query.modelName !== undefined ? sql`and ${at(2)} = ${query.modelName}` : sql``}
      group by 1, 2, 3, 4, 5`;
  }
  const at = (i: number) => sql.raw(`(j.value ->> ${i})`);
  const ts = sql`${at(5)}::bigint`;
  const value = sql`${at(4)}::double precision`;
  return sql<BucketRow>`select ${at(0)} as metric_name, ${at(1)} as dimension, ${at(2)} as model_name,
    ${at(3)} as model_version, (${ts} / cast(${step} as bigint)) * cast(${step} as bigint) as bucket,
    min(${value}) as min, max(${value}) as max, sum(${value}) as sum, count(*) as count
    from device_metric_batches as b cross join lateral json_array_elements(b.metrics::json) as j(value)
    where b.device_name = ${query.deviceName} and b.last_timestamp >= ${from} and b.first_timestamp < ${to}
      and ${ts} >= ${from} and ${ts} < ${to}
      ${query.metricName !== undefined ? sql`and ${at(0)} = ${query.metricName}` : sql``}
      ${query.modelName !== undefined ? sql`and ${at(2)} = ${query.modelName}` : sql``}
    group by 1, 2, 3, 4, 5`;
}

/** The device's rows whose metric time range overlaps the window (by the device_name, last_timestamp index). */
const rowsInWindow = (db: Kysely<DatabaseSchema>, query: MetricsQuery) =>
  db
    .selectFrom('device_metric_batches')
    .where('device_name', '=', query.deviceName)
    .where('last_timestamp', '>=', query.since)
    .where('first_timestamp', '<', query.until);
