import {
  OnnxModelBuilder,
  buildSlowModel,
  slowModelInput,
  slowModelReference,
  type TestModelTensor,
} from '@edgefleet/core';
import { expect } from 'vitest';
import { InferenceError, type InferencePool, type PoolTensor } from '../../src/inference/index.js';

/** A test-model tensor as the inference pool takes it (the same bytes, viewed as a Uint8Array). */
export function asPoolTensor(name: string, tensor: TestModelTensor): PoolTensor {
  const { data } = tensor;
  return {
    name,
    dataType: tensor.dataType,
    shape: tensor.shape,
    data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
  };
}

/**
 * The slow model's computation (y = x · P + 1, 32 times, P a cyclic shift) on a dynamic number of rows: its run
 * time grows with the rows, from microseconds for one row to tens of milliseconds for a thousand.
 */
export const SCALABLE = { size: 128, repeats: 32 };
export function scalableModel(): Uint8Array {
  return buildSlowModel({ ...SCALABLE, rows: 1 }, { name: 'scalable', dynamicRows: true });
}
const scalableInput = (rows: number) => slowModelInput({ ...SCALABLE, rows });
/** The scalable model's input with `rows` rows, as pool tensors. */
export const scalable = (rows: number) => [asPoolTensor('x', scalableInput(rows))];
/**
 * The scalable model's computation behind a Tile whose repeats are an input: x [1, 128] and `repeats` int64 [2]
 * (= [rows, 1]) make a run as long as `rows` rows, with the same input shapes every time, then a Reshape to the
 * `shape` input (int64 [2]). A cost, or a failure after the work, set by the inputs' values, which no size rule sees.
 */
export function tiledModel(): Uint8Array {
  const { size, repeats } = SCALABLE;
  const shift = new Float32Array(size * size);
  for (let i = 0; i < size; i++) shift[i * size + ((i + 1) % size)] = 1;
  const builder = new OnnxModelBuilder({ graphName: 'tiled' })
    .input('x', 'FLOAT32', [1, size])
    .input('repeats', 'INT64', [2])
    .input('shape', 'INT64', [2])
    .initializer('shift', 'FLOAT32', [size, size], shift)
    .initializer('one', 'FLOAT32', [], new Float32Array([1]))
    .node('Tile', ['x', 'repeats'], ['step_0']);
  for (let step = 1; step <= repeats; step++)
    builder
      .node('MatMul', [`step_${step - 1}`, 'shift'], [`shifted_${step}`])
      .node('Add', [`shifted_${step}`, 'one'], [`step_${step}`]);
  return builder
    .node('Reshape', [`step_${repeats}`, 'shape'], ['y'])
    .output('y', 'FLOAT32', ['rows', size])
    .build();
}
const int64s = (name: string, values: readonly number[]): PoolTensor => {
  const data = BigInt64Array.from(values.map(BigInt));
  return { name, dataType: 'INT64', shape: [values.length], data: new Uint8Array(data.buffer) };
};
/** The tiled model's inputs for `rows` rows; `failAfterRun` asks for a shape the result cannot take. */
export const tiled = (rows: number, failAfterRun = false) => [
  asPoolTensor('x', scalableInput(1)),
  int64s('repeats', [rows, 1]),
  int64s('shape', failAfterRun ? [7, 7] : [-1, SCALABLE.size]),
];

/** What the scalable model returns for `scalable(rows)`, computed in JavaScript. */
export const scalableReference = (rows: number) =>
  slowModelReference(scalableInput(rows), { ...SCALABLE, rows }).data as Float32Array;
/** What the tiled model returns for `tiled(rows)`: the scalable model's one-row answer, `rows` times. */
export function tiledReference(rows: number): Float32Array {
  const row = scalableReference(1);
  const all = new Float32Array(rows * row.length);
  for (let r = 0; r < rows; r++) all.set(row, r * row.length);
  return all;
}

/** The InferenceError `promise` fails with; fails the test when it succeeds or fails with anything else. */
export async function inferenceError(promise: Promise<unknown>): Promise<InferenceError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(InferenceError);
  return error as InferenceError;
}

/**
 * Lets the event loop wait for I/O with nothing to do, as it does between a lone client's requests: timers of 2 ms
 * until its idle time (what idle runs are admitted by, InlineBudget.admitIdle) has grown. One timer is not enough:
 * on a loaded machine this thread may be off the CPU past the timer's time, and then the loop finds it due
 * without ever blocking, which libuv does not count as idle.
 */
export async function loopWaits(): Promise<void> {
  const idleBefore = performance.eventLoopUtilization().idle;
  do await new Promise((resolve) => setTimeout(resolve, 2));
  while (performance.eventLoopUtilization().idle <= idleBefore);
}

/**
 * Calls `step` (a request) until the pool runs `key` inline (any model when absent; a registry's `name#n` key
 * matches its name), letting the event loop wait in between, as a lone client does (idle runs need that wait).
 * Fails, saying what the inline path shows, after `maxSteps` requests.
 */
export async function untilInline(
  pool: InferencePool,
  step: () => Promise<unknown>,
  key?: string,
  maxSteps = 2000,
): Promise<void> {
  const matches = (k: string) => key === undefined || k === key || k.startsWith(`${key}#`);
  for (let steps = 0; !pool.stats().inline.models.some((m) => matches(m.key)); steps++) {
    if (steps === maxSteps)
      throw new Error(
        `${key ?? 'no model'} ran inline after ${maxSteps} requests: ${JSON.stringify(pool.stats().inline)}`,
      );
    await step();
    await loopWaits();
  }
}
