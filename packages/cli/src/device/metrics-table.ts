import { table } from '../cli-io.js';
import type { DeviceMetrics, MetricSeries } from '../server-client/schemas.js';

/**
 * How the agent reports each counter (packages/agent/src/fleet/telemetry.ts): as the increase since the last
 * heartbeat (summed over a window), or as a running total (its latest value is the count). Any other metric is
 * a gauge, summarised by its bucket average, minimum and maximum.
 */
const INCREMENTS = new Set(['InferenceCount', 'InferenceFailures']);
const RUNNING_TOTALS = new Set(['AgentStarts', 'AgentCrashes']);

const round = (n: number) => String(Math.round(n * 1000) / 1000);
const model = (s: MetricSeries) => (s.modelName ? `${s.modelName} ${s.modelVersion ?? ''}`.trimEnd() : '-');
const samples = (s: MetricSeries) => s.points.reduce((sum, p) => sum + p.count, 0);

/** `device metrics` for people: counters as whole counts, gauges by bucket average/min/max; columns named for that. */
export function describeMetrics(metrics: DeviceMetrics): string {
  if (metrics.series.length === 0)
    return `no metrics for ${metrics.deviceName} between ${metrics.since} and ${metrics.until}`;
  const counters = metrics.series.filter(
    (s) => INCREMENTS.has(s.metricName) || RUNNING_TOTALS.has(s.metricName),
  );
  const gauges = metrics.series.filter((s) => !counters.includes(s));
  const sections: string[] = [];
  if (counters.length > 0)
    sections.push(
      `Counts (${metrics.since} to ${metrics.until})\n` +
        table(
          ['metric', 'model', 'count', 'counted as', 'heartbeats', 'latest heartbeat bucket'],
          counters.map((s) => {
            const last = s.points.at(-1);
            const increments = INCREMENTS.has(s.metricName);
            const count = increments
              ? s.points.reduce((sum, p) => sum + Math.round(p.avg * p.count), 0)
              : Math.round(last?.max ?? 0);
            return [
              s.metricName,
              model(s),
              String(count),
              increments ? 'sum over the window' : 'running total, latest',
              String(samples(s)),
              last?.timestamp ?? '-',
            ];
          }),
        ),
    );
  if (gauges.length > 0)
    sections.push(
      `Gauges (${metrics.step}s buckets)\n` +
        table(
          ['metric', 'model', 'dimension', 'latest bucket avg', 'min', 'max', 'samples', 'latest bucket'],
          gauges.map((s) => {
            const last = s.points.at(-1);
            return [
              s.metricName,
              model(s),
              s.dimension ?? '-',
              last ? round(last.avg) : '-',
              round(Math.min(...s.points.map((p) => p.min))),
              round(Math.max(...s.points.map((p) => p.max))),
              String(samples(s)),
              last?.timestamp ?? '-',
            ];
          }),
        ),
    );
  return sections.join('\n\n');
}
