import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_ORT_SESSION_CONFIG, InferencePool } from '../../src/inference/index.js';
import type { InlineBudgetOptions } from '../../src/inference/inline-budget.js';
import { AgentMetrics } from '../../src/metrics/index.js';
import { ModelRegistry } from '../../src/models/index.js';
import { predictTensors, scratch } from './helpers.js';
import { loopWaits, untilInline } from '../support/pool-models.js';

let pool: InferencePool;
let files: Awaited<ReturnType<typeof scratch>>;
let metrics: AgentMetrics;

beforeAll(async () => {
  files = await scratch('agent-metrics-');
  metrics = new AgentMetrics();
  pool = await InferencePool.start({
    workers: 1,
    session: DEFAULT_ORT_SESSION_CONFIG,
    onEvent: (event) => event.type === 'worker-exit' && metrics.workerExited(),
  });
  metrics.watchPool(() => pool.stats());
});
afterAll(async () => {
  await pool?.close();
  await files?.cleanup();
});

/** The value of one sample line of the exposition, e.g. `name{labels}`. */
function sample(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

describe('AgentMetrics fed by the registry and the pool', () => {
  it('counts requests, failures, inferences, queue and compute time, loads and load failures per model', async () => {
    const models = new ModelRegistry({ pool, trust: null, cwd: files.root, metrics });
    await models.load({ url: await files.catalogue('tiny'), name: 'tiny' });
    await models.load({ url: join(files.root, 'missing'), name: 'ghost' }).catch(() => {});
    for (let i = 0; i < 3; i++) await models.predict('tiny', predictTensors('tiny'));
    await models.predict('tiny', []).catch(() => {});

    const { contentType, body } = await metrics.text();
    expect(contentType).toMatch(/^text\/plain/);
    expect(sample(body, 'edgefleet_inference_request_success_total{model="tiny"}')).toBe(3);
    expect(
      sample(body, 'edgefleet_inference_request_failure_total{model="tiny",code="INVALID_ARGUMENT"}'),
    ).toBe(1);
    expect(sample(body, 'edgefleet_inference_count_total{model="tiny"}')).toBe(3);
    expect(sample(body, 'edgefleet_inference_request_duration_seconds_count{model="tiny"}')).toBe(4);
    expect(sample(body, 'edgefleet_inference_queue_duration_seconds_count{model="tiny"}')).toBe(3);
    expect(sample(body, 'edgefleet_inference_compute_duration_seconds_count{model="tiny"}')).toBe(3);
    expect(sample(body, 'edgefleet_inference_compute_duration_seconds_sum{model="tiny"}')).toBeGreaterThan(0);
    expect(sample(body, 'edgefleet_model_load_duration_seconds_count{model="tiny"}')).toBe(1);
    expect(sample(body, 'edgefleet_model_load_failures_total{model="ghost",code="NOT_FOUND"}')).toBe(1);
    expect(sample(body, 'edgefleet_models_loaded')).toBe(1);
    expect(sample(body, 'edgefleet_inference_workers{state="ready"}')).toBe(1);
    // The warm-up's 64 bytes and three requests' 64 bytes each, all views the registry does not own: copied.
    expect(sample(body, 'edgefleet_inference_input_bytes_total{path="copied"}')).toBe(256);
    expect(sample(body, 'edgefleet_inference_input_bytes_total{path="transferred"}')).toBe(0);
    expect(body).toMatch(/^process_cpu_user_seconds_total /m);
    await models.close();
    expect(sample((await metrics.text()).body, 'edgefleet_models_loaded')).toBe(0);
  });

  it('keeps its registry to itself: two agents in one process do not collide', async () => {
    const other = new AgentMetrics();
    other.observeLoad('x', 10);
    expect(
      sample(await other.registry.metrics(), 'edgefleet_model_load_duration_seconds_count{model="x"}'),
    ).toBe(1);
    expect(
      sample(await metrics.registry.metrics(), 'edgefleet_model_load_duration_seconds_count{model="x"}'),
    ).toBe(undefined);
  });
});

describe('AgentMetrics: the inline path', () => {
  /** A pool of one worker with this inline budget, metrics watching it, and a registry over both. */
  async function inlineAgent(inline: InlineBudgetOptions) {
    const pool = await InferencePool.start({ workers: 1, session: DEFAULT_ORT_SESSION_CONFIG, inline });
    const metrics = new AgentMetrics();
    metrics.watchPool(() => pool.stats());
    const models = new ModelRegistry({ pool, trust: null, cwd: files.root, metrics });
    return {
      pool,
      metrics,
      models,
      async close() {
        await models.close();
        await pool.close();
      },
    };
  }

  it('shows where runs went, the models running inline and the event-loop share they use', async () => {
    const { models, ...agent } = await inlineAgent({ maxRunMicros: 5000, eventLoopShare: 0.25 });
    try {
      await models.load({ url: await files.catalogue('tiny'), name: 'tiny' });
      await untilInline(agent.pool, () => models.predict('tiny', predictTensors('tiny')));
      await models.predict('tiny', predictTensors('tiny'));
      const { body } = await agent.metrics.text();
      expect(sample(body, 'edgefleet_inference_runs_total{path="inline"}')).toBeGreaterThanOrEqual(1);
      expect(sample(body, 'edgefleet_inference_runs_total{path="worker"}')).toBeGreaterThanOrEqual(16);
      expect(sample(body, 'edgefleet_inference_inline_models{path="inline"}')).toBe(1);
      expect(sample(body, 'edgefleet_inference_inline_models{path="inline_idle"}')).toBe(0);
      expect(sample(body, 'edgefleet_inference_runs_total{path="inline_idle"}')).toBe(0);
      expect(sample(body, 'edgefleet_inference_inline_event_loop_share{of="limit"}')).toBe(0.25);
      // What the last ~100 ms of inline runs took; how much depends on the machine, that it is reported does not.
      expect(sample(body, 'edgefleet_inference_inline_event_loop_share{of="used"}')).toBeTypeOf('number');
      expect(sample(body, 'edgefleet_inference_inline_over_budget_total')).toBe(0);
      expect(sample(body, 'edgefleet_inference_inline_demotions_total')).toBe(0);
      expect(sample(body, 'edgefleet_inference_inline_near_ceiling_paid_total')).toBe(0);
    } finally {
      await agent.close();
    }
  });

  it('tells idle runs (a model over the per-run ceiling, inline while nothing else is in flight) apart', async () => {
    // image-identity copies 600 KB a run: always over a 1 µs ceiling, always under a 10 ms one.
    const { models, ...agent } = await inlineAgent({
      maxRunMicros: 1,
      eventLoopShare: 0.25,
      idleMaxRunMicros: 10_000,
    });
    try {
      await models.load({ url: await files.catalogue('image-identity'), name: 'image' });
      await untilInline(agent.pool, () => models.predict('image', predictTensors('image-identity')));
      await models.predict('image', predictTensors('image-identity'));
      // Two at once: the first runs inline, the second goes to the worker.
      await loopWaits();
      await Promise.all([1, 2].map(() => models.predict('image', predictTensors('image-identity'))));
      const { body } = await agent.metrics.text();
      expect(sample(body, 'edgefleet_inference_runs_total{path="inline_idle"}')).toBe(2);
      expect(sample(body, 'edgefleet_inference_runs_total{path="inline"}')).toBe(0);
      expect(sample(body, 'edgefleet_inference_inline_models{path="inline_idle"}')).toBe(1);
      expect(sample(body, 'edgefleet_inference_inline_models{path="inline"}')).toBe(0);
      expect(sample(body, 'edgefleet_inference_inline_idle_busy_total')).toBe(1);
      expect(sample(body, 'edgefleet_inference_inline_event_loop_share{of="used"}')).toBe(0);
    } finally {
      await agent.close();
    }
  });
});

describe('duration histograms', () => {
  it('resolve the tens of microseconds a small model on the inline path takes (buckets from 10 µs to 10 s)', async () => {
    const own = new AgentMetrics({ defaultMetrics: false });
    own.observeRequest({ model: 'm', requestMs: 0.04, queueMs: 0.015, computeMs: 0.02 });
    own.observeRequest({ model: 'm', requestMs: 7000, queueMs: 0.3, computeMs: 6000 });
    const { body } = await own.text();
    const bucket = (name: string, le: string) =>
      sample(body, `edgefleet_inference_${name}_duration_seconds_bucket{le="${le}",model="m"}`);
    expect([bucket('compute', '0.00001'), bucket('compute', '0.000025'), bucket('compute', '10')]).toEqual([
      0, 1, 2,
    ]);
    expect([bucket('queue', '0.00001'), bucket('queue', '0.000025'), bucket('queue', '0.0005')]).toEqual([
      0, 1, 2,
    ]);
    expect([bucket('request', '0.000025'), bucket('request', '0.00005'), bucket('request', '5')]).toEqual([
      0, 1, 1,
    ]);
    const bounds = [...body.matchAll(/^edgefleet_inference_compute_duration_seconds_bucket\{le="([^"]+)"/gm)];
    expect(bounds.map((m) => m[1])).toEqual([
      ...['0.00001', '0.000025', '0.00005', '0.0001', '0.00025', '0.0005', '0.001', '0.0025', '0.005'],
      ...['0.01', '0.025', '0.05', '0.1', '0.25', '0.5', '1', '2.5', '5', '10', '+Inf'],
    ]);
  });
});
