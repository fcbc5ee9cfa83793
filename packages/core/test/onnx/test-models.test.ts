import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  TEST_MODEL_EXTERNAL_DATA_FILE,
  ONNX_MODEL_BUILDER_DEFAULTS,
  SLOW_MODEL_DEFAULTS,
  TEST_MODELS,
  TEST_MODEL_NAMES,
  buildSlowModel,
  getTestModel,
  readOnnxModelInfo,
  slowModelFlops,
  slowModelInput,
  slowModelReference,
  writeAllTestModels,
  type TestModelName,
} from '../../src/onnx/index.js';
import { dataTypeFromOrt } from '../../src/tensors/data-type.js';
import { expectTensorsMatch, openSession, runSession } from './ort-helpers.js';

let dir: string;
let paths: Record<TestModelName, string>;

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'edgefleet-test-models-'));
  paths = await writeAllTestModels(dir);
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('the test model catalogue', () => {
  it('writes one .onnx file per model, plus the external data file', async () => {
    expect(Object.keys(paths).sort()).toEqual([...TEST_MODEL_NAMES].sort());
    expect((await readdir(dir)).sort()).toEqual(
      [...TEST_MODEL_NAMES.map((name) => `${name}.onnx`), TEST_MODEL_EXTERNAL_DATA_FILE].sort(),
    );
  });

  describe.each(TEST_MODEL_NAMES)('%s', (name) => {
    const model = TEST_MODELS[name];

    it('runs in ONNX Runtime and matches its reference', async () => {
      const session = await openSession(paths[name]);
      try {
        const inputs = model.sampleInputs();
        const outputs = await runSession(session, inputs);
        expectTensorsMatch(outputs, model.reference(inputs), model.tolerance);
      } finally {
        await session.release();
      }
    });

    it('reads back with the interface it declares, and ONNX Runtime agrees', async () => {
      const info = await readOnnxModelInfo(paths[name]);
      expect(info).toEqual({
        inputs: model.inputs,
        outputs: model.outputs,
        irVersion: ONNX_MODEL_BUILDER_DEFAULTS.irVersion,
        opsetImports: [{ domain: '', version: ONNX_MODEL_BUILDER_DEFAULTS.opset }],
        producerName: ONNX_MODEL_BUILDER_DEFAULTS.producerName,
        producerVersion: ONNX_MODEL_BUILDER_DEFAULTS.producerVersion,
        externalDataFiles: name === 'external-data' ? [TEST_MODEL_EXTERNAL_DATA_FILE] : [],
      });

      const session = await openSession(paths[name]);
      try {
        const fromOrt = (metadata: readonly ort.InferenceSession.ValueMetadata[]) =>
          metadata.map((value) => ({
            name: value.name,
            dataType: value.isTensor ? dataTypeFromOrt(value.type) : 'not a tensor',
            shape: value.isTensor ? value.shape.map((dim) => (typeof dim === 'number' ? dim : -1)) : [],
          }));
        expect(fromOrt(session.inputMetadata)).toEqual(info.inputs);
        expect(fromOrt(session.outputMetadata)).toEqual(info.outputs);
      } finally {
        await session.release();
      }
    });

    it('has sample inputs that fit its declared inputs', () => {
      const inputs = model.sampleInputs();
      expect(Object.keys(inputs)).toEqual(model.inputs.map((input) => input.name));
      for (const declared of model.inputs) {
        const sample = inputs[declared.name]!;
        expect(sample.dataType).toBe(declared.dataType);
        expect(sample.shape.length).toBe(declared.shape.length);
        declared.shape.forEach((dim, i) => dim !== -1 && expect(sample.shape[i]).toBe(dim));
        expect(sample.data.length).toBe(sample.shape.reduce((a, b) => a * b, 1));
      }
    });
  });

  it('the demo classifier names the expected class for typical flowers and hedges on a borderline one', () => {
    const model = TEST_MODELS.mlp;
    const probabilities = model.reference(model.sampleInputs()).probabilities!.data as Float32Array;
    const rows = [0, 1, 2, 3].map((row) => Array.from(probabilities.subarray(row * 3, row * 3 + 3)));
    const top = rows.map((row) => model.labels![row.indexOf(Math.max(...row))]);
    expect(top).toEqual(['setosa', 'versicolor', 'virginica', 'versicolor']);
    for (const row of rows) expect(row.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 6);
    expect(Math.max(...rows[0]!)).toBeGreaterThan(0.9);
    expect(Math.max(...rows[3]!)).toBeLessThan(0.8);
  });

  it('the demo classifier runs a batch size other than the sample (dynamic batch)', async () => {
    const model = TEST_MODELS.mlp;
    const session = await openSession(model.build());
    try {
      const one = {
        features: { dataType: 'FLOAT32' as const, shape: [1, 4], data: new Float32Array([5, 3.4, 1.5, 0.2]) },
      };
      expectTensorsMatch(await runSession(session, one), model.reference(one), model.tolerance);
    } finally {
      await session.release();
    }
  });

  it('the slow model scales with its options and still matches its closed-form reference', async () => {
    const options = { size: 40, rows: 3, repeats: 45 }; // more steps than columns: the shift wraps around
    const session = await openSession(buildSlowModel(options));
    try {
      const x = slowModelInput(options);
      const outputs = await runSession(session, { x });
      expectTensorsMatch(outputs, { y: slowModelReference(x, options) }, 0);
      expect(slowModelFlops(options)).toBe(45 * 2 * 3 * 40 * 40);
      expect(slowModelFlops()).toBe(
        SLOW_MODEL_DEFAULTS.repeats * 2 * SLOW_MODEL_DEFAULTS.rows * SLOW_MODEL_DEFAULTS.size ** 2,
      );
    } finally {
      await session.release();
    }
  });

  it('a reference given the wrong inputs says what it expected', () => {
    expect(() => TEST_MODELS.tiny.reference({})).toThrow('expected input "x" with FLOAT32 data');
    expect(() => TEST_MODELS['int-types'].reference({})).toThrow('expected inputs "counts" (INT64');
  });

  it('looks models up by name and lists the names when one is unknown', () => {
    expect(getTestModel('multi-io')).toBe(TEST_MODELS['multi-io']);
    expect(() => getTestModel('resnet')).toThrow(
      `no test model named "resnet"; expected one of: ${TEST_MODEL_NAMES.join(', ')}`,
    );
  });
});
