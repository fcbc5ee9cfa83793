import { setImmediate as nextTurn } from 'node:timers/promises';
import type { Kysely } from 'kysely';
import { DomainError } from '../errors/index.js';
import type { DatabaseSchema } from '../storage/index.js';
import type { StoredMetric } from './heartbeat-service.js';

export const MAX_BUCKETS_PER_SERIES = 10_000;
/** Default for the most stored metrics one query reads (heartbeat.maxMetricsPerQuery). */
export const DEFAULT_MAX_METRICS_PER_QUERY = 2_000_000;
/** Heartbeats' rows read (and parsed) per page, between which the event loop serves other requests. */
const ROWS_PER_PAGE = 100;

export interface MetricsQuery {
  deviceName: string;
  since: number;
  until: number;
  stepMs: number;
  metricName?: string;
  modelName?: string;
  /** Most stored metrics (of every name) the window may hold; more is refused. */
  maxMetrics?: number;
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
 * absent. Reads the heartbeats whose metric time range overlaps the window and aggregates here: first their
 * metric count (a window with too many is refused before any is read), then the rows in pages, giving the
 * event loop back between pages, so that no window stalls the server or holds all its rows in memory.
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
  for await (const row of pagesOf(db, query)) {
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

/** The device's rows whose metric time range overlaps the window (by the device_name, last_timestamp index). */
const rowsInWindow = (db: Kysely<DatabaseSchema>, query: MetricsQuery) =>
  db
    .selectFrom('device_metric_batches')
    .where('device_name', '=', query.deviceName)
    .where('last_timestamp', '>=', query.since)
    .where('first_timestamp', '<', query.until);

/**
 * The window's rows in pages ordered by last_timestamp (the index's order), each read after a turn of the
 * event loop. Rows share a last_timestamp, so a full page ends before its last timestamp, whose rows are then
 * read on their own: the next page starts after it, and no row is read twice or left out.
 */
async function* pagesOf(
  db: Kysely<DatabaseSchema>,
  query: MetricsQuery,
): AsyncGenerator<{ metrics: string }> {
  let after: number | undefined;
  for (;;) {
    await nextTurn();
    let page = rowsInWindow(db, query);
    if (after !== undefined) page = page.where('last_timestamp', '>', after);
    const rows = await page
      .select(['metrics', 'last_timestamp'])
      .orderBy('last_timestamp')
      .limit(ROWS_PER_PAGE)
      .execute();
    if (rows.length < ROWS_PER_PAGE) {
      yield* rows;
      return;
    }
    const last = Number(rows.at(-1)!.last_timestamp);
    for (const row of rows) if (Number(row.last_timestamp) < last) yield row;
    // The rows of that one timestamp (a device may send many), in pages of their own.
    for (let offset = 0; ; offset += ROWS_PER_PAGE) {
      await nextTurn();
      const tied = await rowsInWindow(db, query)
        .where('last_timestamp', '=', last)
        .select('metrics')
        .orderBy('received_at')
        .orderBy('first_timestamp')
        .orderBy('metric_count')
        // The table has no key: ordering by every column left makes the order total (rows still equal are
        // identical), so that OFFSET pages neither skip nor repeat a row on PostgreSQL, whose top-N sort may
        // order equal keys differently for different LIMIT + OFFSET.
        .orderBy('fleet_name')
        .orderBy('metrics')
        .limit(ROWS_PER_PAGE)
        .offset(offset)
        .execute();
      yield* tied;
      if (tied.length < ROWS_PER_PAGE) break;
    }
    after = last;
  }
}
