import { TEST_MODELS, type TestModelTensor } from '@edgefleet/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_ORT_SESSION_CONFIG, InferencePool } from '../../src/inference/index.js';
import { AgentError, ModelRegistry } from '../../src/models/index.js';
import { outputValues, predictTensors, scratch } from './helpers.js';

// ModelLoader asks the pool for dynamic batching by the name a model is loaded under (edgefleet_dynamic_batching),
// with a real pool of one worker (inline runs off: every request goes to the worker, where they are joined).

let pool: InferencePool;
let files: Awaited<ReturnType<typeof scratch>>;
let packages: { mlp: string; tiny: string };
const logged: Array<{ level: 'info' | 'warn'; message: string; details?: Record<string, unknown> }> = [];
let models: ModelRegistry;

beforeAll(async () => {
  files = await scratch('agent-batching-');
  packages = { mlp: await files.catalogue('mlp'), tiny: await files.catalogue('tiny') };
  pool = await InferencePool.start({
    workers: 1,
    session: DEFAULT_ORT_SESSION_CONFIG,
    inline: { maxRunMicros: 0, eventLoopShare: 0.25, idleMaxRunMicros: 0 },
  });
  models = new ModelRegistry({
    pool,
    trust: null,
    cwd: files.root,
    dynamicBatching: [
      { model: 'classifier', maxBatchSize: 4 },
      { model: 'fixed', maxBatchSize: 4, dimension: 'batch' },
    ],
    logger: {
      info: (message, details) => logged.push({ level: 'info', message, ...(details && { details }) }),
      warn: (message, details) => logged.push({ level: 'warn', message, ...(details && { details }) }),
    },
  });
}, 60_000);
afterAll(async () => {
  await models?.close();
  await pool?.close();
  await files?.cleanup();
});

describe('dynamic batching through ModelRegistry and ModelLoader', () => {
  it('batches the model loaded under a name with a rule, logging its dimension, and answers each request with its own result', async () => {
    await models.load({ url: packages.mlp, name: 'classifier' });
    await models.load({ url: packages.mlp, name: 'unbatched' });
    const batching = logged.filter(
      (l) => l.level === 'info' && /batches its waiting requests/.test(l.message),
    );
    expect(batching).toHaveLength(1);
    expect(batching[0]!.message).toMatch(/"classifier".*dimension "batch", up to 4 per run/);
    expect(batching[0]!.details).toEqual({ model: 'classifier', dimension: 'batch', maxBatchSize: 4 });

    // Started in one turn of the event loop: the first runs, the others wait for the one worker together.
    const inputs = Array.from({ length: 12 }, (_, i): TestModelTensor => {
      const rows = 1 + (i % 2);
      const data = Float32Array.from({ length: rows * 4 }, (_, k) =>
        Math.fround(1 + ((i * 5 + k) % 17) * 0.4),
      );
      return { dataType: 'FLOAT32', shape: [rows, 4], data };
    });
    const before = pool.stats().batches.requests;
    const results = await Promise.all(
      inputs.map((features) => models.predict('classifier', predictTensors('mlp', { features }))),
    );
    results.forEach((result, i) => {
      const expected = TEST_MODELS.mlp.reference({ features: inputs[i]! }).probabilities!;
      const got = outputValues(result.outputs[0]!, expected);
      expect(result.outputs[0]!.shape).toEqual(expected.shape);
      got.forEach((value, k) =>
        expect(Math.abs(Number(value) - Number(expected.data[k]))).toBeLessThanOrEqual(1e-5),
      );
    });
    expect(pool.stats().batches.requests).toBeGreaterThan(before);
  });

  it('fails the load of a model without the batch dimension its rule names, naming the model; the same model under another name loads', async () => {
    const error = await models.load({ url: packages.tiny, name: 'fixed' }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(AgentError);
    expect((error as AgentError).code).toBe('FAILED_PRECONDITION');
    expect((error as AgentError).message).toMatch(
      /\(for "fixed"\) cannot be loaded with the dynamic batching edgefleet_dynamic_batching asks for it: .*cannot be batched: .*dimension "batch".*; remove its rule to load it unbatched$/,
    );
    expect(models.list().map((m) => m.name)).not.toContain('fixed');
    await models.load({ url: packages.tiny, name: 'tiny' });
    expect(models.list().map((m) => m.name)).toContain('tiny');
  });
});

describe('a batching rule with its own sessions', () => {
  it('loads its model with the rule’s instances; other models keep edgefleet_instances_per_model', async () => {
    const twoWorkers = await InferencePool.start({ workers: 2, session: DEFAULT_ORT_SESSION_CONFIG });
    const registry = new ModelRegistry({
      pool: twoWorkers,
      trust: null,
      cwd: files.root,
      instancesPerModel: 2,
      dynamicBatching: [{ model: 'single', maxBatchSize: 4, instances: 1 }],
    });
    try {
      await registry.load({ url: packages.mlp, name: 'single' });
      await registry.load({ url: packages.mlp, name: 'double' });
      expect(registry.describe('single').instances).toBe(1);
      expect(registry.describe('double').instances).toBe(2);
    } finally {
      await registry.close();
      await twoWorkers.close();
    }
  });
});
