import { OnnxModelBuilder, TEST_MODELS } from '@edgefleet/core';
import { bytesOf } from './model-packages.js';

/**
 * Models for the inline path's outputs written straight into shared memory (inline-runner.ts), built with core's
 * ONNX builder; each output is large enough (64 KiB) to qualify.
 */

/** Rows of 16,384 float32s: 64 KiB a row. */
export const ROW = 16384;

/**
 * `pair`: a, b float32 [PAIR_ROWS, ROW] → sum = a + b, product = a · b. Its outputs are worth writing in place, and
 * an output written over an input's bytes while ONNX Runtime still reads them gives a wrong answer whichever it
 * computes first (sum over a: the product reads a + b; product over b: the sum reads a · b).
 */
export const PAIR_ROWS = 1;
export function pairModel(): Uint8Array {
  const shape = [PAIR_ROWS, ROW];
  return new OnnxModelBuilder({ graphName: 'pair' })
    .input('a', 'FLOAT32', shape)
    .input('b', 'FLOAT32', shape)
    .node('Add', ['a', 'b'], ['sum'])
    .node('Mul', ['a', 'b'], ['product'])
    .output('sum', 'FLOAT32', shape)
    .output('product', 'FLOAT32', shape)
    .build();
}

/** The pair model's inputs: a = 1, 2, 3, …; b = 0.5, 1, 1.5, … */
export function pairInputs(): { a: Float32Array; b: Float32Array } {
  const count = PAIR_ROWS * ROW;
  return {
    a: Float32Array.from({ length: count }, (_, i) => i + 1),
    b: Float32Array.from({ length: count }, (_, i) => (i + 1) / 2),
  };
}

export function pairReference({ a, b }: { a: Float32Array; b: Float32Array }) {
  return { sum: a.map((v, i) => v + b[i]!), product: a.map((v, i) => v * b[i]!) };
}

/**
 * `liar`: y = x for x float32 [n, ROW], but y declared float32 [2, ROW] (fixed): the model keeps its word only for
 * n = 2. ONNX Runtime only warns when it breaks it, and refuses memory of the declared shape given for y.
 */
export const LIAR_DECLARED_ROWS = 2;
export function liarModel(): Uint8Array {
  return new OnnxModelBuilder({ graphName: 'liar' })
    .input('x', 'FLOAT32', ['n', ROW])
    .node('Identity', ['x'], ['y'])
    .output('y', 'FLOAT32', [LIAR_DECLARED_ROWS, ROW])
    .build();
}

/** x for the liar model: `rows` rows of 1, 2, 3, … (offset by `start`). */
export function liarInput(rows: number, start = 0): Float32Array {
  return Float32Array.from({ length: rows * ROW }, (_, i) => start + i + 1);
}

/** The catalogue's `image-identity` (588 KiB in, the same out): its sample input, size and expected output bytes. */
export const IMAGE_SAMPLE = TEST_MODELS['image-identity'].sampleInputs().image!;
export const IMAGE_BYTES = IMAGE_SAMPLE.data.byteLength;
export const IMAGE_EXPECTED = bytesOf(
  TEST_MODELS['image-identity'].reference({ image: IMAGE_SAMPLE }).image_out!.data,
);
