import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import {
  AgentDataType,
  MANIFEST_FILE,
  OnnxModelBuilder,
  TEST_MODELS,
  createAgentCodec,
  type Tensor,
} from '@edgefleet/core';
import { describe, expect, it } from 'vitest';
import type { InferencePool } from '../../src/inference/index.js';
import {
  bytesOf,
  callError,
  callRaw,
  referenceBytes,
  startTestAgent,
  useAgentTestBed,
  wireInputs,
  type Scratch,
  type TestAgent,
} from './helpers.js';

let pool: InferencePool;
let files: Scratch;
let agent: TestAgent;
const packages: Record<string, string> = {};

useAgentTestBed({
  prefix: 'agent-grpc-',
  workers: 2,
  async ready(bed) {
    ({ files, pool, agent } = bed);
    for (const model of ['tiny', 'mlp', 'multi-io', 'int-types'] as const) {
      packages[model] = await files.catalogue(model);
    }
    for (const model of ['tiny', 'multi-io', 'int-types'] as const) {
      await agent.call('LoadModel', { url: packages[model], handle: model });
    }
  },
});

const codec = createAgentCodec();

describe('LoadModel, ListModels, DescribeModel, UnLoadModel', () => {
  it('loads a package and answers with the model and its full tensor metadata', async () => {
    const response = await agent.call('LoadModel', { url: packages.mlp, handle: 'classifier' });
    expect(response.model).toEqual({
      url: packages.mlp,
      name: 'classifier',
      handle: 'classifier',
      inputTensorMetadatas: [
        { name: Buffer.from('features'), dataType: AgentDataType.FLOAT32, shape: [-1, 4] },
      ],
      outputTensorMetadatas: [
        { name: Buffer.from('probabilities'), dataType: AgentDataType.FLOAT32, shape: [-1, 3] },
      ],
    });
    const listed = await agent.call('ListModels', {});
    expect(listed.models.map((m) => m.handle)).toEqual(['tiny', 'multi-io', 'int-types', 'classifier']);
    const multi = listed.models.find((m) => m.handle === 'multi-io')!;
    expect(multi.inputTensorMetadatas.map((t) => [t.name.toString(), t.dataType, t.shape])).toEqual([
      ['a', AgentDataType.FLOAT32, [2, 2]],
      ['b', AgentDataType.FLOAT32, [2, 2]],
    ]);
    expect(multi.outputTensorMetadatas.map((t) => t.name.toString())).toEqual(['sum', 'product']);
    const ints = listed.models.find((m) => m.handle === 'int-types')!;
    expect(ints.inputTensorMetadatas.map((t) => [t.dataType, t.shape])).toEqual([
      [AgentDataType.INT64, [-1]],
      [AgentDataType.UINT8, [4]],
    ]);
    await agent.call('UnLoadModel', { handle: 'classifier' });
    expect((await agent.call('ListModels', {})).models.map((m) => m.handle)).not.toContain('classifier');
  });

  it('takes the deprecated name field, and handle wins when both are set', async () => {
    const loaded = await agent.call('LoadModel', { url: packages.mlp, name: 'by-name' });
    expect(loaded.model?.handle).toBe('by-name');
    expect((await agent.call('DescribeModel', { name: 'by-name' })).model?.url).toBe(packages.mlp);
    expect((await agent.call('DescribeModel', { handle: 'by-name', name: 'nothing' })).model?.handle).toBe(
      'by-name',
    );
    const error = await callError(agent.call('DescribeModel', { handle: 'nothing', name: 'by-name' }));
    expect(error.code).toBe(grpc.status.NOT_FOUND);
    await agent.call('UnLoadModel', { name: 'by-name' });
    expect(agent.registry.has('by-name')).toBe(false);
  });

  it('describes a loaded model exactly as ListModels lists it', async () => {
    const described = await agent.call('DescribeModel', { handle: 'tiny' });
    const listed = (await agent.call('ListModels', {})).models.find((m) => m.handle === 'tiny');
    expect(described.model).toEqual(listed);
    expect(described.model?.inputTensorMetadatas).toEqual([
      { name: Buffer.from('x'), dataType: AgentDataType.FLOAT32, shape: [1, 16] },
    ]);
  });

  it('ALREADY_EXISTS (6) for a name already loaded, saying what is loaded', async () => {
    const error = await callError(agent.call('LoadModel', { url: packages.mlp, handle: 'tiny' }));
    expect(error.code).toBe(6);
    expect(error.details).toMatch(/"tiny" is already loaded .*unload it first/);
  });

  it('INVALID_ARGUMENT for a name that fails the pattern, or no name', async () => {
    for (const name of ['has_underscore', 'has.dot', '-leading', 'trailing-']) {
      const error = await callError(agent.call('LoadModel', { url: packages.mlp, handle: name }));
      expect(error.code, name).toBe(grpc.status.INVALID_ARGUMENT);
      expect(error.details).toMatch(/not valid; expected letters and digits/);
    }
    const none = await callError(agent.call('LoadModel', { url: packages.mlp }));
    expect(none.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(none.details).toMatch(/names no model; expected the model's name in handle/);
  });

  it('INVALID_ARGUMENT without a url; NOT_FOUND for a url with no package', async () => {
    const noUrl = await callError(agent.call('LoadModel', { handle: 'm' }));
    expect(noUrl.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(noUrl.details).toMatch(/has no url; expected the folder of an extracted model package/);
    const missing = await callError(
      agent.call('LoadModel', { url: join(files.root, 'no-such-package'), handle: 'm' }),
    );
    expect(missing.code).toBe(grpc.status.NOT_FOUND);
    expect(missing.details).toMatch(/no-such-package.*expected the folder of an extracted model package/);
  });

  it('FAILED_PRECONDITION for a SageMaker Edge Manager (Neo/DLR) package, saying what it is and where the docs say what to do', async () => {
    // The files of an Edge Manager packaging job's output, extracted; no manifest.json.
    const dir = join(files.root, 'resnet-1.0');
    await mkdir(dir);
    for (const name of ['sagemaker_edge_manifest', 'compiled.so', 'compiled.params', 'compiled.meta'])
      await writeFile(join(dir, name), 'neo');
    const error = await callError(agent.call('LoadModel', { url: dir, handle: 'neo' }));
    expect(error.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(error.details).toBe(
      `model package ${dir} is not valid: it is a SageMaker Edge Manager (Neo/DLR-compiled) package (compiled.meta, compiled.params, compiled.so, sagemaker_edge_manifest), and EdgeFleet runs ONNX model packages: re-export the model to ONNX, then package and sign it (see docs/migrating-from-edge-manager.md)`,
    );
    // A folder with nothing recognisable in it is no model package at all: NOT_FOUND, as the spec says.
    const empty = join(files.root, 'not-yet-extracted');
    await mkdir(empty);
    await writeFile(join(empty, 'README.txt'), 'hello');
    const nothing = await callError(agent.call('LoadModel', { url: empty, handle: 'empty' }));
    expect(nothing.code).toBe(grpc.status.NOT_FOUND);
    expect(nothing.details).toBe(
      `no model package at ${empty}: it has no manifest.json; expected the folder of an extracted model package`,
    );
  });

  it('NOT_FOUND for a package archive, saying once to extract it first', async () => {
    const archive = join(files.root, 'resnet-1.0.tar.gz');
    await writeFile(archive, 'not really gzip');
    const error = await callError(agent.call('LoadModel', { url: archive, handle: 'archive' }));
    expect(error.code).toBe(grpc.status.NOT_FOUND);
    expect(error.details).toBe(
      `no model package at ${archive}: it is a package archive, not a folder: extract it first (tar xzf ${archive} -C <folder>, or edgefleet package extract ${archive} --out <folder>) and load that folder; expected the folder of an extracted model package`,
    );
  });

  it('resolves a relative url against the working directory', async () => {
    const relative = packages.mlp!.slice(files.root.length + 1);
    const response = await agent.call('LoadModel', { url: relative, handle: 'relative' });
    expect(response.model?.url).toBe(relative);
    await agent.call('UnLoadModel', { handle: 'relative' });
  });

  it('FAILED_PRECONDITION for a package with a broken manifest', async () => {
    const dir = await files.catalogue('tiny', 'broken');
    await writeFile(join(dir, MANIFEST_FILE), '{"schemaVersion": 1, "name": ');
    const error = await callError(agent.call('LoadModel', { url: dir, handle: 'broken' }));
    expect(error.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(error.details).toMatch(/manifest/);
    expect(agent.registry.has('broken')).toBe(false);
  });

  it('RESOURCE_EXHAUSTED when there is not enough memory for the model', async () => {
    const small = await startTestAgent({
      pool,
      dir: files.root,
      socketName: 'small-memory.sock',
      registry: { availableMemory: () => 100 },
    });
    try {
      const error = await callError(small.call('LoadModel', { url: packages.mlp, handle: 'm' }));
      expect(error.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
      expect(error.details).toMatch(/not enough memory to load model "m".*100 bytes is available/);
    } finally {
      await small.close();
    }
  });

  it('NOT_FOUND for UnLoadModel and DescribeModel of a model not loaded, naming those that are', async () => {
    for (const method of ['UnLoadModel', 'DescribeModel'] as const) {
      const error = await callError(agent.call(method, { handle: 'absent' }));
      expect(error.code, method).toBe(grpc.status.NOT_FOUND);
      expect(error.details).toMatch(/absent/);
      expect(error.details).toMatch(/tiny/);
    }
    const none = await callError(agent.call('UnLoadModel', {}));
    expect(none.code).toBe(grpc.status.INVALID_ARGUMENT);
  });
});

describe('Predict', () => {
  it('runs the model and answers byte_data with the real shape (tiny, exact)', async () => {
    const response = await agent.call('Predict', { handle: 'tiny', tensors: wireInputs('tiny') });
    const expected = referenceBytes('tiny').get('y')!;
    expect(response.tensors).toHaveLength(1);
    const [y] = response.tensors as [Tensor];
    expect(y.data).toBe('byteData');
    expect(y.tensorMetadata).toEqual({
      name: Buffer.from('y'),
      dataType: AgentDataType.FLOAT32,
      shape: [1, 16],
    });
    expect(Buffer.compare(y.byteData!, expected.bytes)).toBe(0);
  });

  it('answers every output in the model order; inputs matched by name in any order', async () => {
    const inputs = wireInputs('multi-io');
    const response = await agent.call('Predict', { name: 'multi-io', tensors: [inputs[1]!, inputs[0]!] });
    const expected = referenceBytes('multi-io');
    expect(response.tensors.map((t) => t.tensorMetadata?.name.toString())).toEqual(['sum', 'product']);
    for (const tensor of response.tensors) {
      const want = expected.get(tensor.tensorMetadata!.name.toString())!;
      expect(tensor.tensorMetadata?.shape).toEqual(want.shape);
      expect(Buffer.compare(tensor.byteData!, want.bytes)).toBe(0);
    }
  });

  it('handles integer types and a dynamic dimension (INT64 [-1] given as [5])', async () => {
    const counts = new BigInt64Array([1n, -2n, 3n, 2n ** 40n, 0n]);
    const inputs = { ...TEST_MODELS['int-types'].sampleInputs() };
    inputs.counts = { dataType: 'INT64', shape: [5], data: counts };
    const response = await agent.call('Predict', {
      handle: 'int-types',
      tensors: wireInputs('int-types', inputs),
    });
    const expected = referenceBytes('int-types', inputs);
    const out = response.tensors[0]!;
    expect(out.tensorMetadata).toEqual({
      name: Buffer.from('counts_plus_one'),
      dataType: AgentDataType.INT64,
      shape: [5],
    });
    expect(Buffer.compare(out.byteData!, expected.get('counts_plus_one')!.bytes)).toBe(0);
  });

  it('NOT_FOUND for a model that is not loaded, before looking at the tensors', async () => {
    const error = await callError(agent.call('Predict', { handle: 'absent', tensors: [{}] }));
    expect(error.code).toBe(grpc.status.NOT_FOUND);
    expect(error.details).toMatch(/"absent"/);
  });

  it('INVALID_ARGUMENT when the tensors do not fit the model, each saying what was expected', async () => {
    const [x] = wireInputs('tiny') as [Tensor];
    const md = x.tensorMetadata!;
    const cases: Array<[string, unknown[], RegExp]> = [
      ['no tensors', [], /takes 1 input tensor .*the request has 0/],
      ['two tensors', [x, x], /takes 1 input tensor .*the request has 2/],
      [
        'wrong type',
        [{ ...x, tensorMetadata: { ...md, dataType: AgentDataType.FLOAT64 } }],
        /is FLOAT64; the model expects FLOAT32/,
      ],
      [
        'unknown type',
        [{ ...x, tensorMetadata: { ...md, dataType: 99 } }],
        /data_type 99, which is not a DataType; expected one of 0 \(UINT8\)/,
      ],
      ['wrong shape', [{ ...x, tensorMetadata: { ...md, shape: [16, 1] } }], /shape \[16, 1\] does not fit/],
      ['wrong rank', [{ ...x, tensorMetadata: { ...md, shape: [16] } }], /shape \[16\] does not fit/],
      [
        'short data',
        [{ ...x, byteData: x.byteData!.subarray(0, 60) }],
        /has 60 bytes of data; shape \[1, 16\] of FLOAT32 needs 64/,
      ],
      ['no data', [{ tensorMetadata: md }], /has 0 bytes of data; .* needs 64/],
      [
        'no metadata',
        [{ byteData: x.byteData }],
        /#1 has no tensor_metadata; expected its name, data_type and shape/,
      ],
    ];
    for (const [what, tensors, details] of cases) {
      const error = await callError(agent.call('Predict', { handle: 'tiny', tensors: tensors as Tensor[] }));
      expect(error.code, what).toBe(grpc.status.INVALID_ARGUMENT);
      expect(error.details, what).toMatch(details);
    }
  });

  it('INVALID_ARGUMENT for a request that names no model', async () => {
    const error = await callError(agent.call('Predict', { tensors: wireInputs('tiny') }));
    expect(error.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(error.details).toMatch(/Predict names no model/);
  });
});

describe('what the agent does not take', () => {
  it('answers malformed protobuf with INVALID_ARGUMENT saying why, and keeps serving', async () => {
    const error = await callError(callRaw(agent.target, 'Predict', Buffer.from([0x12, 0xff, 0xff, 0x01])));
    expect(error.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(error.details).toMatch(
      /malformed AWS\.SageMaker\.Edge\.PredictRequest: .*expected a valid protobuf/,
    );
    const ok = await agent.call('Predict', { handle: 'tiny', tensors: wireInputs('tiny') });
    expect(ok.tensors).toHaveLength(1);
  });

  it('CaptureData and GetCaptureDataStatus: UNIMPLEMENTED, saying capture is not enabled', async () => {
    const capture = await callError(
      agent.call('CaptureData', { modelHandle: 'tiny', captureId: 'c1', inputTensors: wireInputs('tiny') }),
    );
    expect(capture.code).toBe(grpc.status.UNIMPLEMENTED);
    expect(capture.details).toMatch(/CaptureData: data capture is not enabled in this build/);
    const status = await callError(agent.call('GetCaptureDataStatus', { captureId: 'c1' }));
    expect(status.code).toBe(grpc.status.UNIMPLEMENTED);
    expect(status.details).toMatch(/GetCaptureDataStatus: data capture is not enabled/);
  });

  it('UNIMPLEMENTED for a method the service does not have', async () => {
    const error = await callError(callRaw(agent.target, 'Train', Buffer.alloc(0)));
    expect(error.code).toBe(grpc.status.UNIMPLEMENTED);
  });

  it('RESOURCE_EXHAUSTED for a request or a response larger than -m, and serves the next one', async () => {
    const limited = await startTestAgent({
      pool,
      dir: files.root,
      socketName: 'limited.sock',
      maxMessageBytes: 2000,
    });
    try {
      await limited.call('LoadModel', { url: packages['int-types'], handle: 'ints' });
      const big = { ...TEST_MODELS['int-types'].sampleInputs() };
      big.counts = { dataType: 'INT64', shape: [300], data: new BigInt64Array(300).fill(7n) };
      const body = codec.encode('PredictRequest', { handle: 'ints', tensors: wireInputs('int-types', big) });
      expect(body.length).toBeGreaterThan(2000);
      const tooBig = await callError(callRaw(limited.target, 'Predict', body));
      expect(tooBig.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
      // The status names the option that sets the limit, not only grpc-js's "larger than max (X vs Y)".
      expect(tooBig.details).toBe(
        `the request message is ${body.length} bytes, larger than the agent's limit of 2000 bytes (its -m / --max-message-size option); expected a smaller message (tensors in shared memory do not count), or an agent started with a larger -m`,
      );

      // One float in, 1000 floats (4000 bytes) out.
      const fanOut = await files.custom(
        new OnnxModelBuilder({ graphName: 'fan_out' })
          .input('x', 'FLOAT32', [1])
          .initializer('shape', 'INT64', [1], new BigInt64Array([1000n]))
          .node('Expand', ['x', 'shape'], ['y'])
          .output('y', 'FLOAT32', [1000])
          .build(),
        'fan-out',
      );
      await limited.call('LoadModel', { url: fanOut, handle: 'fan-out' });
      const one = {
        tensorMetadata: { name: Buffer.from('x'), dataType: AgentDataType.FLOAT32, shape: [1] },
        byteData: bytesOf(new Float32Array([1.5])),
      };
      const outTooBig = await callError(limited.call('Predict', { handle: 'fan-out', tensors: [one] }));
      expect(outTooBig.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
      expect(outTooBig.details).toMatch(
        /the response of model "fan-out" holds 4000 bytes of output tensors, more than the 2000-byte message limit \(-m\)/,
      );

      const ok = await limited.call('Predict', { handle: 'ints', tensors: wireInputs('int-types') });
      expect(ok.tensors).toHaveLength(2);
    } finally {
      await limited.close();
    }
  });
});
