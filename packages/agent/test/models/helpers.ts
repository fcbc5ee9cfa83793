import {
  OnnxModelBuilder,
  TEST_MODELS,
  type TestModelName,
  type TestModelTensor,
  type TestModelTensors,
} from '@edgefleet/core';
import type { PredictOutput, PredictTensor } from '../../src/models/index.js';
import { bytesOf, scratch } from '../support/model-packages.js';

export { bytesOf, scratch };

/** Loads but fails every run with zeros: Reshape of [n] to [2, -1] needs an even n, and the warm-up uses n = 1. */
export function reshapeNeedsEvenModel(): Uint8Array {
  return new OnnxModelBuilder({ graphName: 'even_only' })
    .input('x', 'FLOAT32', ['n'])
    .initializer('shape', 'INT64', [2], new BigInt64Array([2n, -1n]))
    .node('Reshape', ['x', 'shape'], ['y'])
    .output('y', 'FLOAT32', [2, null])
    .build();
}

/**
 * Declares its output rank 2, but returns the rank of its shape input `s`, whose length is dynamic: with the
 * warm-up's placeholders (`s` of one zero, -1 taken as 1) it returns rank 1. A model whose outputs contradict its
 * own declaration.
 */
export function rankLyingModel(): Uint8Array {
  return new OnnxModelBuilder({ graphName: 'rank_liar' })
    .input('x', 'FLOAT32', ['n'])
    .input('s', 'INT64', ['k'])
    .node('Reshape', ['x', 's'], ['y'])
    .output('y', 'FLOAT32', [null, null])
    .build();
}

/** Loads, but its first run allocates 1 TiB (ConstantOfShape [2^38] float32): ONNX Runtime runs out of memory. */
export function hugeAllocationModel(): Uint8Array {
  return new OnnxModelBuilder({ graphName: 'huge' })
    .input('x', 'FLOAT32', [1])
    .initializer('shape', 'INT64', [1], new BigInt64Array([2n ** 38n]))
    .node('ConstantOfShape', ['shape'], ['big'])
    .node('Add', ['x', 'big'], ['y'])
    .output('y', 'FLOAT32', [2 ** 38])
    .build();
}

/** Catalogue sample inputs as Predict tensors, in the model's input order. */
export function predictTensors(
  model: TestModelName,
  inputs: TestModelTensors = TEST_MODELS[model].sampleInputs(),
): PredictTensor[] {
  return TEST_MODELS[model].inputs.map((declared) => {
    const tensor = inputs[declared.name]!;
    return {
      name: Buffer.from(declared.name),
      dataType: tensor.dataType,
      shape: tensor.shape,
      data: bytesOf(tensor.data),
    };
  });
}

/** An output's bytes as the typed array of its reference tensor. */
export function outputValues(output: PredictOutput, like: TestModelTensor): TestModelTensor['data'] {
  const copy = output.data.slice();
  const Typed = like.data.constructor as new (buffer: ArrayBuffer) => TestModelTensor['data'];
  return new Typed(copy.buffer);
}

/** A recording logger for warnings the registry emits (messages, and the details given with them). */
export function recordingLogger() {
  const warnings: string[] = [];
  const details: Array<Record<string, unknown> | undefined> = [];
  return {
    warnings,
    details,
    logger: {
      warn: (message: string, detail?: Record<string, unknown>) => {
        warnings.push(message);
        details.push(detail);
      },
    },
  };
}
