import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HeartbeatComposer, sendHeartbeatRequestSchema, type ModelSource } from '../../src/fleet/index.js';
import { DEFAULT_ORT_SESSION_CONFIG, InferencePool } from '../../src/inference/index.js';
import { AgentMetrics } from '../../src/metrics/index.js';
import { ModelRegistry } from '../../src/models/index.js';
import { predictTensors, scratch } from '../models/helpers.js';

const ids = {
  deviceName: 'cam-1',
  fleetName: 'yard',
  agentVersion: '0.1.0',
  runs: () => ({ starts: 3, crashes: 1 }),
};
const metricValue = (list: { MetricName: string; Value: number }[], name: string) =>
  list.find((m) => m.MetricName === name)?.Value;

describe('HeartbeatComposer with a real registry', () => {
  let pool: InferencePool;
  let files: Awaited<ReturnType<typeof scratch>>;
  let registry: ModelRegistry;
  let metrics: AgentMetrics;

  beforeAll(async () => {
    files = await scratch('ef-telemetry-');
    pool = await InferencePool.start({ workers: 1, session: DEFAULT_ORT_SESSION_CONFIG });
    metrics = new AgentMetrics({ defaultMetrics: false });
    registry = new ModelRegistry({ pool, trust: null, cwd: files.root, metrics });
    await registry.load({ url: await files.catalogue('mlp', 'mlp'), name: 'mlp' });
  });
  afterAll(async () => {
    await registry?.close();
    await pool?.close();
    await files?.cleanup();
  });

  it('reports inferences, failures and latency since the last accepted heartbeat, and agent vitals', async () => {
    const composer = new HeartbeatComposer({ ...ids, registry, metrics });
    const empty = await composer.compose();
    expect(empty.heartbeat.Models).toEqual([
      {
        ModelName: 'mlp',
        ModelVersion: '1.0',
        ModelMetrics: [
          expect.objectContaining({ MetricName: 'InferenceCount', Value: 0 }),
          expect.objectContaining({ MetricName: 'InferenceFailures', Value: 0 }),
        ],
      },
    ]);
    composer.commit(empty.reading);

    const before = Date.now();
    for (let i = 0; i < 5; i++) await registry.predict('mlp', predictTensors('mlp'));
    await expect(registry.predict('mlp', [])).rejects.toThrow();
    const first = await composer.compose();
    expect(sendHeartbeatRequestSchema.safeParse(first.heartbeat).success).toBe(true);
    const model = first.heartbeat.Models[0]!;
    expect(metricValue(model.ModelMetrics, 'InferenceCount')).toBe(5);
    expect(metricValue(model.ModelMetrics, 'InferenceFailures')).toBe(1);
    for (const name of ['LatencyAvgMs', 'LatencyP50Ms', 'LatencyP90Ms', 'LatencyP99Ms'])
      expect(metricValue(model.ModelMetrics, name)).toBeGreaterThan(0);
    expect(model.LatestInference! * 1000).toBeGreaterThanOrEqual(before - 1000);
    const agent = first.heartbeat.AgentMetrics;
    expect(metricValue(agent, 'AgentStarts')).toBe(3);
    expect(metricValue(agent, 'AgentCrashes')).toBe(1);
    expect(metricValue(agent, 'ModelsLoaded')).toBe(1);
    expect(metricValue(agent, 'MemoryRssBytes')).toBeGreaterThan(1e6);
    expect(metricValue(agent, 'CpuUtilization')).toBeGreaterThanOrEqual(0);

    // The server did not take it: the next attempt still counts from the last accepted heartbeat.
    composer.attemptFailed();
    composer.attemptFailed();
    await registry.predict('mlp', predictTensors('mlp'));
    const retry = await composer.compose();
    expect(metricValue(retry.heartbeat.Models[0]!.ModelMetrics, 'InferenceCount')).toBe(6);
    expect(metricValue(retry.heartbeat.AgentMetrics, 'HeartbeatsMissed')).toBe(2);
    composer.commit(retry.reading);

    const quiet = await composer.compose();
    expect(metricValue(quiet.heartbeat.Models[0]!.ModelMetrics, 'InferenceCount')).toBe(0);
    expect(metricValue(quiet.heartbeat.Models[0]!.ModelMetrics, 'LatencyAvgMs')).toBeUndefined();
    expect(metricValue(quiet.heartbeat.AgentMetrics, 'HeartbeatsMissed')).toBe(0);
    // Without an activity source the latest inference is when the count was last seen to grow.
    expect(quiet.heartbeat.Models[0]!.LatestInference).toBe(retry.heartbeat.Models[0]!.LatestInference);
  });

  it("reports the data root's free space and the capture spool's backlog, and leaves them out when unknown", async () => {
    const withStorage = new HeartbeatComposer({
      ...ids,
      registry,
      storage: {
        read: () =>
          Promise.resolve({ dataRootFreeBytes: 5_000_000, captureSpoolBytes: 4096, captureSpoolBatches: 2 }),
      },
    });
    const { heartbeat } = await withStorage.compose();
    expect(metricValue(heartbeat.AgentMetrics, 'DataRootFreeBytes')).toBe(5_000_000);
    expect(metricValue(heartbeat.AgentMetrics, 'CaptureSpoolBytes')).toBe(4096);
    expect(metricValue(heartbeat.AgentMetrics, 'CaptureSpoolBatches')).toBe(2);
    expect(sendHeartbeatRequestSchema.safeParse(heartbeat).success).toBe(true);
    // A reading that fails is left out; the heartbeat goes on.
    const failing = new HeartbeatComposer({
      ...ids,
      registry,
      storage: { read: () => Promise.reject(new Error('statfs failed')) },
    });
    const names = (await failing.compose()).heartbeat.AgentMetrics.map((m) => m.MetricName);
    expect(names).toContain('CpuUtilization');
    expect(names).not.toContain('DataRootFreeBytes');
  });

  it('counts a reloaded model from zero and takes latest times from an activity source', async () => {
    const at = { inference: Date.UTC(2025, 0, 1, 12), sample: Date.UTC(2025, 0, 1, 11) };
    const composer = new HeartbeatComposer({
      ...ids,
      registry,
      activity: {
        snapshot: () => [{ model: 'mlp', lastInferenceAt: at.inference, lastSampleAt: at.sample }],
      },
    });
    await registry.predict('mlp', predictTensors('mlp'));
    const loaded = await composer.compose();
    composer.commit(loaded.reading);
    expect(loaded.heartbeat.Models[0]).toMatchObject({
      LatestInference: at.inference / 1000,
      LatestSampleTime: at.sample / 1000,
    });

    await registry.unload('mlp');
    await registry.load({ url: await files.catalogue('mlp', 'mlp'), name: 'mlp' });
    await registry.predict('mlp', predictTensors('mlp'));
    const reloaded = await composer.compose();
    expect(metricValue(reloaded.heartbeat.Models[0]!.ModelMetrics, 'InferenceCount')).toBe(1);
  });
});

describe('HeartbeatComposer output', () => {
  const word = fc.stringMatching(/^[a-zA-Z0-9_.\- ]{0,20}$/);
  const source = fc.array(
    fc.record({
      name: fc.oneof(fc.stringMatching(/^[a-zA-Z0-9]{1,8}(-[a-zA-Z0-9]{1,8}){0,2}$/), word),
      version: word,
      succeeded: fc.nat(1e9),
      failed: fc.nat(1e9),
      loadedAt: fc.integer({ min: 0, max: 2e12 }),
    }),
    { maxLength: 300 },
  );

  it('always passes the SendHeartbeat schema; what cannot be sent is listed as skipped', async () => {
    await fc.assert(
      fc.asyncProperty(source, async (models) => {
        const registry: ModelSource = {
          list: () =>
            models.map((m) => ({
              name: m.name,
              version: m.version,
              loadedAt: new Date(m.loadedAt),
              requests: { succeeded: m.succeeded, failed: m.failed },
            })),
        };
        const composed = await new HeartbeatComposer({ ...ids, registry }).compose();
        const parsed = sendHeartbeatRequestSchema.safeParse(composed.heartbeat);
        expect(parsed.error?.message).toBeUndefined();
        expect(composed.heartbeat.Models.length + composed.skipped.length).toBe(models.length);
        expect(composed.heartbeat.Models.length).toBeLessThanOrEqual(256);
      }),
      { numRuns: 60 },
    );
  });
});
