import { TEST_MODELS, slowModelInput, slowModelReference } from '@edgefleet/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_ORT_SESSION_CONFIG, InferencePool } from '../../src/inference/index.js';
import { AgentMetrics } from '../../src/metrics/index.js';
import { AgentError, ModelRegistry } from '../../src/models/index.js';
import { bytesOf, predictTensors, scratch } from './helpers.js';

let pool: InferencePool;
let files: Awaited<ReturnType<typeof scratch>>;
let slowPackage: string;
let mlpPackage: string;
let tinyPackage: string;

beforeAll(async () => {
  files = await scratch('agent-concurrency-');
  pool = await InferencePool.start({ workers: 2, session: DEFAULT_ORT_SESSION_CONFIG });
  slowPackage = await files.catalogue('slow');
  mlpPackage = await files.catalogue('mlp');
  tinyPackage = await files.catalogue('tiny');
});
afterAll(async () => {
  await pool?.close();
  await files?.cleanup();
});

const slowTensors = () => predictTensors('slow', { x: slowModelInput() });

/** Resolves once the pool reports a request of this model running on a worker. */
async function untilRunning(key: string): Promise<void> {
  for (;;) {
    const model = pool.stats().models.find((m) => m.key.startsWith(`${key}#`));
    if (model && model.running > 0) return;
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

async function settle<T>(promises: Promise<T>[]) {
  return Promise.allSettled(promises);
}

describe('ModelRegistry under concurrent calls', () => {
  it('two concurrent loads of one name: one succeeds, the other gets ALREADY_EXISTS', async () => {
    const models = new ModelRegistry({ pool, trust: null, cwd: files.root });
    const [first, second] = await settle([
      models.load({ url: tinyPackage, name: 'same' }),
      models.load({ url: mlpPackage, name: 'same' }),
    ]);
    expect(first!.status).toBe('fulfilled');
    expect(second!.status).toBe('rejected');
    const error = (second as PromiseRejectedResult).reason as AgentError;
    expect(error.code).toBe('ALREADY_EXISTS');
    expect(error.message).toMatch(/"same" is already being loaded/);
    expect(models.list().map((m) => [m.name, m.packageName])).toEqual([['same', 'tiny']]);
    await models.close();
  });

  it('8 concurrent predicts over 2 instances each get their own correct answer', async () => {
    const models = new ModelRegistry({ pool, trust: null, cwd: files.root, instancesPerModel: 2 });
    expect((await models.load({ url: mlpPackage, name: 'mlp' })).instances).toBe(2);
    const batches = Array.from({ length: 8 }, (_, i) => {
      const features = new Float32Array(4 * (i + 1)).map((_, k) => ((k * 7 + i * 3) % 50) / 7);
      return { features: { dataType: 'FLOAT32' as const, shape: [i + 1, 4], data: features } };
    });
    const results = await Promise.all(
      batches.map((inputs) => models.predict('mlp', predictTensors('mlp', inputs))),
    );
    results.forEach((result, i) => {
      const want = TEST_MODELS.mlp.reference(batches[i]!).probabilities!;
      const got = new Float32Array(result.outputs[0]!.data.slice().buffer);
      expect(result.outputs[0]!.shape).toEqual([i + 1, 3]);
      got.forEach((v, k) => expect(Math.abs(v - (want.data as Float32Array)[k]!)).toBeLessThan(1e-5));
    });
    await models.close();
  });

  it('unload refuses new predicts at once (NOT_FOUND) and waits for those in flight', async () => {
    const models = new ModelRegistry({ pool, trust: null, cwd: files.root });
    await models.load({ url: slowPackage, name: 'slow' });
    const inflight = [models.predict('slow', slowTensors()), models.predict('slow', slowTensors())];
    await untilRunning('slow');
    const unloading = models.unload('slow');
    const late = await models.predict('slow', slowTensors()).catch((e: unknown) => e as AgentError);
    expect(late).toBeInstanceOf(AgentError);
    expect((late as AgentError).code).toBe('NOT_FOUND');
    const results = await settle(inflight);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled']);
    const expected = slowModelReference(slowModelInput()).data as Float32Array;
    for (const result of results) {
      const output = (result as PromiseFulfilledResult<Awaited<(typeof inflight)[0]>>).value.outputs[0]!;
      expect(new Float32Array(output.data.slice().buffer)).toEqual(expected);
    }
    await unloading;
    expect(models.list()).toEqual([]);
    expect(pool.stats().models).toEqual([]);
  });

  it('when the unload wait runs out, requests still queued fail with NOT_FOUND; the running one completes', async () => {
    const models = new ModelRegistry({ pool, trust: null, cwd: files.root, unloadTimeoutMs: 0 });
    await models.load({ url: slowPackage, name: 'slow' });
    const requests = settle([0, 1, 2].map(() => models.predict('slow', slowTensors())));
    await untilRunning('slow');
    await models.unload('slow');
    const results = await requests;
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'rejected']);
    for (const result of results.slice(1)) {
      const error = (result as PromiseRejectedResult).reason as AgentError;
      expect(error.code).toBe('NOT_FOUND');
      expect(error.message).toMatch(/was unloaded before this request ran/);
    }
  });

  it('a name can be loaded again while its previous model is still draining', async () => {
    const models = new ModelRegistry({ pool, trust: null, cwd: files.root });
    await models.load({ url: slowPackage, name: 'swap' });
    const running = models.predict('swap', slowTensors());
    await untilRunning('swap');
    const unloading = models.unload('swap');
    await models.load({ url: tinyPackage, name: 'swap' });
    expect(models.describe('swap').packageName).toBe('tiny');
    expect((await models.predict('swap', predictTensors('tiny'))).outputs[0]!.shape).toEqual([1, 16]);
    await expect(running).resolves.toMatchObject({ model: { name: 'swap' } });
    await unloading;
    expect(models.describe('swap').packageName).toBe('tiny');
    await models.close();
  });

  it('keeps the event loop responsive while the slow model runs', async () => {
    const models = new ModelRegistry({ pool, trust: null, cwd: files.root });
    await models.load({ url: slowPackage, name: 'slow' });
    let maxLag = 0;
    let last = performance.now();
    const timer = setInterval(() => {
      const now = performance.now();
      maxLag = Math.max(maxLag, now - last - 5);
      last = now;
    }, 5);
    const result = await models.predict('slow', slowTensors());
    clearInterval(timer);
    await models.close();
    // Had the model run on this thread, the timer would have stalled for the whole compute time.
    expect(result.timings.computeMs).toBeGreaterThan(20);
    expect(maxLag).toBeLessThan(result.timings.computeMs / 2);
  });

  it('a worker that dies mid-request fails it with INTERNAL; the next predict works', async () => {
    const metrics = new AgentMetrics({ defaultMetrics: false });
    const models = new ModelRegistry({ pool, trust: null, cwd: files.root, metrics });
    await models.load({ url: slowPackage, name: 'slow' });
    const doomed = models.predict('slow', slowTensors());
    await untilRunning('slow');
    const worker = pool.stats().workers.find((w) => w.busy)!;
    await pool.recycleWorker(worker.index);
    const error = await doomed.catch((e: unknown) => e as AgentError);
    expect(error).toBeInstanceOf(AgentError);
    expect((error as AgentError).code).toBe('INTERNAL');
    expect((error as AgentError).message).toMatch(/worker running this request stopped .*may be retried/);
    // The replacement worker reloads the session; a request made meanwhile waits for it.
    const next = await models.predict('slow', slowTensors());
    expect(new Float32Array(next.outputs[0]!.data.slice().buffer)).toEqual(
      slowModelReference(slowModelInput()).data,
    );
    expect(pool.stats().workers[worker.index]!.restarts).toBe(1);
    const text = await metrics.registry.metrics();
    expect(text).toMatch(/edgefleet_inference_request_failure_total\{model="slow",code="INTERNAL"\} 1/);
    expect(text).toMatch(/edgefleet_inference_request_success_total\{model="slow"\} 1/);
    await models.close();
  });

  it('hands whole input buffers to the worker without copying when the caller gives them up', async () => {
    const models = new ModelRegistry({ pool, trust: null, cwd: files.root });
    await models.load({ url: tinyPackage, name: 'tiny' });
    const before = pool.stats().inputBytes;
    const owned = new Float32Array(16).fill(1);
    await models.predict(
      'tiny',
      [{ name: Buffer.from('x'), dataType: 'FLOAT32', shape: [1, 16], data: bytesOf(owned) }],
      {
        transferInputs: true,
      },
    );
    expect(owned.buffer.byteLength).toBe(0); // transferred: detached here
    const after = pool.stats().inputBytes;
    expect(after.transferred - before.transferred).toBe(64);
    expect(after.copies).toBe(before.copies);
    await models.close();
  });
});
