import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { TEST_MODELS, type TestModelName, type TestModelTensor } from '@edgefleet/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseJsonExactIntegers } from '../../src/rest/json-tensors.js';
import {
  HttpClient,
  binaryBody,
  bytesOf,
  jsonText,
  kserveName,
  scratch,
  splitBinaryResponse,
  startAgent,
  targetOf,
  typedLike,
  type HttpResult,
  type InferResponseJson,
} from './helpers.js';

/** The catalogue models served in these tests (external-data and slow are covered by the registry's tests). */
const MODELS: TestModelName[] = ['tiny', 'mlp', 'image-identity', 'multi-io', 'int-types'];

let files: Awaited<ReturnType<typeof scratch>>;
let agent: Awaited<ReturnType<typeof startAgent>>;
const packages = new Map<TestModelName, string>();

beforeAll(async () => {
  files = await scratch('agent-rest-conformance-');
  agent = await startAgent({ socketPath: join(files.root, 'agent.rest.sock'), tcp: true });
  for (const model of MODELS) packages.set(model, await files.catalogue(model));
  const client = new HttpClient(targetOf(agent.server.addresses[0]!));
  for (const model of MODELS) {
    const loaded = await client.postJson(`/v2/repository/models/${model}/load`, {
      parameters: { url: packages.get(model) },
    });
    expect(loaded.status, loaded.text()).toBe(200);
  }
  client.close();
});

afterAll(async () => {
  await agent?.stop();
  await files?.cleanup();
});

/** An inference response's JSON, with INT64 values beyond 2^53 kept exact. */
function inferJson(result: HttpResult): InferResponseJson {
  expect(result.status, result.text()).toBe(200);
  expect(result.headers['content-type']).toMatch(/^application\/json/);
  return parseJsonExactIntegers(result.text()) as InferResponseJson;
}

function referenceOf(model: TestModelName) {
  return TEST_MODELS[model].reference(TEST_MODELS[model].sampleInputs());
}

/** Values equal to the reference: exactly, or within the model's tolerance. */
function expectValues(model: TestModelName, got: ArrayLike<number | bigint>, want: TestModelTensor): void {
  const expected = Array.from(want.data as ArrayLike<number | bigint>);
  expect(got.length).toBe(expected.length);
  const tolerance = TEST_MODELS[model].tolerance;
  if (tolerance === 0) {
    expect(Array.from(got, (v) => (typeof want.data[0] === 'bigint' ? BigInt(v) : v))).toEqual(expected);
    if (want.data instanceof Float32Array)
      expect(new Float32Array(got as ArrayLike<number>)).toEqual(want.data);
    return;
  }
  Array.from(got).forEach((v, i) =>
    expect(Math.abs(Number(v) - Number(expected[i]))).toBeLessThanOrEqual(tolerance),
  );
}

function jsonRequestInputs(model: TestModelName) {
  const inputs = TEST_MODELS[model].sampleInputs();
  return TEST_MODELS[model].inputs.map((declared) => {
    const tensor = inputs[declared.name]!;
    return {
      name: declared.name,
      shape: tensor.shape,
      datatype: kserveName(tensor.dataType),
      data: Array.from(tensor.data as ArrayLike<number | bigint>),
    };
  });
}

function binaryRequest(
  model: TestModelName,
  extra: Record<string, unknown> = { parameters: { binary_data_output: true } },
) {
  const inputs = TEST_MODELS[model].sampleInputs();
  const declared = TEST_MODELS[model].inputs;
  return binaryBody(
    {
      ...extra,
      inputs: declared.map((d) => ({
        name: d.name,
        shape: inputs[d.name]!.shape,
        datatype: kserveName(d.dataType),
        parameters: { binary_data_size: inputs[d.name]!.data.byteLength },
      })),
    },
    declared.map((d) => bytesOf(inputs[d.name]!.data)),
  );
}

/** The binary outputs of a response, by name, in the order the JSON lists them. */
function binaryOutputs(result: HttpResult): Map<string, Uint8Array> {
  expect(result.status, result.text()).toBe(200);
  expect(result.headers['content-type']).toBe('application/octet-stream');
  const { json, tail } = splitBinaryResponse(result);
  const out = new Map<string, Uint8Array>();
  let offset = 0;
  for (const output of json.outputs) {
    const size = output.parameters?.binary_data_size;
    if (size === undefined) continue;
    expect(output.data).toBeUndefined();
    out.set(output.name, tail.subarray(offset, offset + size));
    offset += size;
  }
  expect(offset).toBe(tail.length);
  return out;
}

async function metricsText(client: HttpClient): Promise<string> {
  const result = await client.get('/metrics');
  expect(result.status).toBe(200);
  expect(result.headers['content-type']).toMatch(/^text\/plain; version=0\.0\.4/);
  return result.text();
}

function metricValue(text: string, series: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? 0 : Number(line.slice(series.length + 1));
}

describe.each([
  ['Unix socket', 0],
  ['TCP 127.0.0.1', 1],
])('KServe v2 REST over %s', (_transport, index) => {
  let client: HttpClient;
  beforeAll(() => {
    client = new HttpClient(targetOf(agent.server.addresses[index]!));
  });
  afterAll(() => client?.close());

  it('listens where it says', () => {
    expect(agent.server.addresses[index]).toMatch(
      index === 0 ? /^unix:\/.*agent\.rest\.sock$/ : /^http:\/\/127\.0\.0\.1:\d+$/,
    );
  });

  it('health: live and ready', async () => {
    const live = await client.get('/v2/health/live');
    expect([live.status, live.json()]).toEqual([200, { live: true }]);
    const ready = await client.get('/v2/health/ready');
    expect([ready.status, ready.json()]).toEqual([200, { ready: true }]);
  });

  it('server metadata names the agent, its version and extensions', async () => {
    const { version } = JSON.parse(
      await readFile(new URL('../../package.json', import.meta.url), 'utf8'),
    ) as {
      version: string;
    };
    const result = await client.get('/v2');
    expect(result.status).toBe(200);
    expect(result.json()).toEqual({
      name: 'edgefleet-agent',
      version,
      // TCP lists only what it serves: the repository is the Unix socket's (tcp-management.test.ts).
      extensions: index === 0 ? ['binary_tensor_data', 'model_repository'] : ['binary_tensor_data'],
    });
  });

  it('model metadata: KServe datatypes, shapes with -1 for dynamic dimensions, with or without a version', async () => {
    const expected = {
      name: 'int-types',
      versions: ['1.0'],
      platform: 'onnxruntime_onnx',
      inputs: [
        { name: 'counts', datatype: 'INT64', shape: [-1] },
        { name: 'bytes', datatype: 'UINT8', shape: [4] },
      ],
      outputs: [
        { name: 'counts_plus_one', datatype: 'INT64', shape: [-1] },
        { name: 'bytes_out', datatype: 'UINT8', shape: [4] },
      ],
    };
    expect((await client.get('/v2/models/int-types')).json()).toEqual(expected);
    expect((await client.get('/v2/models/int-types/versions/1.0')).json()).toEqual(expected);
    const mlp = (await client.get('/v2/models/mlp')).json() as { inputs: unknown[]; outputs: unknown[] };
    expect(mlp.inputs).toEqual([{ name: 'features', datatype: 'FP32', shape: [-1, 4] }]);
    expect(mlp.outputs).toEqual([{ name: 'probabilities', datatype: 'FP32', shape: [-1, 3] }]);
  });

  it('model readiness', async () => {
    const ready = await client.get('/v2/models/tiny/ready');
    expect([ready.status, ready.json()]).toEqual([200, { name: 'tiny', ready: true }]);
    expect((await client.get('/v2/models/tiny/versions/1.0/ready')).status).toBe(200);
    const missing = await client.get('/v2/models/absent/ready');
    expect(missing.status).toBe(404);
    expect(missing.json()).toEqual({ error: expect.stringMatching(/no model named "absent" is loaded/) });
  });

  it.each(MODELS)('infer %s with JSON tensors: exact outputs in the model order', async (model) => {
    const response = inferJson(
      await client.request({
        method: 'POST',
        path: `/v2/models/${model}/infer`,
        headers: { 'content-type': 'application/json' },
        body: jsonText({ inputs: jsonRequestInputs(model) }),
      }),
    );
    const reference = referenceOf(model);
    expect(response.model_name).toBe(model);
    expect(response.model_version).toBe('1.0');
    expect(response.id).toBeUndefined();
    expect(response.outputs.map((o) => o.name)).toEqual(TEST_MODELS[model].outputs.map((o) => o.name));
    for (const output of response.outputs) {
      const want = reference[output.name]!;
      expect(output.datatype).toBe(kserveName(want.dataType));
      expect(output.shape).toEqual(want.shape);
      expectValues(model, output.data as Array<number | bigint>, want);
    }
  });

  it.each(MODELS)('infer %s with binary tensors in and out: exact bytes', async (model) => {
    const request = binaryRequest(model);
    const result = await client.request({ method: 'POST', path: `/v2/models/${model}/infer`, ...request });
    const outputs = binaryOutputs(result);
    const reference = referenceOf(model);
    const { json } = splitBinaryResponse(result);
    expect(json.outputs.map((o) => [o.name, o.datatype, o.shape])).toEqual(
      TEST_MODELS[model].outputs.map((o) => [o.name, kserveName(o.dataType), reference[o.name]!.shape]),
    );
    for (const [name, bytes] of outputs) {
      const want = reference[name]!;
      if (TEST_MODELS[model].tolerance === 0)
        expect(Buffer.from(bytes).equals(Buffer.from(bytesOf(want.data)))).toBe(true);
      else expectValues(model, typedLike(bytes, want) as ArrayLike<number>, want);
    }
  });

  it('binary inputs with JSON outputs (no binary asked for): a plain JSON response', async () => {
    const request = binaryRequest('int-types', {});
    const response = inferJson(
      await client.request({ method: 'POST', path: '/v2/models/int-types/infer', ...request }),
    );
    const reference = referenceOf('int-types');
    expect(response.outputs[0]!.data!.map((v) => BigInt(v as number | bigint))).toEqual(
      Array.from(reference.counts_plus_one!.data as BigInt64Array),
    );
    expect(response.outputs[1]!.data).toEqual(Array.from(reference.bytes_out!.data as Uint8Array));
  });

  it('mixes JSON and binary inputs, and JSON and binary outputs per output', async () => {
    const { a, b } = TEST_MODELS['multi-io'].sampleInputs();
    const request = binaryBody(
      {
        id: 'mixed-1',
        inputs: [
          { name: 'a', shape: [2, 2], datatype: 'FP32', data: Array.from(a!.data as Float32Array) },
          { name: 'b', shape: [2, 2], datatype: 'FP32', parameters: { binary_data_size: 16 } },
        ],
        outputs: [{ name: 'product', parameters: { binary_data: true } }, { name: 'sum' }],
      },
      [bytesOf(b!.data)],
    );
    const result = await client.request({ method: 'POST', path: '/v2/models/multi-io/infer', ...request });
    const binary = binaryOutputs(result);
    const { json } = splitBinaryResponse(result);
    const reference = referenceOf('multi-io');
    expect(json.id).toBe('mixed-1');
    expect(json.outputs.map((o) => o.name)).toEqual(['product', 'sum']);
    expect(new Float32Array(json.outputs[1]!.data as number[])).toEqual(reference.sum!.data);
    expect([...binary.keys()]).toEqual(['product']);
    expect(typedLike(binary.get('product')!, reference.product!)).toEqual(reference.product!.data);
  });

  it('per-output binary_data false overrides binary_data_output', async () => {
    const request = binaryRequest('multi-io', {
      parameters: { binary_data_output: true },
      outputs: [{ name: 'sum', parameters: { binary_data: false } }, { name: 'product' }],
    });
    const result = await client.request({ method: 'POST', path: '/v2/models/multi-io/infer', ...request });
    const binary = binaryOutputs(result);
    const { json } = splitBinaryResponse(result);
    expect(json.outputs[0]!.data).toEqual(Array.from(referenceOf('multi-io').sum!.data as Float32Array));
    expect([...binary.keys()]).toEqual(['product']);
  });

  it('returns only the outputs asked for, in the order asked', async () => {
    const inputs = jsonRequestInputs('multi-io');
    const one = inferJson(
      await client.postJson('/v2/models/multi-io/infer', { inputs, outputs: [{ name: 'product' }] }),
    );
    expect(one.outputs.map((o) => o.name)).toEqual(['product']);
    expect(new Float32Array(one.outputs[0]!.data as number[])).toEqual(referenceOf('multi-io').product!.data);
    const both = inferJson(
      await client.postJson('/v2/models/multi-io/infer', {
        inputs,
        outputs: [{ name: 'product' }, { name: 'sum' }],
      }),
    );
    expect(both.outputs.map((o) => o.name)).toEqual(['product', 'sum']);
  });

  it('echoes the request id, in JSON and binary responses', async () => {
    const json = inferJson(
      await client.postJson('/v2/models/tiny/infer', { id: 'req-42 ✓', inputs: jsonRequestInputs('tiny') }),
    );
    expect(json.id).toBe('req-42 ✓');
    const request = binaryRequest('tiny', { id: '', parameters: { binary_data_output: true } });
    const result = await client.request({ method: 'POST', path: '/v2/models/tiny/infer', ...request });
    expect(splitBinaryResponse(result).json.id).toBe('');
  });

  it('accepts data nested as the shape, and a batch of any size for a -1 dimension', async () => {
    const features = TEST_MODELS.mlp.sampleInputs().features!;
    const rows = Array.from({ length: 4 }, (_, r) =>
      Array.from((features.data as Float32Array).subarray(r * 4, r * 4 + 4)),
    );
    const response = inferJson(
      await client.postJson('/v2/models/mlp/infer', {
        inputs: [{ name: 'features', shape: [4, 4], datatype: 'FP32', data: rows }],
      }),
    );
    expect(response.outputs[0]!.shape).toEqual([4, 3]);
    expectValues('mlp', response.outputs[0]!.data as number[], referenceOf('mlp').probabilities!);
    const single = inferJson(
      await client.postJson('/v2/models/mlp/infer', {
        inputs: [{ name: 'features', shape: [1, 4], datatype: 'FP32', data: [rows[0]] }],
      }),
    );
    expect(single.outputs[0]!.shape).toEqual([1, 3]);
    const want = TEST_MODELS.mlp.reference({
      features: { dataType: 'FLOAT32', shape: [1, 4], data: new Float32Array(rows[0]!) },
    });
    expectValues('mlp', single.outputs[0]!.data as number[], want.probabilities!);
  });

  it('infers at the model version path', async () => {
    const response = inferJson(
      await client.postJson('/v2/models/tiny/versions/1.0/infer', { inputs: jsonRequestInputs('tiny') }),
    );
    expectValues('tiny', response.outputs[0]!.data as number[], referenceOf('tiny').y!);
  });

  it('takes the body whatever its Content-Type says (or without one)', async () => {
    const body = JSON.stringify({ inputs: jsonRequestInputs('tiny') });
    for (const headers of [
      {} as Record<string, string>,
      { 'content-type': 'text/plain' },
      { 'content-type': 'application/json; charset=utf-8' },
    ]) {
      const result = await client.request({ method: 'POST', path: '/v2/models/tiny/infer', headers, body });
      expectValues('tiny', inferJson(result).outputs[0]!.data as number[], referenceOf('tiny').y!);
    }
    const request = binaryRequest('tiny');
    const plain = await client.request({
      method: 'POST',
      path: '/v2/models/tiny/infer',
      headers: { 'inference-header-content-length': request.headers['inference-header-content-length'] },
      body: request.body,
    });
    expect(Buffer.from(bytesOf(referenceOf('tiny').y!.data)).equals(binaryOutputs(plain).get('y')!)).toBe(
      true,
    );
  });

  it('takes a chunked request body', async () => {
    const request = binaryRequest('image-identity');
    const result = await client.request({
      method: 'POST',
      path: '/v2/models/image-identity/infer',
      headers: { ...request.headers, 'transfer-encoding': 'chunked' },
      body: request.body,
    });
    expect(
      Buffer.from(binaryOutputs(result).get('image_out')!).equals(
        Buffer.from(bytesOf(referenceOf('image-identity').image_out!.data)),
      ),
    ).toBe(true);
  });

  // On TCP the repository is refused by default (tcp-management.test.ts): loopback TCP has no caller identity.
  it.runIf(index === 0)('repository: index, load under a new name, infer, unload', async () => {
    const name = `tiny-${index}`;
    const before = (await client.postJson('/v2/repository/index', {})).json() as Array<{ name: string }>;
    expect(before.map((m) => m.name)).toEqual(expect.arrayContaining(MODELS));
    expect(before.map((m) => m.name)).not.toContain(name);

    const load = await client.postJson(`/v2/repository/models/${name}/load`, {
      parameters: { url: packages.get('tiny') },
    });
    expect([load.status, load.body.length]).toEqual([200, 0]);
    expect((await client.get(`/v2/models/${name}/ready`)).status).toBe(200);
    const response = inferJson(
      await client.postJson(`/v2/models/${name}/infer`, { inputs: jsonRequestInputs('tiny') }),
    );
    expect(response.model_name).toBe(name);
    expectValues('tiny', response.outputs[0]!.data as number[], referenceOf('tiny').y!);

    const listed = (await client.request({ method: 'POST', path: '/v2/repository/index' })).json();
    expect(listed).toContainEqual({ name, version: '1.0', state: 'READY' });
    const readyOnly = (await client.postJson('/v2/repository/index', { ready: true })).json();
    expect(readyOnly).toEqual(listed);

    const unload = await client.request({ method: 'POST', path: `/v2/repository/models/${name}/unload` });
    expect([unload.status, unload.body.length]).toEqual([200, 0]);
    expect((await client.get(`/v2/models/${name}/ready`)).status).toBe(404);
    expect(
      (await client.postJson(`/v2/models/${name}/infer`, { inputs: jsonRequestInputs('tiny') })).status,
    ).toBe(404);
    const after = (await client.postJson('/v2/repository/index', {})).json() as Array<{ name: string }>;
    expect(after.map((m) => m.name)).not.toContain(name);
    const again = await client.request({ method: 'POST', path: `/v2/repository/models/${name}/unload` });
    expect(again.status).toBe(404);
  });

  it('/metrics counts the traffic: per-model inference and per-route REST requests', async () => {
    const successes = `edgefleet_inference_request_success_total{model="multi-io"}`;
    const failures = `edgefleet_inference_request_failure_total{model="multi-io",code="INVALID_ARGUMENT"}`;
    const restOk = `edgefleet_rest_requests_total{method="POST",route="/v2/models/:name/infer",status="200"}`;
    const restBad = `edgefleet_rest_requests_total{method="POST",route="/v2/models/:name/infer",status="400"}`;
    const before = await metricsText(client);
    for (let i = 0; i < 3; i++) {
      expect(
        (await client.postJson('/v2/models/multi-io/infer', { inputs: jsonRequestInputs('multi-io') }))
          .status,
      ).toBe(200);
    }
    const binary = binaryRequest('multi-io');
    expect(
      (await client.request({ method: 'POST', path: '/v2/models/multi-io/infer', ...binary })).status,
    ).toBe(200);
    const wrongShape = jsonRequestInputs('multi-io').map((input) => ({ ...input, shape: [4, 1] }));
    expect((await client.postJson('/v2/models/multi-io/infer', { inputs: wrongShape })).status).toBe(400);
    expect(
      (await client.request({ method: 'POST', path: '/v2/models/multi-io/infer', body: '{' })).status,
    ).toBe(400);
    const after = await metricsText(client);
    expect(metricValue(after, successes) - metricValue(before, successes)).toBe(4);
    expect(metricValue(after, failures) - metricValue(before, failures)).toBe(1);
    expect(metricValue(after, restOk) - metricValue(before, restOk)).toBe(4);
    expect(metricValue(after, restBad) - metricValue(before, restBad)).toBe(2);
    expect(after).toMatch(/^edgefleet_inference_compute_duration_seconds_count\{model="multi-io"\} \d+$/m);
    expect(after).toMatch(/^edgefleet_models_loaded \d+$/m);
    expect(after).toMatch(/^edgefleet_inference_workers\{state="ready"\} 1$/m);
  });
});
