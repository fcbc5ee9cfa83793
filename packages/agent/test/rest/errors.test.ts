import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { TEST_MODELS } from '@edgefleet/core';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { AgentMetrics } from '../../src/metrics/index.js';
import { HTTP_STATUS, ModelRegistry } from '../../src/models/index.js';
import { startRestServer } from '../../src/rest/index.js';
import {
  HttpClient,
  binaryBody,
  bytesOf,
  scratch,
  startAgent,
  targetOf,
  type HttpResult,
  type RequestSpec,
} from './helpers.js';

const MAX_BODY_BYTES = 1024 * 1024;

let files: Awaited<ReturnType<typeof scratch>>;
let agent: Awaited<ReturnType<typeof startAgent>>;
let client: HttpClient;
let tinyPackage: string;

beforeAll(async () => {
  files = await scratch('agent-rest-errors-');
  agent = await startAgent({ socketPath: join(files.root, 'rest.sock'), maxBodyBytes: MAX_BODY_BYTES });
  client = new HttpClient(targetOf(agent.server.addresses[0]!));
  tinyPackage = await files.catalogue('tiny');
  await agent.registry.load({ name: 'tiny', url: tinyPackage });
  await agent.registry.load({ name: 'multi-io', url: await files.catalogue('multi-io') });
  await agent.registry.load({ name: 'int-types', url: await files.catalogue('int-types') });
});

afterAll(async () => {
  client?.close();
  await agent?.stop();
  await files?.cleanup();
});

const x = TEST_MODELS.tiny.sampleInputs().x!;
const xValues = Array.from(x.data as Float32Array);
const tinyInput = { name: 'x', shape: [1, 16], datatype: 'FP32', data: xValues };
const xBytes = bytesOf(x.data);

/** After every failure the server still answers a correct request exactly. */
async function expectStillServing(via: HttpClient = client): Promise<void> {
  const result = await via.postJson('/v2/models/tiny/infer', { inputs: [tinyInput] });
  expect(result.status, result.text()).toBe(200);
  const output = (result.json() as { outputs: Array<{ data: number[] }> }).outputs[0]!;
  expect(new Float32Array(output.data)).toEqual(TEST_MODELS.tiny.reference({ x }).y!.data);
}

function expectError(result: HttpResult, status: number, message: RegExp): void {
  expect(result.status, result.text()).toBe(status);
  expect(result.headers['content-type']).toMatch(/^application\/json/);
  const body = result.json() as { error: string };
  expect(Object.keys(body)).toEqual(['error']);
  expect(body.error).toMatch(message);
}

const infer = (body: string | Uint8Array | Uint8Array[], headers: Record<string, string | number> = {}) =>
  ({ method: 'POST', path: '/v2/models/tiny/infer', headers, body }) satisfies RequestSpec;
const inferJson = (value: unknown) => infer(JSON.stringify(value), { 'content-type': 'application/json' });
const inferBinary = (json: unknown, parts: Uint8Array[], model = 'tiny') => {
  const request = binaryBody(json, parts);
  return { method: 'POST', path: `/v2/models/${model}/infer`, ...request } satisfies RequestSpec;
};
const binaryInput = (size: number) => ({
  name: 'x',
  shape: [1, 16],
  datatype: 'FP32',
  parameters: { binary_data_size: size },
});

interface Case {
  what: string;
  request: RequestSpec;
  status: number;
  message: RegExp;
}

const inferCases: Case[] = [
  {
    what: 'malformed JSON',
    request: infer('{"inputs": [}'),
    status: 400,
    message: /^the request body is not valid JSON \(.+\); expected \{"id"\?/,
  },
  { what: 'an empty body', request: infer(''), status: 400, message: /^the request body is empty; expected/ },
  {
    what: 'no body at all',
    request: { method: 'POST', path: '/v2/models/tiny/infer' },
    status: 400,
    message: /^the request body is empty/,
  },
  {
    what: 'JSON that is not an object',
    request: inferJson([1, 2]),
    status: 400,
    message: /^the inference request is malformed: \(the request\): .*expected object/,
  },
  {
    what: 'no inputs',
    request: inferJson({ id: 'a' }),
    status: 400,
    message: /malformed: inputs: .*expected array/,
  },
  {
    what: 'an empty inputs list',
    request: inferJson({ inputs: [] }),
    status: 400,
    message: /inputs: Too small: expected array to have >=1 items/,
  },
  {
    what: 'a datatype that is not KServe',
    request: inferJson({ inputs: [{ ...tinyInput, datatype: 'FLOAT32' }] }),
    status: 400,
    message:
      /^input "x" \(#1\) has datatype "FLOAT32", which is not a KServe datatype; expected one of UINT8, INT16, INT32, INT64, FP16, FP32, FP64 \(case-sensitive\)$/,
  },
  {
    what: 'a lower-case datatype',
    request: inferJson({ inputs: [{ ...tinyInput, datatype: 'fp32' }] }),
    status: 400,
    message: /datatype "fp32", which is not a KServe datatype/,
  },
  {
    what: 'a KServe datatype the agent does not serve',
    request: inferJson({ inputs: [{ ...tinyInput, datatype: 'BOOL' }] }),
    status: 400,
    message: /has datatype BOOL, which this agent does not serve; expected one of/,
  },
  {
    what: 'a datatype the model does not take',
    request: inferJson({ inputs: [{ ...tinyInput, datatype: 'FP64' }] }),
    status: 400,
    message: /is FLOAT64; the model expects FLOAT32/,
  },
  {
    what: 'fewer values than the shape needs',
    request: inferJson({ inputs: [{ ...tinyInput, data: xValues.slice(1) }] }),
    status: 400,
    message: /^input "x" \(#1\) has 15 values in data; shape \[1, 16\] needs 16$/,
  },
  {
    what: 'more values than the shape needs',
    request: inferJson({ inputs: [{ ...tinyInput, data: [...xValues, 1] }] }),
    status: 400,
    message: /has 17 values in data; shape \[1, 16\] needs 16/,
  },
  {
    what: 'a shape the model does not take',
    request: inferJson({ inputs: [{ ...tinyInput, shape: [2, 8] }] }),
    status: 400,
    message: /shape \[2, 8\] does not fit the model: dimension 0 is 2 where the model expects 1/,
  },
  {
    what: 'a negative dimension',
    request: inferJson({ inputs: [{ ...tinyInput, shape: [1, -16] }] }),
    status: 400,
    message: /inputs\[0\]\.shape\[1\]: Too small/,
  },
  {
    what: 'a fractional dimension',
    request: inferJson({ inputs: [{ ...tinyInput, shape: [1, 15.5] }] }),
    status: 400,
    message: /inputs\[0\]\.shape\[1\]: .*int/i,
  },
  {
    what: 'a value that is not a number',
    request: inferJson({ inputs: [{ ...tinyInput, data: [...xValues.slice(0, 15), true] }] }),
    status: 400,
    message: /^input "x" \(#1\): data\[15\] is true; expected a number \(FP32/,
  },
  {
    what: 'nested data that does not follow the shape',
    request: inferJson({ inputs: [{ ...tinyInput, data: [xValues.slice(0, 8), xValues.slice(8)] }] }),
    status: 400,
    message: /data is an array of 2 where the shape \[1, 16\] puts an array of 1 at depth 0/,
  },
  {
    what: 'data as a string',
    request: inferJson({ inputs: [{ ...tinyInput, data: 'AAAA' }] }),
    status: 400,
    message: /data is the string "AAAA"; expected FP32 values/,
  },
  {
    what: 'both data and binary_data_size',
    request: inferBinary({ inputs: [{ ...binaryInput(64), data: xValues }] }, [xBytes]),
    status: 400,
    message: /has both data and parameters.binary_data_size; expected one of them/,
  },
  {
    what: 'neither data nor binary_data_size',
    request: inferJson({ inputs: [{ name: 'x', shape: [1, 16], datatype: 'FP32' }] }),
    status: 400,
    message: /has no data; expected "data"/,
  },
  {
    what: 'an id that is not a string',
    request: inferJson({ id: 7, inputs: [tinyInput] }),
    status: 400,
    message: /malformed: id: .*expected string/,
  },
  {
    what: 'a binary_data_size that is not a whole number',
    request: inferBinary({ inputs: [binaryInput(6.5)] }, [xBytes]),
    status: 400,
    message: /inputs\[0\]\.parameters\.binary_data_size: .*int/i,
  },
  {
    what: 'a negative binary_data_size',
    request: inferBinary({ inputs: [binaryInput(-64)] }, [xBytes]),
    status: 400,
    message: /binary_data_size: Too small/,
  },
  {
    what: 'a binary_data_size beyond the body',
    request: inferBinary({ inputs: [binaryInput(128)] }, [xBytes]),
    status: 400,
    message: /has binary_data_size 128, but only 64 bytes of binary data remain/,
  },
  {
    what: 'binary sizes that leave bytes over',
    request: inferBinary({ inputs: [binaryInput(64)] }, [xBytes, new Uint8Array(3)]),
    status: 400,
    message: /binary_data_size add up to 64 bytes, but the body has 67 bytes after the JSON part/,
  },
  {
    what: 'binary bytes and no binary input',
    request: inferBinary({ inputs: [tinyInput] }, [xBytes]),
    status: 400,
    message: /64 bytes after the JSON part but no input has parameters.binary_data_size/,
  },
  {
    what: 'a binary size that does not fit the shape',
    request: inferBinary({ inputs: [binaryInput(60)] }, [xBytes.subarray(0, 60)]),
    status: 400,
    message: /has 60 bytes of data; shape \[1, 16\] of FLOAT32 needs 64/,
  },
  {
    what: 'an Inference-Header-Content-Length beyond the body',
    request: infer(JSON.stringify({ inputs: [tinyInput] }), { 'inference-header-content-length': 100000 }),
    status: 400,
    message:
      /^the Inference-Header-Content-Length header says the JSON part is 100000 bytes, but the body has only \d+; expected at most the body's length$/,
  },
  {
    what: 'an Inference-Header-Content-Length that is not a number',
    request: infer('{}', { 'inference-header-content-length': '1e3' }),
    status: 400,
    message: /header is "1e3"; expected the byte length of the JSON part/,
  },
  {
    what: 'a negative Inference-Header-Content-Length',
    request: infer('{}', { 'inference-header-content-length': '-2' }),
    status: 400,
    message: /header is "-2"/,
  },
  {
    what: 'an Inference-Header-Content-Length that cuts the JSON',
    request: infer(JSON.stringify({ inputs: [tinyInput] }), { 'inference-header-content-length': 20 }),
    status: 400,
    message:
      /^the JSON part of the body \(its first Inference-Header-Content-Length bytes\) is not valid JSON/,
  },
  {
    what: 'a zero Inference-Header-Content-Length',
    request: infer('{}', { 'inference-header-content-length': 0 }),
    status: 400,
    message: /the JSON part of the body .* is empty/,
  },
  {
    what: 'a body that is not UTF-8',
    request: infer(Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d])),
    status: 400,
    message: /^the request body is not valid UTF-8; expected UTF-8 encoded JSON$/,
  },
  {
    what: 'a JSON part that is not UTF-8',
    request: infer([Buffer.from([0xc3, 0x28]), xBytes], { 'inference-header-content-length': 2 }),
    status: 400,
    message: /^the JSON part of the body .* is not valid UTF-8/,
  },
  {
    what: 'an output the model does not have',
    request: inferJson({ inputs: [tinyInput], outputs: [{ name: 'nope' }] }),
    status: 400,
    message: /^model "tiny" has no output "nope"; expected outputs among: "y"$/,
  },
  {
    what: 'an output asked for twice',
    request: inferJson({ inputs: [tinyInput], outputs: [{ name: 'y' }, { name: 'y' }] }),
    status: 400,
    message: /output "y" is requested twice/,
  },
  {
    what: 'classification',
    request: inferJson({ inputs: [tinyInput], outputs: [{ name: 'y', parameters: { classification: 3 } }] }),
    status: 400,
    message: /asks for classification, an extension this agent does not implement/,
  },
  {
    what: 'a binary_data flag that is not a boolean',
    request: inferJson({ inputs: [tinyInput], outputs: [{ name: 'y', parameters: { binary_data: 'yes' } }] }),
    status: 400,
    message: /outputs\[0\]\.parameters\.binary_data: .*expected boolean/,
  },
  {
    what: 'an unknown model',
    request: { ...inferJson({ inputs: [tinyInput] }), path: '/v2/models/absent/infer' },
    status: 404,
    message: /^no model named "absent" is loaded/,
  },
  {
    what: 'a version that is not loaded',
    request: { ...inferJson({ inputs: [tinyInput] }), path: '/v2/models/tiny/versions/7/infer' },
    status: 404,
    message: /^model "tiny" is loaded at version "1.0", not "7"/,
  },
  {
    what: 'too few inputs',
    request: {
      ...inferJson({ inputs: [{ name: 'a', shape: [2, 2], datatype: 'FP32', data: [1, 2, 3, 4] }] }),
      path: '/v2/models/multi-io/infer',
    },
    status: 400,
    message: /model "multi-io" takes 2 input tensors .*; the request has 1/,
  },
  {
    what: 'an INT64 beyond the INT64 range',
    request: {
      ...infer(
        '{"inputs":[{"name":"counts","shape":[1],"datatype":"INT64","data":[9223372036854775808]},{"name":"bytes","shape":[4],"datatype":"UINT8","data":[1,2,3,4]}]}',
      ),
      path: '/v2/models/int-types/infer',
    },
    status: 400,
    message: /data\[0\] is 9223372036854775808; expected an INT64 in \[-2\^63, 2\^63 - 1\]/,
  },
  {
    what: 'a UINT8 out of range',
    request: {
      ...inferJson({
        inputs: [
          { name: 'counts', shape: [1], datatype: 'INT64', data: [1] },
          { name: 'bytes', shape: [4], datatype: 'UINT8', data: [1, 2, 3, 256] },
        ],
      }),
      path: '/v2/models/int-types/infer',
    },
    status: 400,
    message:
      /input "bytes" \(#2\): data\[3\] is 256, out of range for UINT8; expected a whole number in \[0, 255\]/,
  },
];

describe('every bad inference request gets a precise 4xx, and the server keeps serving', () => {
  afterEach(async () => expectStillServing());

  it.each(inferCases)('$what → $status', async ({ request, status, message }) => {
    expectError(await client.request(request), status, message);
  });
});

describe('every bad request to the other endpoints gets a precise 4xx', () => {
  afterEach(async () => expectStillServing());

  it('unknown paths and methods → 404 naming what is served; a too long path segment → 400', async () => {
    expectError(
      await client.get('/v1/models/tiny'),
      404,
      /^no endpoint GET \/v1\/models\/tiny; this agent serves the KServe v2 REST API/,
    );
    expectError(await client.get('/v2/models/tiny/infer'), 404, /^no endpoint GET \/v2\/models\/tiny\/infer/);
    expectError(
      await client.request({ method: 'DELETE', path: '/v2/models/tiny' }),
      404,
      /^no endpoint DELETE/,
    );
    expectError(
      await client.get(`/v2/models/${'a'.repeat(2000)}`),
      400,
      /^a segment of the path \/v2\/models\/a{189}… is longer than 1024 characters; expected model names and versions of at most 1024$/,
    );
  });

  it('a Content-Type header that is not a media type → 415 saying so', async () => {
    expectError(
      await client.request(infer(JSON.stringify({ inputs: [tinyInput] }), { 'content-type': 'json;;; ===' })),
      415,
      /^the Content-Type header "json;;; ===" is not a valid media type; expected for example application\/json/,
    );
  });

  it('a path with bad percent-encoding → 400', async () => {
    expectError(
      await client.get('/v2/models/%E0%A4%A'),
      400,
      /^the path \/v2\/models\/%E0%A4%A is not a valid URL \(bad percent-encoding\); expected a valid URL path$/,
    );
  });

  it('metadata and readiness of an unknown model or version → 404', async () => {
    expectError(
      await client.get('/v2/models/absent'),
      404,
      /^no model named "absent" is loaded \(loaded models: /,
    );
    expectError(
      await client.get('/v2/models/tiny/versions/2.0'),
      404,
      /not "2.0"; expected that version, or no version in the path/,
    );
    expectError(await client.get('/v2/models/tiny/versions/2.0/ready'), 404, /not "2.0"/);
  });

  it('load: missing, malformed or incomplete bodies → 400', async () => {
    const load = (body?: string) =>
      client.request({
        method: 'POST',
        path: '/v2/repository/models/other/load',
        ...(body !== undefined ? { body } : {}),
      });
    expectError(
      await load(),
      400,
      /^loading needs the package folder; expected the body \{"parameters": \{"url": "<model package folder>"\}\}$/,
    );
    expectError(
      await load('{"parameters": '),
      400,
      /^the request body is not valid JSON \(.*\); expected \{"parameters"/,
    );
    expectError(await load('{"parameters": {}}'), 400, /parameters\.url: .*expected string/);
    expectError(await load('{"parameters": {"url": ""}}'), 400, /parameters\.url: Too small/);
    expectError(
      await load(JSON.stringify({ parameters: { url: tinyPackage, config: '{}' } })),
      400,
      /parameters: Unrecognized key: "config"/,
    );
    expectError(await load('\xff'), 400, /not valid/);
  });

  it('load: no package there → 404; a bad name → 400; a name already loaded → 409', async () => {
    expectError(
      await client.postJson('/v2/repository/models/other/load', {
        parameters: { url: join(files.root, 'nothing-here') },
      }),
      404,
      /nothing-here/,
    );
    expectError(
      await client.postJson('/v2/repository/models/bad_name/load', { parameters: { url: tinyPackage } }),
      400,
      /model name/i,
    );
    expectError(
      await client.postJson('/v2/repository/models/tiny/load', { parameters: { url: tinyPackage } }),
      409,
      /^a model named "tiny" is already loaded/,
    );
  });

  it(`load: a package that cannot be loaded → FAILED_PRECONDITION (${HTTP_STATUS.FAILED_PRECONDITION})`, async () => {
    const broken = join(files.root, 'broken-package');
    await mkdir(broken, { recursive: true });
    await writeFile(join(broken, 'manifest.json'), '{"schemaVersion": 1, "name": 3}');
    await writeFile(join(broken, 'model.onnx'), 'not a model');
    expectError(
      await client.postJson('/v2/repository/models/broken/load', { parameters: { url: broken } }),
      HTTP_STATUS.FAILED_PRECONDITION,
      /manifest|package/i,
    );
  });

  it('unload of an unknown model → 404', async () => {
    expectError(
      await client.request({ method: 'POST', path: '/v2/repository/models/absent/unload' }),
      404,
      /^no model named "absent" is loaded/,
    );
  });

  it('repository index with a malformed body → 400', async () => {
    expectError(
      await client.postJson('/v2/repository/index', { ready: 'yes' }),
      400,
      /ready: .*expected boolean/,
    );
    expectError(
      await client.request({ method: 'POST', path: '/v2/repository/index', body: '[' }),
      400,
      /not valid JSON/,
    );
  });
});

describe('bodies above maxBodyBytes', () => {
  it('a Content-Length above the limit → 413 at once, connection closed', async () => {
    const fresh = new HttpClient(client.target);
    const result = await fresh.request({
      ...infer(new Uint8Array(MAX_BODY_BYTES + 1)),
      headers: { 'content-length': MAX_BODY_BYTES + 1 },
    });
    expectError(
      result,
      413,
      new RegExp(
        `^the request body is ${MAX_BODY_BYTES + 1} bytes \\(Content-Length\\); this agent accepts at most ${MAX_BODY_BYTES} bytes of JSON \\(maxJsonBodyBytes\\)`,
      ),
    );
    expect(result.headers.connection).toBe('close');
    fresh.close();
    await expectStillServing();
  });

  it('a chunked body that grows past the limit → 413', async () => {
    const fresh = new HttpClient(client.target);
    const chunks = Array.from({ length: 5 }, () => new Uint8Array(MAX_BODY_BYTES / 4));
    const result = await fresh.request({ ...infer(chunks), headers: { 'transfer-encoding': 'chunked' } });
    expectError(
      result,
      413,
      new RegExp(
        `^the request body is more than ${MAX_BODY_BYTES} bytes; this agent accepts at most ${MAX_BODY_BYTES} bytes`,
      ),
    );
    fresh.close();
    await expectStillServing();
  });

  it('a body of exactly the limit is read (and judged on its content)', async () => {
    const json = Buffer.from(JSON.stringify({ inputs: [binaryInput(64)] }));
    const padding = new Uint8Array(MAX_BODY_BYTES - json.length - 64);
    const result = await client.request(
      infer([json, xBytes, padding], { 'inference-header-content-length': json.length }),
    );
    expectError(
      result,
      400,
      new RegExp(
        `add up to 64 bytes, but the body has ${MAX_BODY_BYTES - json.length} bytes after the JSON part`,
      ),
    );
  });
});

describe('registry failures map through HTTP_STATUS', () => {
  it(`not enough memory to load → RESOURCE_EXHAUSTED (${HTTP_STATUS.RESOURCE_EXHAUSTED}); shutting down → UNAVAILABLE (${HTTP_STATUS.UNAVAILABLE})`, async () => {
    const registry = new ModelRegistry({
      pool: agent.pool,
      trust: null,
      cwd: files.root,
      availableMemory: () => 0,
    });
    const server = await startRestServer({
      registry,
      metrics: new AgentMetrics({ defaultMetrics: false }),
      logger: pino({ level: 'silent' }),
      unixSocketPath: join(files.root, 'starved.sock'),
    });
    const starved = new HttpClient(targetOf(server.addresses[0]!));
    try {
      expectError(
        await starved.postJson('/v2/repository/models/tiny/load', { parameters: { url: tinyPackage } }),
        HTTP_STATUS.RESOURCE_EXHAUSTED,
        /^not enough memory to load model "tiny"/,
      );
      await registry.close();
      expectError(
        await starved.postJson('/v2/repository/models/tiny/load', { parameters: { url: tinyPackage } }),
        HTTP_STATUS.UNAVAILABLE,
        /shutting down/,
      );
    } finally {
      starved.close();
      await server.close();
    }
  });
});
