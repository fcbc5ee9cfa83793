import * as ort from 'onnxruntime-node';
import { expect } from 'vitest';
import { DATA_TYPES, dataTypeFromOrt } from '../../src/tensors/data-type.js';
import type { TestModelTensorData, TestModelTensors } from '../../src/onnx/index.js';

/** A real ONNX Runtime session on one thread (the test machine has two cores, shared). */
export function openSession(model: string | Uint8Array): Promise<ort.InferenceSession> {
  const options: ort.InferenceSession.SessionOptions = { intraOpNumThreads: 1, interOpNumThreads: 1 };
  return typeof model === 'string'
    ? ort.InferenceSession.create(model, options)
    : ort.InferenceSession.create(model, options);
}

/** Runs the session on these inputs and returns every output in the catalogue's tensor form. */
export async function runSession(
  session: ort.InferenceSession,
  inputs: TestModelTensors,
): Promise<TestModelTensors> {
  const feeds: Record<string, ort.Tensor> = {};
  for (const [name, input] of Object.entries(inputs)) {
    feeds[name] = new ort.Tensor(DATA_TYPES[input.dataType].ort, input.data, input.shape);
  }
  const results = await session.run(feeds);
  const outputs: TestModelTensors = {};
  for (const [name, value] of Object.entries(results)) {
    const dataType = dataTypeFromOrt(value.type);
    if (dataType === undefined)
      throw new Error(`output "${name}" has ORT type ${value.type}, not one of ours`);
    outputs[name] = { dataType, shape: [...value.dims], data: value.data as TestModelTensorData };
  }
  return outputs;
}

/** Same names, types and shapes; values equal, or within `tolerance` for floating point. */
export function expectTensorsMatch(
  actual: TestModelTensors,
  expected: TestModelTensors,
  tolerance: number,
): void {
  expect(Object.keys(actual).sort()).toEqual(Object.keys(expected).sort());
  for (const [name, want] of Object.entries(expected)) {
    const got = actual[name]!;
    expect({ name, dataType: got.dataType, shape: got.shape }).toEqual({
      name,
      dataType: want.dataType,
      shape: want.shape,
    });
    expect(got.data.constructor).toBe(want.data.constructor);
    expect(got.data.length).toBe(want.data.length);
    if (tolerance === 0) {
      expect(Array.from<number | bigint>(got.data)).toEqual(Array.from<number | bigint>(want.data));
    } else {
      const worst = Array.from(want.data as Float32Array).reduce(
        (max, value, i) => Math.max(max, Math.abs(value - (got.data as Float32Array)[i]!)),
        0,
      );
      expect(worst, `largest difference in "${name}"`).toBeLessThanOrEqual(tolerance);
    }
  }
}
