/**
 * Every series on the agent's `GET /metrics` is named in its docs (packages/agent/docs/*.md, the README): the
 * registry the daemon builds, with every module that adds to it, read as Prometheus would.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CaptureMetrics } from '../../src/capture/capture-metrics.js';
import { DeploymentMetrics } from '../../src/deployments/deployment-metrics.js';
import { AgentMetrics } from '../../src/metrics/agent-metrics.js';
import { restRequestCounter } from '../../src/rest/rest-metrics.js';

const AGENT = join(import.meta.dirname, '../..');
/** The modules that register metrics, each built below: a new one must be added here (the test says so). */
const METRIC_MODULES = [
  'src/capture/capture-metrics.ts',
  'src/deployments/deployment-metrics.ts',
  'src/metrics/agent-metrics.ts',
  'src/rest/rest-metrics.ts',
];

const docs = [
  readFileSync(join(AGENT, 'README.md'), 'utf8'),
  ...readdirSync(join(AGENT, 'docs'))
    .filter((f) => f.endsWith('.md'))
    .map((f) => readFileSync(join(AGENT, 'docs', f), 'utf8')),
].join('\n');

function* sources(dir: string): Generator<string> {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) yield* sources(path);
    else if (entry.name.endsWith('.ts')) yield path;
  }
}

/** The names the daemon's registry holds (read without scraping: the pool's series read the pool only then). */
function metricNames(): string[] {
  const metrics = new AgentMetrics();
  metrics.watchPool(() => {
    throw new Error('not scraped');
  });
  new CaptureMetrics(metrics.registry, { queueDepth: () => 0, spoolBytes: () => 0, spoolBatches: () => 0 });
  new DeploymentMetrics(metrics.registry);
  restRequestCounter(metrics.registry);
  return metrics.registry.getMetricsAsArray().map((m) => m.name);
}

describe('the agent metrics in its docs', () => {
  it('the test builds every module that registers metrics', () => {
    const registering = [...sources(join(AGENT, 'src'))]
      .filter((file) => /new (Counter|Gauge|Histogram|Summary)\b/.test(readFileSync(file, 'utf8')))
      .map((file) => relative(AGENT, file))
      .sort();
    expect(registering).toEqual(METRIC_MODULES);
  });

  it("names every edgefleet_ series, and says prom-client's process_ and nodejs_ defaults are there", () => {
    const names = metricNames();
    const own = names.filter((n) => n.startsWith('edgefleet_'));
    expect(own.length).toBeGreaterThan(40);
    expect(own.filter((n) => !new RegExp(`\\b${n}\\b`).test(docs))).toEqual([]);
    const defaults = names.filter((n) => !n.startsWith('edgefleet_'));
    expect(defaults.length).toBeGreaterThan(0);
    expect(defaults.every((n) => n.startsWith('process_') || n.startsWith('nodejs_'))).toBe(true);
    expect(docs).toMatch(/`process_\*`/);
    expect(docs).toMatch(/`nodejs_\*`/);
  });
});
