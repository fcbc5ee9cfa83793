import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { DataTypeName } from '../tensors/data-type.js';
import type { TensorMetadata } from '../tensors/tensor-metadata.js';
import { OnnxModelBuilder, type OnnxExternalDataFiles } from './model-builder.js';

/**
 * A catalogue of small generated ONNX models with known outputs, for tests, demos and benchmarks. Each model is
 * built in code (nothing is downloaded) and comes with sample inputs and a plain-JavaScript reference that
 * computes the exact expected outputs, so a test can run the model in ONNX Runtime and compare.
 */

/** Tensor data as onnxruntime-node takes and returns it for each data type. */
export type TestModelTensorData =
  Float32Array | Float64Array | Int16Array | Int32Array | BigInt64Array | Uint8Array;

export interface TestModelTensor {
  dataType: DataTypeName;
  shape: number[];
  data: TestModelTensorData;
}

export type TestModelTensors = Record<string, TestModelTensor>;

export interface TestModel {
  name: TestModelName;
  description: string;
  /** The interface readOnnxModelInfo should report (-1 = dynamic dimension). */
  inputs: TensorMetadata[];
  outputs: TensorMetadata[];
  /** Largest absolute difference from the reference to accept; 0 = bit-exact. */
  tolerance: number;
  /** Class names, in output order, for classifiers. */
  labels?: string[];
  build(): Uint8Array;
  /** Files the model keeps tensors in, by location relative to the model; empty for most models. */
  externalData(): OnnxExternalDataFiles;
  sampleInputs(): TestModelTensors;
  reference(inputs: TestModelTensors): TestModelTensors;
}

export const TEST_MODEL_NAMES = [
  'tiny',
  'mlp',
  'image-identity',
  'multi-io',
  'int-types',
  'external-data',
  'slow',
] as const;
export type TestModelName = (typeof TEST_MODEL_NAMES)[number];

const f32 = Math.fround;

function tensor(dataType: DataTypeName, shape: number[], data: TestModelTensorData): TestModelTensor {
  return { dataType, shape, data };
}

/** The named input, checked for the data type the model takes; a reference given the wrong input says so. */
function float32Input(inputs: TestModelTensors, name: string): TestModelTensor & { data: Float32Array } {
  const input = inputs[name];
  if (input === undefined || !(input.data instanceof Float32Array)) {
    throw new Error(`expected input "${name}" with FLOAT32 data (a Float32Array)`);
  }
  return input as TestModelTensor & { data: Float32Array };
}

/** Deterministic values in [0, 1) from a 32-bit linear congruential generator (Numerical Recipes constants). */
function pseudoRandomFloats(count: number, seed: number): Float32Array {
  const values = new Float32Array(count);
  let state = seed >>> 0;
  for (let i = 0; i < count; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    values[i] = (state >>> 8) / 2 ** 24;
  }
  return values;
}

// ---------------------------------------------------------------------------------------------------------------
// tiny: y = x * 2 + 1 — the benchmark's per-request overhead model.

const tiny: TestModel = {
  name: 'tiny',
  description: 'y = x * 2 + 1 on a float32 [1, 16] vector (Mul, Add); measures per-request overhead',
  inputs: [{ name: 'x', dataType: 'FLOAT32', shape: [1, 16] }],
  outputs: [{ name: 'y', dataType: 'FLOAT32', shape: [1, 16] }],
  tolerance: 0,
  build: () =>
    new OnnxModelBuilder({ graphName: 'tiny' })
      .input('x', 'FLOAT32', [1, 16])
      .initializer('two', 'FLOAT32', [], new Float32Array([2]))
      .initializer('one', 'FLOAT32', [], new Float32Array([1]))
      .node('Mul', ['x', 'two'], ['doubled'])
      .node('Add', ['doubled', 'one'], ['y'])
      .output('y', 'FLOAT32', [1, 16])
      .build(),
  externalData: () => new Map(),
  sampleInputs: () => ({
    x: tensor(
      'FLOAT32',
      [1, 16],
      Float32Array.from({ length: 16 }, (_, i) => (i - 8) * 0.3),
    ),
  }),
  reference: (inputs) => {
    const x = float32Input(inputs, 'x');
    return {
      y: tensor(
        'FLOAT32',
        x.shape,
        x.data.map((value) => f32(f32(value * 2) + 1)),
      ),
    };
  },
};

// ---------------------------------------------------------------------------------------------------------------
// mlp: the bundled demo classifier. Flower measurements in cm (sepal length, sepal width, petal length, petal
// width, as in the Iris data set) → probabilities of setosa, versicolor, virginica. The weights are hand-set
// rules, not trained: hidden units detect short/long petals, wide petals and wide sepals, and the output layer
// combines them, so typical flowers of each species get a confident, correct answer and borderline ones do not.

const MLP_LABELS = ['setosa', 'versicolor', 'virginica'];

/** Hidden unit j = relu(x · W1[:, j] + b1[j]); W1 is [4, 8], row-major (one row per input feature). */
const MLP_W1 = [
  // petal<2.5  petal>2.5  petal>4.8  width>1.6  width<1.75 sepalW>3  sepalL/2  petal+width>6.5
  [0, 0, 0, 0, 0, 0, 0.5, 0], // sepal length
  [0, 0, 0, 0, 0, 1, 0, 0], // sepal width
  [-1, 1, 1, 0, 0, 0, 0, 1], // petal length
  [0, 0, 0, 1, -1, 0, 0, 1], // petal width
];
const MLP_B1 = [2.5, -2.5, -4.8, -1.6, 1.75, -3, -2.5, -6.5];
/** Class score k = h · W2[:, k] + b2[k]; W2 is [8, 3] (setosa, versicolor, virginica). */
const MLP_W2 = [
  [3, 0, 0],
  [-1, 1.5, 1],
  [0, -3, 2],
  [0, -2, 3],
  [1, 1, 0],
  [2, 0, 0],
  [0, 0.2, 0.2],
  [0, -1.5, 1.5],
];
const MLP_B2 = [0, 0, -1];

function mlpReference(features: Float32Array, batch: number): Float32Array {
  const w1 = MLP_W1.map((row) => row.map(f32));
  const w2 = MLP_W2.map((row) => row.map(f32));
  const out = new Float32Array(batch * 3);
  for (let row = 0; row < batch; row++) {
    const x = features.subarray(row * 4, row * 4 + 4);
    const hidden = MLP_B1.map((bias, j) => {
      let sum = 0;
      for (let i = 0; i < 4; i++) sum = f32(sum + f32(x[i]! * w1[i]![j]!));
      return Math.max(0, f32(sum + f32(bias)));
    });
    const logits = MLP_B2.map((bias, k) => {
      let sum = 0;
      for (let j = 0; j < 8; j++) sum = f32(sum + f32(hidden[j]! * w2[j]![k]!));
      return f32(sum + f32(bias));
    });
    const max = Math.max(...logits);
    const exps = logits.map((logit) => Math.exp(logit - max));
    const total = exps.reduce((a, b) => a + b, 0);
    exps.forEach((value, k) => (out[row * 3 + k] = value / total));
  }
  return out;
}

const mlp: TestModel = {
  name: 'mlp',
  description:
    'demo classifier: flower measurements [batch, 4] (sepal length, sepal width, petal length, petal width in cm) → ' +
    'probabilities [batch, 3] of setosa, versicolor, virginica; two MatMul+Add layers with Relu, then Softmax',
  inputs: [{ name: 'features', dataType: 'FLOAT32', shape: [-1, 4] }],
  outputs: [{ name: 'probabilities', dataType: 'FLOAT32', shape: [-1, 3] }],
  tolerance: 1e-5,
  labels: MLP_LABELS,
  build: () =>
    new OnnxModelBuilder({ graphName: 'demo_classifier', metadata: { labels: MLP_LABELS.join(',') } })
      .input('features', 'FLOAT32', ['batch', 4])
      .initializer('W1', 'FLOAT32', [4, 8], new Float32Array(MLP_W1.flat()))
      .initializer('b1', 'FLOAT32', [8], new Float32Array(MLP_B1))
      .initializer('W2', 'FLOAT32', [8, 3], new Float32Array(MLP_W2.flat()))
      .initializer('b2', 'FLOAT32', [3], new Float32Array(MLP_B2))
      .node('MatMul', ['features', 'W1'], ['hidden_linear'])
      .node('Add', ['hidden_linear', 'b1'], ['hidden_biased'])
      .node('Relu', ['hidden_biased'], ['hidden'])
      .node('MatMul', ['hidden', 'W2'], ['logits_linear'])
      .node('Add', ['logits_linear', 'b2'], ['logits'])
      .node('Softmax', ['logits'], ['probabilities'])
      .output('probabilities', 'FLOAT32', ['batch', 3])
      .build(),
  externalData: () => new Map(),
  sampleInputs: () => ({
    // A typical setosa, versicolor and virginica, and a borderline versicolor/virginica flower.
    features: tensor(
      'FLOAT32',
      [4, 4],
      new Float32Array([5.1, 3.5, 1.4, 0.2, 5.9, 3.0, 4.2, 1.5, 6.5, 3.0, 5.8, 2.2, 6.3, 2.8, 5.1, 1.5]),
    ),
  }),
  reference: (inputs) => {
    const features = float32Input(inputs, 'features');
    const batch = features.shape[0]!;
    return { probabilities: tensor('FLOAT32', [batch, 3], mlpReference(features.data, batch)) };
  },
};

// ---------------------------------------------------------------------------------------------------------------
// image-identity: a 224×224 RGB image passes through unchanged — about 600 KB in and out per request.

const IMAGE_SHAPE = [1, 3, 224, 224];

const imageIdentity: TestModel = {
  name: 'image-identity',
  description:
    'Identity on a float32 [1, 3, 224, 224] image (602,112 bytes each way); measures tensor transfer',
  inputs: [{ name: 'image', dataType: 'FLOAT32', shape: IMAGE_SHAPE }],
  outputs: [{ name: 'image_out', dataType: 'FLOAT32', shape: IMAGE_SHAPE }],
  tolerance: 0,
  build: () =>
    new OnnxModelBuilder({ graphName: 'image_identity' })
      .input('image', 'FLOAT32', IMAGE_SHAPE)
      .node('Identity', ['image'], ['image_out'])
      .output('image_out', 'FLOAT32', IMAGE_SHAPE)
      .build(),
  externalData: () => new Map(),
  sampleInputs: () => ({ image: tensor('FLOAT32', IMAGE_SHAPE, pseudoRandomFloats(3 * 224 * 224, 224)) }),
  reference: (inputs) => {
    const image = float32Input(inputs, 'image');
    return { image_out: tensor('FLOAT32', image.shape, image.data.slice()) };
  },
};

// ---------------------------------------------------------------------------------------------------------------
// multi-io: two inputs, two outputs.

const multiIo: TestModel = {
  name: 'multi-io',
  description: 'two float32 [2, 2] inputs a, b → two outputs: sum = a + b, product = a * b (element-wise)',
  inputs: [
    { name: 'a', dataType: 'FLOAT32', shape: [2, 2] },
    { name: 'b', dataType: 'FLOAT32', shape: [2, 2] },
  ],
  outputs: [
    { name: 'sum', dataType: 'FLOAT32', shape: [2, 2] },
    { name: 'product', dataType: 'FLOAT32', shape: [2, 2] },
  ],
  tolerance: 0,
  build: () =>
    new OnnxModelBuilder({ graphName: 'multi_io' })
      .input('a', 'FLOAT32', [2, 2])
      .input('b', 'FLOAT32', [2, 2])
      .node('Add', ['a', 'b'], ['sum'])
      .node('Mul', ['a', 'b'], ['product'])
      .output('sum', 'FLOAT32', [2, 2])
      .output('product', 'FLOAT32', [2, 2])
      .build(),
  externalData: () => new Map(),
  sampleInputs: () => ({
    a: tensor('FLOAT32', [2, 2], new Float32Array([1, 2.5, -3, 0.1])),
    b: tensor('FLOAT32', [2, 2], new Float32Array([4, -0.5, 3, 1e-3])),
  }),
  reference: (inputs) => {
    const a = float32Input(inputs, 'a');
    const b = float32Input(inputs, 'b');
    return {
      sum: tensor(
        'FLOAT32',
        a.shape,
        a.data.map((value, i) => f32(value + b.data[i]!)),
      ),
      product: tensor(
        'FLOAT32',
        a.shape,
        a.data.map((value, i) => f32(value * b.data[i]!)),
      ),
    };
  },
};

// ---------------------------------------------------------------------------------------------------------------
// int-types: integer tensors, including int64 values beyond 2^53 that a JavaScript number cannot hold.

const intTypes: TestModel = {
  name: 'int-types',
  description:
    'integer tensors: counts int64 [n] → counts_plus_one = counts + 1; bytes uint8 [4] → bytes_out (Identity)',
  inputs: [
    { name: 'counts', dataType: 'INT64', shape: [-1] },
    { name: 'bytes', dataType: 'UINT8', shape: [4] },
  ],
  outputs: [
    { name: 'counts_plus_one', dataType: 'INT64', shape: [-1] },
    { name: 'bytes_out', dataType: 'UINT8', shape: [4] },
  ],
  tolerance: 0,
  build: () =>
    new OnnxModelBuilder({ graphName: 'int_types' })
      .input('counts', 'INT64', ['n'])
      .input('bytes', 'UINT8', [4])
      .initializer('one', 'INT64', [], new BigInt64Array([1n]))
      .node('Add', ['counts', 'one'], ['counts_plus_one'])
      .node('Identity', ['bytes'], ['bytes_out'])
      .output('counts_plus_one', 'INT64', ['n'])
      .output('bytes_out', 'UINT8', [4])
      .build(),
  externalData: () => new Map(),
  sampleInputs: () => ({
    counts: tensor('INT64', [5], new BigInt64Array([0n, -1n, 41n, 2n ** 53n + 1n, -(2n ** 62n)])),
    bytes: tensor('UINT8', [4], new Uint8Array([0, 1, 128, 255])),
  }),
  reference: (inputs) => {
    const { counts, bytes } = inputs;
    if (!(counts?.data instanceof BigInt64Array) || !(bytes?.data instanceof Uint8Array)) {
      throw new Error('expected inputs "counts" (INT64, a BigInt64Array) and "bytes" (UINT8, a Uint8Array)');
    }
    return {
      counts_plus_one: tensor(
        'INT64',
        counts.shape,
        counts.data.map((value) => BigInt.asIntN(64, value + 1n)),
      ),
      bytes_out: tensor('UINT8', bytes.shape, bytes.data.slice()),
    };
  },
};

// ---------------------------------------------------------------------------------------------------------------
// external-data: a weight kept in a file beside the model, which must travel with it in a package.

export const TEST_MODEL_EXTERNAL_DATA_FILE = 'external-data.weights.bin';
/** y = x · W, with W [4, 2] stored in TEST_MODEL_EXTERNAL_DATA_FILE. */
const EXTERNAL_W = new Float32Array([1, 0, 0, 1, 1, 1, -1, 0.5]);

function buildExternalDataModel(): { model: Uint8Array; externalData: OnnxExternalDataFiles } {
  return new OnnxModelBuilder({ graphName: 'external_data' })
    .input('x', 'FLOAT32', [1, 4])
    .initializer('W', 'FLOAT32', [4, 2], EXTERNAL_W, { externalLocation: TEST_MODEL_EXTERNAL_DATA_FILE })
    .node('MatMul', ['x', 'W'], ['y'])
    .output('y', 'FLOAT32', [1, 2])
    .buildWithExternalData();
}

const externalData: TestModel = {
  name: 'external-data',
  description: `y = x · W for x float32 [1, 4], with the weight W [4, 2] stored in the external file ${TEST_MODEL_EXTERNAL_DATA_FILE}`,
  inputs: [{ name: 'x', dataType: 'FLOAT32', shape: [1, 4] }],
  outputs: [{ name: 'y', dataType: 'FLOAT32', shape: [1, 2] }],
  tolerance: 0,
  build: () => buildExternalDataModel().model,
  externalData: () => buildExternalDataModel().externalData,
  sampleInputs: () => ({ x: tensor('FLOAT32', [1, 4], new Float32Array([1, 2, 3, 4])) }),
  reference: (inputs) => {
    const x = float32Input(inputs, 'x');
    const y = new Float32Array(2);
    // Small integers and halves: every partial sum is exact, whatever order ONNX Runtime adds in.
    for (let j = 0; j < 2; j++) {
      for (let i = 0; i < 4; i++) y[j] = f32(y[j]! + f32(x.data[i]! * EXTERNAL_W[i * 2 + j]!));
    }
    return { y: tensor('FLOAT32', [1, 2], y) };
  },
};

// ---------------------------------------------------------------------------------------------------------------
// slow: deliberately expensive, to show that running a model never blocks the event loop.
//
// y = x · P + 1, repeated `repeats` times, for x float32 [rows, size] and P the [size, size] cyclic shift
// permutation (P[i][(i+1) mod size] = 1). The result is known without doing the work: after k steps
// y[r][j] = x[r][(j − k) mod size] + k, exactly, since every product is x·1 or x·0 on small integers.
// Cost: repeats × 2·rows·size² floating-point operations (a dense MatMul does not know P is sparse). With the
// defaults, 128 × 2·384·384² ≈ 14.5 GFLOP per run: about 70 ms on one AVX-512 server core (measured on an AMD
// EPYC with intraOpNumThreads 1), about 250 ms on a core that sustains 60 GFLOP/s. The model file holds one
// size² weight (≈ 590 KB with the defaults). Scale `repeats` to change the cost linearly.

export interface SlowModelOptions {
  /** Width of x and of the square permutation matrix. */
  size: number;
  /** Rows of x (a batch). */
  rows: number;
  /** MatMul+Add steps, each a separate node so ONNX Runtime cannot skip any. */
  repeats: number;
}

export const SLOW_MODEL_DEFAULTS: SlowModelOptions = { size: 384, rows: 384, repeats: 128 };

/** Floating-point operations one run of the slow model performs. */
export function slowModelFlops(options: SlowModelOptions = SLOW_MODEL_DEFAULTS): number {
  return options.repeats * 2 * options.rows * options.size * options.size;
}

/**
 * The slow model's graph. With `graph.dynamicRows` its row count is a dimension named `rows` (any batch; run time
 * grows with it) instead of `options.rows`.
 */
export function buildSlowModel(
  options: SlowModelOptions = SLOW_MODEL_DEFAULTS,
  graph: { name?: string; dynamicRows?: boolean } = {},
): Uint8Array {
  const { size, repeats } = options;
  const rows = graph.dynamicRows ? 'rows' : options.rows;
  const shift = new Float32Array(size * size);
  for (let i = 0; i < size; i++) shift[i * size + ((i + 1) % size)] = 1;
  const builder = new OnnxModelBuilder({ graphName: graph.name ?? 'slow' })
    .input('x', 'FLOAT32', [rows, size])
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
  return builder.output('y', 'FLOAT32', [rows, size]).build();
}

/** Small integers in [-32, 31]: shifting and adding a few hundred ones keeps every value exact in float32. */
export function slowModelInput(options: SlowModelOptions = SLOW_MODEL_DEFAULTS): TestModelTensor {
  const { size, rows } = options;
  const data = Float32Array.from(
    { length: rows * size },
    (_, i) => ((Math.floor(i / size) * 31 + (i % size) * 7) % 64) - 32,
  );
  return tensor('FLOAT32', [rows, size], data);
}

export function slowModelReference(
  x: TestModelTensor,
  options: SlowModelOptions = SLOW_MODEL_DEFAULTS,
): TestModelTensor {
  const { size, rows, repeats } = options;
  const input = float32Input({ x }, 'x');
  const y = new Float32Array(rows * size);
  for (let r = 0; r < rows; r++) {
    for (let j = 0; j < size; j++) {
      const from = (((j - repeats) % size) + size) % size;
      y[r * size + j] = input.data[r * size + from]! + repeats;
    }
  }
  return tensor('FLOAT32', [rows, size], y);
}

const slow: TestModel = {
  name: 'slow',
  description: `${SLOW_MODEL_DEFAULTS.repeats} chained MatMul+Add steps on float32 [${SLOW_MODEL_DEFAULTS.rows}, ${SLOW_MODEL_DEFAULTS.size}] (≈${(slowModelFlops() / 1e9).toFixed(1)} GFLOP per run, roughly 50–300 ms on one core); output known in closed form`,
  inputs: [{ name: 'x', dataType: 'FLOAT32', shape: [SLOW_MODEL_DEFAULTS.rows, SLOW_MODEL_DEFAULTS.size] }],
  outputs: [{ name: 'y', dataType: 'FLOAT32', shape: [SLOW_MODEL_DEFAULTS.rows, SLOW_MODEL_DEFAULTS.size] }],
  tolerance: 0,
  build: () => buildSlowModel(),
  externalData: () => new Map(),
  sampleInputs: () => ({ x: slowModelInput() }),
  reference: (inputs) => ({ y: slowModelReference(float32Input(inputs, 'x')) }),
};

// ---------------------------------------------------------------------------------------------------------------

/** Every catalogue model by name. */
export const TEST_MODELS: Readonly<Record<TestModelName, TestModel>> = Object.freeze({
  tiny,
  mlp,
  'image-identity': imageIdentity,
  'multi-io': multiIo,
  'int-types': intTypes,
  'external-data': externalData,
  slow,
});

/** The catalogue model of this name; throws, listing the names, when there is none. */
export function getTestModel(name: string): TestModel {
  if (!(TEST_MODEL_NAMES as readonly string[]).includes(name)) {
    throw new Error(`no test model named "${name}"; expected one of: ${TEST_MODEL_NAMES.join(', ')}`);
  }
  return TEST_MODELS[name as TestModelName];
}

/** Writes `<dir>/<name>.onnx` (and any external data files beside it); returns the model's path. */
export async function writeTestModel(name: TestModelName, dir: string): Promise<string> {
  const model = getTestModel(name);
  await mkdir(dir, { recursive: true });
  const modelPath = path.join(dir, `${name}.onnx`);
  await writeFile(modelPath, model.build());
  for (const [location, data] of model.externalData()) {
    await mkdir(path.dirname(path.join(dir, location)), { recursive: true });
    await writeFile(path.join(dir, location), data);
  }
  return modelPath;
}

/** Writes every catalogue model into `dir`; returns each model's path by name. */
export async function writeAllTestModels(dir: string): Promise<Record<TestModelName, string>> {
  const paths: Partial<Record<TestModelName, string>> = {};
  for (const name of TEST_MODEL_NAMES) paths[name] = await writeTestModel(name, dir);
  return paths as Record<TestModelName, string>;
}
