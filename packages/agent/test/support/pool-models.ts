import { buildSlowModel, slowModelInput, slowModelReference, type TestModelTensor } from '@edgefleet/core';
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
/** What the scalable model returns for `scalable(rows)`, computed in JavaScript. */
export const scalableReference = (rows: number) =>
  slowModelReference(scalableInput(rows), { ...SCALABLE, rows }).data as Float32Array;

/** The InferenceError `promise` fails with; fails the test when it succeeds or fails with anything else. */
export async function inferenceError(promise: Promise<unknown>): Promise<InferenceError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(InferenceError);
  return error as InferenceError;
}

/** Lets the event loop wait for I/O with nothing to do (a timer), as it does between a lone client's requests. */
export const loopWaits = () => new Promise((resolve) => setTimeout(resolve, 2));

/**
 * Calls `step` (a request) until the pool runs `key` inline (any model when absent), letting the event loop wait
 * in between, as a lone client does (idle runs need that wait). Bounded by the test's timeout.
 */
export async function untilInline(
  pool: InferencePool,
  step: () => Promise<unknown>,
  key?: string,
): Promise<void> {
  while (!pool.stats().inline.models.some((m) => key === undefined || m.key === key)) {
    await step();
    await loopWaits();
  }
}
