import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TEST_MODELS, slowModelInput, writeTestModel } from '@edgefleet/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DEFAULT_ORT_SESSION_CONFIG,
  InferencePool,
  type PoolEvent,
  type RunResult,
} from '../../src/inference/index.js';
import {
  asPoolTensor,
  inferenceError,
  scalable,
  scalableModel,
  scalableReference,
} from '../support/pool-models.js';

let dir: string;
let pool: InferencePool;
const events: PoolEvent[] = [];
const paths: Record<string, string> = {};

const slowInput = () => [asPoolTensor('x', slowModelInput())];
const tinyInput = () => [asPoolTensor('x', TEST_MODELS.tiny.sampleInputs().x!)];

const outputFloats = (result: RunResult) => new Float32Array(result.outputs[0]!.data.slice().buffer);

/** Resolves once some worker of the pool is running a request. */
async function untilBusy(of: InferencePool): Promise<void> {
  while (!of.stats().workers.some((w) => w.busy)) await new Promise((resolve) => setTimeout(resolve, 1));
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'agent-pool-'));
  for (const model of ['tiny', 'slow', 'image-identity'] as const)
    paths[model] = await writeTestModel(model, dir);
  paths.scalable = join(dir, 'scalable.onnx');
  await writeFile(paths.scalable, scalableModel());
  pool = await InferencePool.start({
    workers: 2,
    session: DEFAULT_ORT_SESSION_CONFIG,
    maxQueuedPerModel: 2,
    onEvent: (event) => events.push(event),
  });
});
afterAll(async () => {
  await pool?.close();
  await rm(dir, { recursive: true, force: true });
});

describe('InferencePool', () => {
  it('loads a model in a worker and runs it with exact outputs, as little-endian bytes with the real shape', async () => {
    const info = await pool.loadModel('tiny#1', paths.tiny!, 1);
    expect(info).toEqual({
      inputs: [{ name: 'x', type: 'float32', shape: [1, 16] }],
      outputs: [{ name: 'y', type: 'float32', shape: [1, 16] }],
      workers: [0],
    });
    const sample = TEST_MODELS.tiny.sampleInputs();
    const result = await pool.run('tiny#1', [asPoolTensor('x', sample.x!)]);
    const expected = TEST_MODELS.tiny.reference(sample).y!;
    expect(result.outputs.map((o) => [o.name, o.dataType, o.shape])).toEqual([['y', 'FLOAT32', [1, 16]]]);
    const bytes = Buffer.from(result.outputs[0]!.data);
    expected.data.forEach((value, i) => expect(bytes.readFloatLE(i * 4)).toBe(value));
    await pool.unloadModel('tiny#1');
    expect((await inferenceError(pool.run('tiny#1', tinyInput()))).kind).toBe('unknown-model');
  });

  it('spreads instances over distinct workers and sends concurrent requests to an idle one', async () => {
    const info = await pool.loadModel('slow#1', paths.slow!, 2);
    expect(info.workers).toEqual([0, 1]);
    const [a, b] = await Promise.all([pool.run('slow#1', slowInput()), pool.run('slow#1', slowInput())]);
    expect(new Set([a!.worker, b!.worker])).toEqual(new Set([0, 1]));
    // Both ran at once: neither waited for the other's compute.
    expect(Math.max(a!.queueMs, b!.queueMs)).toBeLessThan(Math.min(a!.computeMs, b!.computeMs));
    await pool.unloadModel('slow#1');
  });

  it('queues requests beyond the idle instances, and refuses more than the queue limit', async () => {
    await pool.loadModel('slow#2', paths.slow!, 1);
    const running = pool.run('slow#2', slowInput());
    const queued = [pool.run('slow#2', slowInput()), pool.run('slow#2', slowInput())];
    const refused = await inferenceError(pool.run('slow#2', slowInput()));
    expect(refused.kind).toBe('queue-full');
    expect(refused.message).toMatch(/2 requests for model slow#2 are already waiting .* limit is 2/);
    const results = await Promise.all([running, ...queued]);
    // The queued ones waited roughly one compute time each, the first none: queue time is told apart.
    expect(results[2]!.queueMs).toBeGreaterThan(results[0]!.queueMs);
    expect(results[2]!.queueMs).toBeGreaterThan(results[0]!.computeMs / 2);
    await pool.unloadModel('slow#2');
  });

  it('copies a view into a larger buffer once, transfers a whole buffer given up, shares a SharedArrayBuffer', async () => {
    await pool.loadModel('image#1', paths['image-identity']!, 1);
    const image = TEST_MODELS['image-identity'].sampleInputs().image!;
    const bytes = image.data.byteLength;
    const run = async (data: Uint8Array, transferInputs: boolean) => {
      const result = await pool.run(
        'image#1',
        [{ name: 'image', dataType: 'FLOAT32', shape: image.shape, data }],
        {
          transferInputs,
        },
      );
      expect(Buffer.from(result.outputs[0]!.data).equals(Buffer.from(image.data.buffer))).toBe(true);
    };
    let before = pool.stats().inputBytes;

    // A view into a bigger buffer the caller keeps: one copy; the caller's buffer is untouched.
    const big = new Uint8Array(bytes + 64);
    big.set(new Uint8Array(image.data.buffer), 32);
    await run(big.subarray(32, 32 + bytes), true);
    let after = pool.stats().inputBytes;
    expect([
      after.copies - before.copies,
      after.copied - before.copied,
      after.transferred - before.transferred,
    ]).toEqual([1, bytes, 0]);
    expect(big.byteLength).toBe(bytes + 64);

    // A whole buffer, not given up: copied.
    before = after;
    const kept = new Uint8Array(image.data.buffer.slice(0));
    await run(kept, false);
    after = pool.stats().inputBytes;
    expect(after.copied - before.copied).toBe(bytes);
    expect(kept.byteLength).toBe(bytes);

    // A whole buffer given up: transferred, no copy, detached here.
    before = after;
    const given = new Uint8Array(image.data.buffer.slice(0));
    await run(given, true);
    after = pool.stats().inputBytes;
    expect([after.copies - before.copies, after.transferred - before.transferred]).toEqual([0, bytes]);
    expect(given.byteLength).toBe(0);

    // Views into a buffer given up in full (a gRPC message of its own): the buffer travels once, no copy.
    before = after;
    const message = new Uint8Array(bytes + 64);
    message.set(new Uint8Array(image.data.buffer), 40);
    const inMessage = message.subarray(40, 40 + bytes);
    const owned = await pool.run(
      'image#1',
      [{ name: 'image', dataType: 'FLOAT32', shape: image.shape, data: inMessage }],
      { ownedBuffer: message.buffer },
    );
    expect(Buffer.from(owned.outputs[0]!.data).equals(Buffer.from(image.data.buffer))).toBe(true);
    after = pool.stats().inputBytes;
    expect([after.copies - before.copies, after.transferred - before.transferred]).toEqual([0, bytes]);
    expect(message.byteLength).toBe(0);

    // A SharedArrayBuffer: not copied on this thread (the worker copies it once).
    before = after;
    const shared = new Uint8Array(new SharedArrayBuffer(bytes + 8), 8, bytes);
    shared.set(new Uint8Array(image.data.buffer));
    await run(shared, true);
    after = pool.stats().inputBytes;
    expect([after.copies - before.copies, after.shared - before.shared]).toEqual([0, bytes]);
    await pool.unloadModel('image#1');
  });

  it('reads unaligned input bytes correctly (they are realigned inside the worker)', async () => {
    await pool.loadModel('tiny#2', paths.tiny!, 1);
    const sample = TEST_MODELS.tiny.sampleInputs().x!;
    const shared = new Uint8Array(new SharedArrayBuffer(64 + 3), 3, 64);
    shared.set(new Uint8Array(sample.data.buffer));
    const result = await pool.run('tiny#2', [
      { name: 'x', dataType: 'FLOAT32', shape: [1, 16], data: shared },
    ]);
    const expected = TEST_MODELS.tiny.reference({ x: sample }).y!.data;
    expect(new Float32Array(result.outputs[0]!.data.slice().buffer)).toEqual(expected);
    await pool.unloadModel('tiny#2');
  });

  it('reports a model ONNX Runtime refuses as model-rejected, and keeps nothing of it', async () => {
    const garbage = join(dir, 'garbage.onnx');
    await writeFile(garbage, 'not a model');
    const error = await inferenceError(pool.loadModel('bad#1', garbage, 2));
    expect(error.kind).toBe('model-rejected');
    expect(error.message).toMatch(/protobuf|parse|load model/i);
    expect(pool.stats().models).toEqual([]);
    expect(pool.stats().workers.flatMap((w) => w.sessions)).toEqual([]);
  });

  it('replaces a worker that stops, failing only what it was running, and reloads its sessions', async () => {
    await pool.loadModel('slow#3', paths.slow!, 1);
    await pool.loadModel('tiny#3', paths.tiny!, 2);
    const victim = pool.stats().workers.find((w) => w.sessions.includes('slow#3'))!.index;
    const doomed = pool.run('slow#3', slowInput());
    await untilBusy(pool);
    const restartsBefore = pool.stats().workers[victim]!.restarts;
    await pool.recycleWorker(victim);
    const error = await inferenceError(doomed);
    expect(error.kind).toBe('worker-died');
    // Queued meanwhile: runs once the replacement has reloaded the session.
    const after = await pool.run('slow#3', slowInput());
    expect(after.worker).toBe(victim);
    while (!events.some((e) => e.type === 'worker-restarted' && e.worker === victim)) {
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    expect(pool.stats().workers[victim]).toMatchObject({
      restarts: restartsBefore + 1,
      ready: true,
      sessions: expect.arrayContaining(['slow#3', 'tiny#3']),
    });
    expect(events).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ type: 'worker-exit', worker: victim, failed: 1 }),
        expect.objectContaining({ type: 'worker-restarted', worker: victim, reloaded: ['slow#3', 'tiny#3'] }),
      ]),
    );
    await pool.unloadModel('slow#3');
    await pool.unloadModel('tiny#3');
  });

  it('fails what is pending with closed when it closes', async () => {
    const own = await InferencePool.start({ workers: 1, session: DEFAULT_ORT_SESSION_CONFIG });
    await own.loadModel('slow', paths.slow!, 1);
    const running = inferenceError(own.run('slow', slowInput()));
    const queued = inferenceError(own.run('slow', slowInput()));
    await untilBusy(own);
    await own.close();
    expect((await running).kind).toBe('closed');
    expect((await queued).kind).toBe('closed');
    expect((await inferenceError(own.run('slow', slowInput()))).kind).toBe('closed');
  });
});

describe('InferencePool: requests handed ahead to a busy worker', () => {
  it('posts the next request of a fast model to its busy worker at once; the queue limit counts only the rest', async () => {
    // Any measured run counts as fast here, so the test does not depend on this machine's speed.
    const own = await InferencePool.start({
      workers: 1,
      session: DEFAULT_ORT_SESSION_CONFIG,
      maxQueuedPerModel: 1,
      handAheadMaxComputeMs: 60_000,
    });
    try {
      await own.loadModel('fast', paths.scalable!, 1);
      // Nothing is handed ahead before a run has shown the model to be fast.
      const first = [own.run('fast', scalable(1)), own.run('fast', scalable(1))];
      expect(own.stats().models).toEqual([expect.objectContaining({ running: 1, queued: 1 })]);
      await Promise.all(first);

      const runs = [own.run('fast', scalable(1)), own.run('fast', scalable(2)), own.run('fast', scalable(3))];
      expect(own.stats().models).toEqual([expect.objectContaining({ running: 2, queued: 1 })]);
      expect((await inferenceError(own.run('fast', scalable(1)))).kind).toBe('queue-full');
      const results = await Promise.all(runs);
      results.forEach((result, i) => expect(outputFloats(result)).toEqual(scalableReference(i + 1)));
    } finally {
      await own.close();
    }
  });

  it('hands nothing ahead to a worker running a model whose runs are long', async () => {
    // No run counts as fast here (every measured run is longer than a nanosecond), whatever this machine's speed.
    const own = await InferencePool.start({
      workers: 1,
      session: DEFAULT_ORT_SESSION_CONFIG,
      handAheadMaxComputeMs: 1e-6,
    });
    try {
      await own.loadModel('long', paths.scalable!, 1);
      await own.loadModel('fast', paths.tiny!, 1);
      await own.run('long', scalable(1000));
      await own.run('fast', tinyInput());
      const long = own.run('long', scalable(1000));
      const fast = own.run('fast', tinyInput());
      expect(own.stats().models).toEqual([
        expect.objectContaining({ key: 'long', running: 1, queued: 0 }),
        expect.objectContaining({ key: 'fast', running: 0, queued: 1 }),
      ]);
      await Promise.all([long, fast]);
    } finally {
      await own.close();
    }
  });

  it('fails the request handed ahead, unrun, when its worker stops; the replacement serves the next', async () => {
    const seen: PoolEvent[] = [];
    const own = await InferencePool.start({
      workers: 1,
      session: DEFAULT_ORT_SESSION_CONFIG,
      onEvent: (event) => seen.push(event),
      // Hand ahead whatever the runs measure: on a loaded machine the first runs can take over the default 2 ms,
      // and this test is about what a worker's death does to a request handed ahead, not about that rule.
      handAheadMaxComputeMs: 60_000,
    });
    try {
      await own.loadModel('fast', paths.scalable!, 1);
      await own.run('fast', scalable(1));
      // A run of a model known to be fast takes long this once; the request behind it was already handed over.
      const running = inferenceError(own.run('fast', scalable(2000)));
      const ahead = inferenceError(own.run('fast', scalable(1)));
      expect(own.stats().models[0]).toMatchObject({ running: 2, queued: 0 });
      await untilBusy(own);
      await own.recycleWorker(0);
      expect(await running).toMatchObject({
        kind: 'worker-died',
        message: expect.stringMatching(/running this request stopped/),
      });
      expect(await ahead).toMatchObject({
        kind: 'worker-died',
        message: expect.stringMatching(/before running it; it may be retried/),
      });
      expect(seen).toContainEqual(expect.objectContaining({ type: 'worker-exit', worker: 0, failed: 2 }));
      expect(outputFloats(await own.run('fast', scalable(4)))).toEqual(scalableReference(4));
    } finally {
      await own.close();
    }
  });
});

describe('InferencePool: hot wait', () => {
  it('refuses a hot wait outside 0 to 10000 microseconds', async () => {
    for (const hotWaitMicros of [-1, 0.5, 10_001]) {
      await expect(
        InferencePool.start({ workers: 1, session: DEFAULT_ORT_SESSION_CONFIG, hotWaitMicros }),
      ).rejects.toThrow(/hotWaitMicros must be a whole number of microseconds from 0 to 10000/);
    }
  });

  it('serves requests exactly while workers poll for them, goes back to sleep, and stops cleanly', async () => {
    const own = await InferencePool.start({
      workers: 2,
      session: DEFAULT_ORT_SESSION_CONFIG,
      hotWaitMicros: 5000,
    });
    try {
      await own.loadModel('fast', paths.scalable!, 2);
      await own.loadModel('tiny', paths.tiny!, 1);
      // Back to back, and concurrently, so that requests meet workers in their hot wait, and control messages too.
      for (let i = 0; i < 20; i++) {
        const rows = 1 + (i % 3);
        expect(outputFloats(await own.run('fast', scalable(rows)))).toEqual(scalableReference(rows));
      }
      const batch = await Promise.all(
        Array.from({ length: 12 }, (_, i) => own.run('fast', scalable(1 + (i % 4)))),
      );
      batch.forEach((result, i) => expect(outputFloats(result)).toEqual(scalableReference(1 + (i % 4))));
      await own.unloadModel('tiny');
      await own.loadModel('tiny', paths.tiny!, 2);
      expect(outputFloats(await own.run('tiny', tinyInput()))).toEqual(
        TEST_MODELS.tiny.reference(TEST_MODELS.tiny.sampleInputs()).y!.data,
      );
      // The polling is bounded: once requests stop, every worker goes back to sleep.
      while (own.stats().workers.some((w) => w.hot)) await new Promise((resolve) => setTimeout(resolve, 1));
      // A worker stopped right after a run (in its hot wait, if a core was to spare) is replaced and serves.
      await own.run('fast', scalable(1));
      await own.recycleWorker(own.stats().workers.findIndex((w) => w.sessions.includes('fast')));
      expect(outputFloats(await own.run('fast', scalable(2)))).toEqual(scalableReference(2));
    } finally {
      await own.close();
    }
  });
});
