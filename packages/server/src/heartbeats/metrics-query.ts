import { sql, type Kysely } from 'kysely';
import { ApiError } from '../http/errors.js';
import type { DatabaseSchema } from '../storage/index.js';

export const MAX_BUCKETS_PER_SERIES = 10_000;

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

/**
 * A device's metrics between two times, bucketed by `stepMs` (aligned to the epoch), one series per metric,
 * dimension and model: what a dashboard plots. Buckets without data are absent.
 */
export async function queryDeviceMetrics(
  db: Kysely<DatabaseSchema>,
  query: MetricsQuery,
): Promise<MetricSeries[]> {
  if (query.until <= query.since) {
    throw new ApiError(400, 'ValidationError', 'until must be after since', { in: 'querystring' });
  }
  const buckets = Math.ceil((query.until - query.since) / query.stepMs);
  if (buckets > MAX_BUCKETS_PER_SERIES) {
    throw new ApiError(
      400,
      'ValidationError',
      `${buckets} buckets per series asked for; at most ${MAX_BUCKETS_PER_SERIES}: widen step or narrow the window`,
      { in: 'querystring' },
    );
  }
  // Integer division on both engines. The step is a literal, not a parameter: PostgreSQL only matches the
  // GROUP BY expression to the selected one when they are textually the same.
  const step = sql.lit(Math.trunc(query.stepMs));
  const bucket = sql<number>`(${sql.ref('timestamp')} / ${step}) * ${step}`;
  let select = db
    .selectFrom('device_metrics')
    .select([
      'metric_name',
      'dimension',
      'model_name',
      'model_version',
      bucket.as('bucket'),
      (eb) => eb.fn.min<number>('value').as('min'),
      (eb) => eb.fn.max<number>('value').as('max'),
      (eb) => eb.fn.avg<number>('value').as('avg'),
      (eb) => eb.fn.countAll<number>().as('count'),
    ])
    .where('device_name', '=', query.deviceName)
    .where('timestamp', '>=', query.since)
    .where('timestamp', '<', query.until)
    .groupBy(['metric_name', 'dimension', 'model_name', 'model_version', bucket])
    .orderBy('metric_name')
    .orderBy('dimension')
    .orderBy('model_name')
    .orderBy('model_version')
    .orderBy(bucket);
  if (query.metricName !== undefined) select = select.where('metric_name', '=', query.metricName);
  if (query.modelName !== undefined) select = select.where('model_name', '=', query.modelName);
  const rows = await select.execute();

  const series = new Map<string, MetricSeries>();
  for (const row of rows) {
    const key = JSON.stringify([row.metric_name, row.dimension, row.model_name, row.model_version]);
    let entry = series.get(key);
    if (entry === undefined) {
      entry = {
        metricName: row.metric_name,
        dimension: row.dimension,
        modelName: row.model_name,
        modelVersion: row.model_version,
        points: [],
      };
      series.set(key, entry);
    }
    entry.points.push({
      timestamp: Number(row.bucket),
      min: Number(row.min),
      max: Number(row.max),
      avg: Number(row.avg),
      count: Number(row.count),
    });
  }
  return [...series.values()];
}
