import { OnnxModelBuilder, slowModelInput, slowModelReference, type TestModelTensor } from '@edgefleet/core';
import type { PoolTensor } from '../../src/inference/index.js';

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
  const { size, repeats } = SCALABLE;
  const shift = new Float32Array(size * size);
  for (let i = 0; i < size; i++) shift[i * size + ((i + 1) % size)] = 1;
  const builder = new OnnxModelBuilder({ graphName: 'scalable' })
    .input('x', 'FLOAT32', ['rows', size])
    .initializer('shift', 'FLOAT32', [size, size], shift)
    .initializer('one', 'FLOAT32', [], new Float32Array([1]));
  let previous = 'x';
  for (let step = 1; step <= repeats; step++) {
    const next = step === repeats ? 'y' : `step_${step}`;
    builder
      .node('MatMul', [previous, 'shift'], [`shifted_${step}`])
      .node('Add', [`shifted_${step}`, 'one'], [next]);
    previous = next;
  }
  return builder.output('y', 'FLOAT32', ['rows', size]).build();
}
const scalableInput = (rows: number) => slowModelInput({ ...SCALABLE, rows });
/** The scalable model's input with `rows` rows, as pool tensors. */
export const scalable = (rows: number) => [asPoolTensor('x', scalableInput(rows))];
/** What the scalable model returns for `scalable(rows)`, computed in JavaScript. */
export const scalableReference = (rows: number) =>
  slowModelReference(scalableInput(rows), { ...SCALABLE, rows }).data as Float32Array;
