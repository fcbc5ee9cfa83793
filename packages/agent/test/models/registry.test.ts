import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { TEST_MODELS } from '@edgefleet/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_ORT_SESSION_CONFIG, InferencePool } from '../../src/inference/index.js';
import { ModelRegistry, type AgentErrorCode, type PredictTensor } from '../../src/models/index.js';
import {
  hugeAllocationModel,
  outputValues,
  predictTensors,
  rankLyingModel,
  recordingLogger,
  reshapeNeedsEvenModel,
  scratch,
} from './helpers.js';
import { agentErrorOf } from '../support/agent-error.js';

let pool: InferencePool;
let files: Awaited<ReturnType<typeof scratch>>;
const packages: Record<string, string> = {};

beforeAll(async () => {
  files = await scratch('agent-registry-');
  pool = await InferencePool.start({ workers: 2, session: DEFAULT_ORT_SESSION_CONFIG });
  for (const model of ['tiny', 'mlp', 'multi-io', 'int-types', 'image-identity', 'external-data'] as const) {
    packages[model] = await files.catalogue(model);
  }
});
afterAll(async () => {
  await pool?.close();
  await files?.cleanup();
});

function registry(options: Partial<ConstructorParameters<typeof ModelRegistry>[0]> = {}) {
  return new ModelRegistry({ pool, trust: null, cwd: files.root, ...options });
}

async function expectCode(
  promise: Promise<unknown> | (() => unknown),
  code: AgentErrorCode,
  message: RegExp,
) {
  const error = await agentErrorOf(promise);
  expect(error.code).toBe(code);
  expect(error.message).toMatch(message);
  return error;
}

describe('ModelRegistry: load, list, describe, predict', () => {
  it('loads a package, describes it with full tensor metadata, and predicts exact outputs', async () => {
    const models = registry();
    const description = await models.load({ url: packages.tiny!, name: 'tiny' });
    expect(description).toMatchObject({
      name: 'tiny',
      url: packages.tiny,
      path: packages.tiny,
      packageName: 'tiny',
      version: '1.0',
      inputs: [{ name: 'x', dataType: 'FLOAT32', shape: [1, 16] }],
      outputs: [{ name: 'y', dataType: 'FLOAT32', shape: [1, 16] }],
      instances: 1,
      signature: { verified: false },
    });
    expect(models.list().map((m) => m.name)).toEqual(['tiny']);
    expect(models.describe('tiny')).toEqual(models.list()[0]);

    const sample = TEST_MODELS.tiny.sampleInputs();
    const result = await models.predict('tiny', predictTensors('tiny', sample));
    const expected = TEST_MODELS.tiny.reference(sample).y!;
    expect(result.outputs).toHaveLength(1);
    expect(result.outputs[0]!.name).toEqual(Buffer.from('y'));
    expect(result.outputs[0]!.dataType).toBe('FLOAT32');
    expect(result.outputs[0]!.shape).toEqual([1, 16]);
    expect(outputValues(result.outputs[0]!, expected)).toEqual(expected.data);
    expect(result.model).toEqual({ name: 'tiny', version: '1.0' });
    expect(models.describe('tiny').requests).toEqual({ succeeded: 1, failed: 0 });
    await models.unload('tiny');
    expect(models.list()).toEqual([]);
  });

  it('gives exact outputs for every catalogue model, with their real shapes', async () => {
    const models = registry();
    for (const model of ['mlp', 'multi-io', 'int-types', 'image-identity', 'external-data'] as const) {
      await models.load({ url: packages[model]!, name: model });
      const sample = TEST_MODELS[model].sampleInputs();
      const reference = TEST_MODELS[model].reference(sample);
      const result = await models.predict(model, predictTensors(model, sample));
      expect(result.outputs.map((o) => o.name.toString())).toEqual(
        TEST_MODELS[model].outputs.map((o) => o.name),
      );
      for (const output of result.outputs) {
        const want = reference[output.name.toString()]!;
        expect(output.shape).toEqual(want.shape);
        expect(output.dataType).toBe(want.dataType);
        const got = outputValues(output, want);
        if (TEST_MODELS[model].tolerance === 0) expect(got).toEqual(want.data);
        else
          (got as Float32Array).forEach((v, i) =>
            expect(Math.abs(v - (want.data as Float32Array)[i]!)).toBeLessThanOrEqual(
              TEST_MODELS[model].tolerance,
            ),
          );
      }
      await models.unload(model);
    }
  });

  it('runs a model with a -1 dimension at any size (mlp with a batch of 1 and of 4)', async () => {
    const models = registry();
    await models.load({ url: packages.mlp!, name: 'mlp' });
    const one = {
      features: { dataType: 'FLOAT32' as const, shape: [1, 4], data: new Float32Array([5.1, 3.5, 1.4, 0.2]) },
    };
    const result = await models.predict('mlp', predictTensors('mlp', one));
    expect(result.outputs[0]!.shape).toEqual([1, 3]);
    expect(result.outputs[0]!.data.byteLength).toBe(12);
    await models.unload('mlp');
  });

  it('matches tensors by name when every name is a model input, in any order; else by position', async () => {
    const models = registry();
    await models.load({ url: packages['multi-io']!, name: 'mio' });
    const [a, b] = predictTensors('multi-io');
    const byName = await models.predict('mio', [b!, a!]);
    const inOrder = await models.predict('mio', [a!, b!]);
    expect(byName.outputs.map((o) => Buffer.from(o.data))).toEqual(
      inOrder.outputs.map((o) => Buffer.from(o.data)),
    );
    // Names that are not the model's (empty, stale, not UTF-8): matched by position. Swapping then swaps a and b,
    // which changes nothing for a + b and a * b, so check against a deliberately different pair.
    const unnamed = await models.predict('mio', [
      { ...b!, name: Buffer.alloc(0) },
      { ...a!, name: Buffer.from([0xff, 0xfe]) },
    ]);
    expect(unnamed.outputs.map((o) => Buffer.from(o.data))).toEqual(
      inOrder.outputs.map((o) => Buffer.from(o.data)),
    );
    const a2: PredictTensor = {
      ...a!,
      name: Buffer.from('first'),
      data: new Uint8Array(new Float32Array([1, 1, 1, 1]).buffer),
    };
    const b2: PredictTensor = {
      ...b!,
      name: Buffer.from('second'),
      data: new Uint8Array(new Float32Array([2, 3, 4, 5]).buffer),
    };
    const positional = await models.predict('mio', [a2, b2]);
    expect(new Float32Array(positional.outputs[0]!.data.slice().buffer)).toEqual(
      new Float32Array([3, 4, 5, 6]),
    );
    await models.unload('mio');
  });

  it('resolves a relative url against the working directory and accepts file:// urls', async () => {
    const models = registry();
    await models.load({ url: relative(files.root, packages.tiny!), name: 'rel' });
    expect(models.describe('rel').path).toBe(packages.tiny);
    await models.load({ url: `file://${packages.tiny}`, name: 'byurl' });
    expect(models.describe('byurl').path).toBe(packages.tiny);
    await models.close();
  });
});

describe('ModelRegistry: error codes and messages', () => {
  it('INVALID_ARGUMENT for a name outside ^[a-zA-Z0-9](-*[a-zA-Z0-9])*$ or an empty url', async () => {
    const models = registry();
    for (const name of ['my_model', 'model.v1', '-lead', 'trail-', 'spa ce', 'é', '']) {
      await expectCode(
        models.load({ url: packages.tiny!, name }),
        'INVALID_ARGUMENT',
        /model name|expected letters and digits/,
      );
    }
    await models.load({ url: packages.tiny!, name: 'a--b-9' });
    await expectCode(
      models.load({ url: '', name: 'ok' }),
      'INVALID_ARGUMENT',
      /url is empty; expected the folder/,
    );
    await expectCode(models.load({ url: 'a\0b', name: 'ok' }), 'INVALID_ARGUMENT', /NUL/);
    expect(models.list().map((m) => m.name)).toEqual(['a--b-9']);
    await models.close();
  });

  it('ALREADY_EXISTS when the name is loaded', async () => {
    const models = registry();
    await models.load({ url: packages.tiny!, name: 'dup' });
    await expectCode(
      models.load({ url: packages.mlp!, name: 'dup' }),
      'ALREADY_EXISTS',
      /"dup" is already loaded .* unload it first/,
    );
    expect(models.describe('dup').packageName).toBe('tiny');
    await models.close();
  });

  it('NOT_FOUND for a url with no package, and for unknown names in unload, describe and predict', async () => {
    const models = registry();
    await expectCode(
      models.load({ url: join(files.root, 'nowhere'), name: 'm' }),
      'NOT_FOUND',
      /no model package at .*nowhere.*does not exist/,
    );
    // A folder with no manifest.json and nothing recognisable: no package there (spec: NOT_FOUND).
    const empty = join(files.root, 'empty');
    await mkdir(empty);
    await expectCode(models.load({ url: empty, name: 'm' }), 'NOT_FOUND', /has no manifest\.json/);
    await models.load({ url: packages.tiny!, name: 'present' });
    await expectCode(
      models.unload('absent'),
      'NOT_FOUND',
      /no model named "absent" is loaded \(loaded models: present\)/,
    );
    await expectCode(() => models.describe('absent'), 'NOT_FOUND', /no model named "absent"/);
    await expectCode(
      models.predict('absent', predictTensors('tiny')),
      'NOT_FOUND',
      /no model named "absent"/,
    );
    await models.close();
  });

  it('FAILED_PRECONDITION for a folder holding a SageMaker Edge Manager (Neo/DLR) package: it is there, and cannot be loaded', async () => {
    const models = registry();
    const neo = join(files.root, 'neo-package');
    await mkdir(neo);
    for (const name of ['sagemaker_edge_manifest', 'compiled.so', 'compiled.params'])
      await writeFile(join(neo, name), 'neo');
    await expectCode(
      models.load({ url: neo, name: 'neo' }),
      'FAILED_PRECONDITION',
      /is a SageMaker Edge Manager \(Neo\/DLR-compiled\) package \(compiled\.params, compiled\.so, sagemaker_edge_manifest\), and EdgeFleet runs ONNX model packages: .*docs\/migrating-from-edge-manager\.md/,
    );
    expect(models.has('neo')).toBe(false);

    // Many names: a few are said, the compiled ones among them, so the message stays small (N2).
    for (let i = 0; i < 200; i++) await writeFile(join(neo, `${'x'.repeat(200)}-${i}.meta`), 'neo');
    let message = '';
    await models.load({ url: neo, name: 'neo' }).catch((error: Error) => (message = error.message));
    expect(message).toMatch(
      /package \(compiled\.params, compiled\.so, sagemaker_edge_manifest, x{64}…, x{64}…, \+\d+ more\), and/,
    );
    expect(message.length).toBeLessThan(1024);

    // *.meta files alone (a Unity assets folder, say) are not taken for an Edge Manager package.
    const unity = join(files.root, 'unity-assets');
    await mkdir(unity);
    for (const name of ['scene.meta', 'texture.png.meta']) await writeFile(join(unity, name), 'meta');
    await models.load({ url: unity, name: 'unity' }).then(
      () => expect.unreachable('loaded a folder of .meta files'),
      (error: Error) => expect(error.message).not.toMatch(/Edge Manager/),
    );
    await models.close();
  });

  it('INVALID_ARGUMENT for predict inputs of the wrong count, type, shape or byte length', async () => {
    const models = registry();
    await models.load({ url: packages['multi-io']!, name: 'mio' });
    const [a, b] = predictTensors('multi-io');
    await expectCode(
      models.predict('mio', [a!]),
      'INVALID_ARGUMENT',
      /takes 2 input tensors \("a": FLOAT32 \[2, 2\], "b": FLOAT32 \[2, 2\]\); the request has 1/,
    );
    await expectCode(
      models.predict('mio', [a!, { ...b!, dataType: 'INT32' }]),
      'INVALID_ARGUMENT',
      /"b" .* is INT32; the model expects FLOAT32/,
    );
    await expectCode(
      models.predict('mio', [a!, { ...b!, shape: [4, 1] }]),
      'INVALID_ARGUMENT',
      /"b" .*shape \[4, 1\] does not fit the model: dimension 0 is 4 where the model expects 2/,
    );
    await expectCode(
      models.predict('mio', [a!, { ...b!, shape: [4] }]),
      'INVALID_ARGUMENT',
      /rank 1 .* expects rank 2/,
    );
    await expectCode(
      models.predict('mio', [a!, { ...b!, data: b!.data.subarray(0, 12) }]),
      'INVALID_ARGUMENT',
      /has 12 bytes of data; shape \[2, 2\] of FLOAT32 needs 16 \(4 elements × 4 bytes\)/,
    );
    await expectCode(
      models.predict('mio', [a!, { ...b!, shape: [2, 2.5] }]),
      'INVALID_ARGUMENT',
      /whole-number dimensions/,
    );
    await expectCode(
      models.predict('mio', [a!, { ...b!, name: Buffer.from([0xc3, 0x28]), dataType: 'UINT8' }]),
      'INVALID_ARGUMENT',
      /input tensor 0xc328 \(not UTF-8\)/,
    );
    expect(models.describe('mio').requests.failed).toBe(7);
    await models.close();
  });

  it('FAILED_PRECONDITION for a bad manifest, a model ONNX Runtime refuses, or a manifest that lies', async () => {
    const models = registry();
    const badManifest = await files.catalogue('tiny', 'badmanifest');
    await writeFile(join(badManifest, 'manifest.json'), '{"schemaVersion": 1');
    await expectCode(
      models.load({ url: badManifest, name: 'm' }),
      'FAILED_PRECONDITION',
      /manifest\.json is not JSON/,
    );

    const notOnnx = await files.catalogue('tiny', 'notonnx');
    await writeFile(join(notOnnx, 'model.onnx'), 'this is not a protobuf');
    await expectCode(
      models.load({ url: notOnnx, name: 'm' }),
      'FAILED_PRECONDITION',
      /ONNX Runtime cannot load the model in package .*notonnx/,
    );

    const lying = await files.catalogue('tiny', 'lying');
    const manifest = JSON.parse(
      await (await import('node:fs/promises')).readFile(join(lying, 'manifest.json'), 'utf8'),
    );
    manifest.inputs[0].name = 'renamed';
    await writeFile(join(lying, 'manifest.json'), JSON.stringify(manifest));
    await expectCode(
      models.load({ url: lying, name: 'm' }),
      'FAILED_PRECONDITION',
      /manifest does not match the model \(input 1 is "x" in the model, "renamed" in the manifest\)/,
    );
    expect(models.list()).toEqual([]);
    expect(pool.stats().models).toEqual([]);
  });

  it('FAILED_PRECONDITION when the warm-up outputs have another rank than the manifest declares', async () => {
    const models = registry();
    const dir = await files.custom(rankLyingModel(), 'rankliar');
    await expectCode(
      models.load({ url: dir, name: 'liar' }),
      'FAILED_PRECONDITION',
      /warm-up output does not match its manifest \(output "y" has rank 1 \(shape \[1\]\) where the manifest declares rank 2/,
    );
    expect(models.list()).toEqual([]);
    expect(pool.stats().models).toEqual([]);
  });

  it('RESOURCE_EXHAUSTED when ONNX Runtime cannot allocate the memory a model needs', async () => {
    const models = registry();
    const dir = await files.custom(hugeAllocationModel(), 'huge');
    await expectCode(
      models.load({ url: dir, name: 'huge' }),
      'RESOURCE_EXHAUSTED',
      /not enough memory to run model "huge": .*Failed to allocate memory/,
    );
    expect(models.list()).toEqual([]);
    expect(pool.stats().models).toEqual([]);
  });

  it('RESOURCE_EXHAUSTED before loading when the weights exceed the memory available', async () => {
    const models = registry({ availableMemory: () => 100 });
    await expectCode(
      models.load({ url: packages.mlp!, name: 'mlp' }),
      'RESOURCE_EXHAUSTED',
      /weights take .* and 100 bytes is available/,
    );
  });

  it('UNAVAILABLE once the registry is closed', async () => {
    const models = registry();
    await models.load({ url: packages.tiny!, name: 'tiny' });
    await models.close();
    expect(models.list()).toEqual([]);
    await expectCode(models.load({ url: packages.tiny!, name: 'tiny' }), 'UNAVAILABLE', /shutting down/);
  });
});

describe('ModelRegistry: warm-up with placeholder inputs', () => {
  it('loads a model whose warm-up fails on placeholders, warning with ONNX Runtime’s reason; real inputs run', async () => {
    const { warnings, details, logger } = recordingLogger();
    const models = registry({ logger });
    const dir = await files.custom(reshapeNeedsEvenModel(), 'evenonly');
    const description = await models.load({ url: dir, name: 'even' });
    expect(description.inputs).toEqual([{ name: 'x', dataType: 'FLOAT32', shape: [-1] }]);
    const warning = warnings.findIndex((w) => /warm-up/.test(w));
    expect(warnings[warning]).toMatch(
      /model "even" loads without a warm-up: its warm-up inference with placeholder inputs \(zeros of the declared input shapes, -1 taken as 1\) failed: .*cannot be reshaped to the requested shape/,
    );
    expect(details[warning]).toEqual({ model: 'even', reason: expect.stringMatching(/cannot be reshaped/) });

    const x = new Float32Array([1, 2, 3, 4, 5, 6]);
    const result = await models.predict('even', [
      { name: Buffer.from('x'), dataType: 'FLOAT32', shape: [6], data: new Uint8Array(x.buffer) },
    ]);
    expect(result.outputs[0]!.shape).toEqual([2, 3]);
    expect(new Float32Array(result.outputs[0]!.data.slice().buffer)).toEqual(x);
    // An input the model cannot take still fails that request, not the model.
    await expectCode(
      models.predict('even', [
        { name: Buffer.from('x'), dataType: 'FLOAT32', shape: [3], data: new Uint8Array(12) },
      ]),
      'INTERNAL',
      /ONNX Runtime failed to run model "even": .*cannot be reshaped/,
    );
    expect(models.describe('even').requests).toEqual({ succeeded: 1, failed: 1 });
    await models.close();
  });

  it('warns without refusing when a warm-up output has another size than the manifest fixes', async () => {
    const { warnings, logger } = recordingLogger();
    const models = registry({ logger });
    const dir = await files.catalogue('mlp', 'mlpsizes');
    const manifestPath = join(dir, 'manifest.json');
    const manifest = JSON.parse(await readFile(manifestPath, 'utf8'));
    // The model's batch dimension is dynamic: a manifest fixing its output batch at 4 disagrees with a warm-up
    // that runs a batch of 1, which says nothing about batches of 4.
    manifest.outputs[0].shape = [4, manifest.outputs[0].shape[1]];
    await writeFile(manifestPath, JSON.stringify(manifest));
    await models.load({ url: dir, name: 'mlpsizes' });
    expect(warnings).toContainEqual(
      expect.stringMatching(
        /model "mlpsizes": with placeholder inputs, its warm-up output ".*" has a size the manifest does not declare: dimension 0 is 1 where the model expects 4/,
      ),
    );
    await models.close();
  });
});

describe('ModelRegistry: package signatures', () => {
  it('loads an unsigned package without a trust policy, with a warning', async () => {
    const { warnings, logger } = recordingLogger();
    const models = registry({ logger });
    const description = await models.load({ url: packages.tiny!, name: 'tiny' });
    expect(description.signature).toEqual({
      verified: false,
      reason: expect.stringMatching(/no trust policy/),
    });
    expect(warnings).toEqual([expect.stringMatching(/without checking its signature/)]);
    await models.close();
  });
});

describe('ModelRegistry: failed loads leave no trace', () => {
  it('a name whose load failed can be loaded again, and nothing stays in the pool', async () => {
    const models = registry();
    const bad = await files.catalogue('tiny', 'again');
    await writeFile(join(bad, 'model.onnx'), 'this is not a protobuf');
    await expectCode(
      models.load({ url: bad, name: 'again' }),
      'FAILED_PRECONDITION',
      /ONNX Runtime cannot load the model/,
    );
    expect(models.has('again')).toBe(false);
    expect(pool.stats().workers.flatMap((w) => w.sessions)).toEqual([]);
    await models.load({ url: packages.tiny!, name: 'again' });
    expect(models.describe('again').packageName).toBe('tiny');
    await models.close();
    expect(pool.stats().workers.flatMap((w) => w.sessions)).toEqual([]);
  });

  it('a package removed between attempts gives NOT_FOUND, then loads once restored', async () => {
    const models = registry();
    const dir = await files.catalogue('tiny', 'vanishing');
    await rm(join(dir, 'manifest.json'));
    await expectCode(models.load({ url: dir, name: 'v' }), 'NOT_FOUND', /no manifest\.json/);
    await models.load({ url: packages.tiny!, name: 'v' });
    await models.close();
  });
});
