import { setImmediate as nextTurn } from 'node:timers/promises';
import { sql, type Kysely, type RawBuilder } from 'kysely';
import { DomainError } from '../errors/index.js';
import type { DatabaseEngine, DatabaseSchema } from '../storage/index.js';

export const MAX_BUCKETS_PER_SERIES = 10_000;
/** Default for the most stored metrics one query reads (heartbeat.maxMetricsPerQuery). */
export const DEFAULT_MAX_METRICS_PER_QUERY = 2_000_000;
/** Stored metrics one aggregating statement expands at most (or one heartbeat's, when it holds more). */
const METRICS_PER_STATEMENT = 50_000;
/** Heartbeat rows one statement reads at most (their keys, or their metrics to aggregate). */
const ROWS_PER_STATEMENT = 1_000;

export interface MetricsQuery {
  deviceName: string;
  since: number;
  until: number;
  stepMs: number;
  metricName?: string;
  modelName?: string;
  /** Most stored metrics (of every name) the window may hold; more is refused. */
  maxMetrics?: number;
  /** Stored metrics one aggregating statement expands at most (default METRICS_PER_STATEMENT). */
  metricsPerStatement?: number;
  /** Heartbeat rows one statement reads at most (default ROWS_PER_STATEMENT). */
  rowsPerStatement?: number;
  /** Hears each aggregating statement's page before it runs: its heartbeat rows and their stored metrics. */
  onStatement?: (page: { rows: number; storedMetrics: number }) => void;
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
 * (bucketedMetrics), page by page of heartbeat rows (keyset on the index, pages of about metricsPerStatement
 * stored metrics), so that what is read back is one row per bucket, whatever the number of heartbeats, each
 * statement's work is bounded, and the event loop is served between statements.
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
  // The window's heartbeat rows in pages whose stored metrics add up to about metricsPerStatement (a row holds
  // at most one heartbeat's), each expanded and aggregated by one statement, the event loop served between
  // them: a statement's work is bounded by what it expands, however the metrics lie in time (bunched, or one
  // heartbeat spanning the window), and each row is expanded once.
  const metricsPerStatement = query.metricsPerStatement ?? METRICS_PER_STATEMENT;
  const rowsPerStatement = query.rowsPerStatement ?? ROWS_PER_STATEMENT;
  let after: RowKey | undefined;
  for (;;) {
    await nextTurn();
    const keys = (await rowKeysInWindow(engine, query, after, rowsPerStatement).execute(db)).rows;
    if (keys.length === 0) break;
    const last = keys.at(-1)!;
    after = { lastTimestamp: Number(last.last_timestamp), rid: last.rid };
    for (let i = 0; i < keys.length;) {
      let metrics = 0;
      let end = i;
      // At least one row; then rows while the page stays within its metrics.
      do metrics += Number(keys[end++]!.metric_count);
      while (end < keys.length && metrics + Number(keys[end]!.metric_count) <= metricsPerStatement);
      const pageKeys = keys.slice(i, end);
      const page = {
        rids: pageKeys.map((k) => k.rid),
        lastTimestamps: [
          Number(pageKeys[0]!.last_timestamp),
          Number(pageKeys.at(-1)!.last_timestamp),
        ] as const,
      };
      i = end;
      query.onStatement?.({ rows: page.rids.length, storedMetrics: metrics });
      if (i < keys.length) await nextTurn();
      for (const row of (await bucketedMetrics(engine, query, page).execute(db)).rows) {
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
        // A bucket whose metrics lie in two pages is aggregated in each: the parts are merged.
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

/** A heartbeat row's place in the keyset walk: (last_timestamp, row id). */
interface RowKey {
  lastTimestamp: number;
  /** SQLite's rowid; PostgreSQL's ctid, as text. Rows are only appended and pruned, never updated. */
  rid: number | string;
}

/**
 * The keys of the device's heartbeat rows whose metric time range overlaps the window, after `after` in
 * (last_timestamp, row id) order, at most `limit`, with their stored metric counts: by the
 * (device_name, last_timestamp) index. Exported for the test of its query plan.
 */
export function rowKeysInWindow(
  engine: DatabaseEngine,
  query: Pick<MetricsQuery, 'deviceName' | 'since' | 'until'>,
  after: RowKey | undefined,
  limit: number,
): RawBuilder<{ rid: number | string; last_timestamp: number | string; metric_count: number | string }> {
  const rid = sql.raw(engine === 'sqlite' ? 'rowid' : 'ctid');
  const ridOf = (value: number | string) => (engine === 'sqlite' ? sql`${value}` : sql`${value}::tid`);
  return sql`select ${rid}${engine === 'sqlite' ? sql`` : sql`::text`} as rid, last_timestamp, metric_count
    from device_metric_batches
    where device_name = ${query.deviceName} and last_timestamp >= ${query.since}
      and first_timestamp < ${query.until}
      ${after === undefined ? sql`` : sql`and (last_timestamp, ${rid}) > (${after.lastTimestamp}, ${ridOf(after.rid)})`}
    order by last_timestamp, ${rid}
    limit ${limit}`;
}

/**
 * The metrics of the heartbeat rows `rows` (row ids, rowKeysInWindow's) whose timestamps lie in the query's
 * [since, until), aggregated in the database per series and bucket of `stepMs` (aligned to the epoch): min,
 * max, sum and count, so that what comes back is one row per bucket, not one per heartbeat. The rows' metrics
 * (a JSON array per row) are expanded by the engine's own JSON functions. Timestamps are whole, non-negative
 * milliseconds (the device API's rule), so integer division buckets them as Math.floor would. A row pruned
 * since its key was read may have left its id to a new row (SQLite reuses rowids, PostgreSQL a vacuumed ctid):
 * the device is checked again, and the row's last_timestamp must lie within the page's keys, so a new row of
 * the same device in a reused id is not counted here and again where the walk reaches its own key (but for a
 * tie on the page's last timestamp).
 */
function bucketedMetrics(
  engine: DatabaseEngine,
  query: Pick<MetricsQuery, 'deviceName' | 'since' | 'until' | 'stepMs' | 'metricName' | 'modelName'>,
  page: { rids: readonly (number | string)[]; lastTimestamps: readonly [number, number] },
): RawBuilder<BucketRow> {
  const step = Math.trunc(query.stepMs);
  const { since: from, until: to } = query;
  const rows = page.rids;
  const [firstKey, lastKey] = page.lastTimestamps;
  if (engine === 'sqlite') {
    const at = (i: number) => sql.raw(`json_extract(j.value, '$[${i}]')`);
    const ts = sql`cast(${at(5)} as integer)`;
    return sql<BucketRow>`select ${at(0)} as metric_name, ${at(1)} as dimension, ${at(2)} as model_name,
      ${at(3)} as model_version, (${ts} / cast(${step} as integer)) * cast(${step} as integer) as bucket,
      min(${at(4)}) as min, max(${at(4)}) as max, total(${at(4)}) as sum, count(*) as count
      from device_metric_batches as b, json_each(b.metrics) as j
      where b.rowid in (${sql.join(rows.map((r) => sql`${r}`))}) and b.device_name = ${query.deviceName}
        and b.last_timestamp between ${firstKey} and ${lastKey} and ${ts} >= ${from} and ${ts} < ${to}
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
    where b.ctid = any(${rows.map(String)}::tid[]) and b.device_name = ${query.deviceName}
      and b.last_timestamp between ${firstKey} and ${lastKey} and ${ts} >= ${from} and ${ts} < ${to}
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
