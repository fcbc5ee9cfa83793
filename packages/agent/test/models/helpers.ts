import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  OnnxModelBuilder,
  TEST_MODELS,
  createModelPackage,
  writeTestModel,
  type TestModelName,
  type TestModelTensor,
  type TestModelTensors,
} from '@edgefleet/core';
import type { PredictOutput, PredictTensor } from '../../src/models/index.js';

/** A scratch folder with helpers to build real model packages in it. */
export async function scratch(prefix: string) {
  const root = await mkdtemp(join(tmpdir(), prefix));
  let counter = 0;
  return {
    root,
    /** A package folder of a catalogue model; returns its absolute path. */
    async catalogue(model: TestModelName, packageName: string = model): Promise<string> {
      const work = join(root, `src-${++counter}`);
      const modelPath = await writeTestModel(model, work);
      const { dir } = await createModelPackage({
        modelPath,
        name: packageName,
        version: '1.0',
        outDir: join(root, `pkg-${counter}-${packageName}`),
      });
      return dir;
    },
    /** A package folder of a model given as ONNX bytes. */
    async custom(onnx: Uint8Array, packageName: string): Promise<string> {
      const work = join(root, `src-${++counter}`);
      await mkdir(work, { recursive: true });
      await writeFile(join(work, 'model.onnx'), onnx);
      const { dir } = await createModelPackage({
        modelPath: join(work, 'model.onnx'),
        name: packageName,
        version: '2.0',
        outDir: join(root, `pkg-${counter}-${packageName}`),
      });
      return dir;
    },
    async cleanup(): Promise<void> {
      await rm(root, { recursive: true, force: true });
    },
  };
}

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

export function bytesOf(data: ArrayBufferView): Uint8Array {
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
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
