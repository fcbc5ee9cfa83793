import { connect } from 'node:net';
import { join } from 'node:path';
import { TEST_MODELS } from '@edgefleet/core';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KSERVE_DATATYPES } from '../../src/rest/index.js';
import {
  HttpClient,
  binaryBody,
  bytesOf,
  scratch,
  splitBinaryResponse,
  startAgent,
  targetOf,
  type HttpResult,
  type RequestSpec,
} from './helpers.js';

const LOADED = ['tiny', 'multi-io', 'int-types'];

let files: Awaited<ReturnType<typeof scratch>>;
let agent: Awaited<ReturnType<typeof startAgent>>;
let client: HttpClient;
let sent = 0;

beforeAll(async () => {
  files = await scratch('agent-rest-fuzz-');
  agent = await startAgent({ socketPath: join(files.root, 'rest.sock'), maxBodyBytes: 64 * 1024 });
  client = new HttpClient(targetOf(agent.server.addresses[0]!));
  for (const model of LOADED) {
    await agent.registry.load({ name: model, url: await files.catalogue(model as 'tiny') });
  }
});

afterAll(async () => {
  client?.close();
  await agent?.stop();
  await files?.cleanup();
});

/** Whatever was sent, the answer is a well-formed success or a 4xx in the protocol's error form: never a 5xx. */
function expectWellFormed(result: HttpResult, method = 'POST'): void {
  sent++;
  expect(result.status, result.text()).toBeGreaterThanOrEqual(200);
  expect(result.status, result.text()).toBeLessThan(500);
  if (result.status >= 400 && method !== 'HEAD') {
    expect(result.headers['content-type']).toMatch(/^application\/json/);
    const body = result.json() as { error?: unknown };
    expect(typeof body.error).toBe('string');
    expect((body.error as string).length).toBeGreaterThan(10);
  }
}

// --- generators ------------------------------------------------------------------------------------------------

const modelName = fc.oneof(
  { weight: 8, arbitrary: fc.constantFrom(...LOADED) },
  { weight: 1, arbitrary: fc.constantFrom('absent', 'bad_name') },
);
const datatype = fc.oneof(
  fc.constantFrom(...KSERVE_DATATYPES, 'FLOAT32', 'fp32', ''),
  fc.string({ maxLength: 8 }),
);
const shape = fc.oneof(
  { weight: 4, arbitrary: fc.array(fc.integer({ min: -2, max: 20 }), { maxLength: 4 }) },
  { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 2 }) },
);
const numbers = fc.array(fc.oneof(fc.double(), fc.integer(), fc.bigInt().map(String)), { maxLength: 40 });
const data = fc.oneof(
  { weight: 3, arbitrary: numbers },
  { weight: 1, arbitrary: fc.array(numbers, { maxLength: 4 }) },
  { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 3 }) },
);
const parameters = fc.dictionary(
  fc.oneof(
    fc.constantFrom('binary_data_size', 'binary_data', 'binary_data_output', 'classification'),
    fc.string(),
  ),
  fc.oneof(fc.integer({ min: -10, max: 200 }), fc.boolean(), fc.jsonValue({ maxDepth: 1 })),
  { maxKeys: 3 },
);
const input = fc.record(
  {
    name: fc.oneof(fc.constantFrom('x', 'a', 'b', 'counts', 'bytes'), fc.string({ maxLength: 6 })),
    shape,
    datatype,
    data,
    parameters,
  },
  { requiredKeys: [] },
);
const inferenceRequest = fc.record(
  {
    id: fc.oneof(
      { weight: 4, arbitrary: fc.string() },
      { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 1 }) },
    ),
    inputs: fc.oneof(
      { weight: 5, arbitrary: fc.array(input, { maxLength: 3 }) },
      { weight: 1, arbitrary: fc.jsonValue() },
    ),
    outputs: fc.array(
      fc.record(
        {
          name: fc.oneof(fc.constantFrom('y', 'sum', 'product', 'counts_plus_one'), fc.string()),
          parameters,
        },
        { requiredKeys: [] },
      ),
      { maxLength: 3 },
    ),
    parameters,
  },
  { requiredKeys: [] },
);
type JsonInput = { name: string; shape: unknown; datatype: unknown; data?: unknown; parameters?: unknown };

/** A correct JSON request for a loaded model: the starting point of mutations. */
function validRequest(model: string): { inputs: JsonInput[]; outputs?: unknown; id?: unknown } {
  const catalogue = TEST_MODELS[model as 'tiny'];
  const samples = catalogue.sampleInputs();
  return {
    inputs: catalogue.inputs.map((declared) => {
      const tensor = samples[declared.name]!;
      const kserve = { FLOAT32: 'FP32', INT64: 'INT64', UINT8: 'UINT8' }[tensor.dataType as 'FLOAT32']!;
      return {
        name: declared.name,
        shape: [...tensor.shape],
        datatype: kserve,
        data: Array.from(tensor.data as ArrayLike<number | bigint>, Number),
      };
    }),
  };
}

/** One small change to a request; most make it wrong, some leave it right. */
const mutation = fc.oneof(
  fc.record({ kind: fc.constant('datatype' as const), at: fc.nat(), value: datatype }),
  fc.record({
    kind: fc.constant('dimension' as const),
    at: fc.nat(),
    dim: fc.nat(),
    value: fc.oneof(fc.integer({ min: -3, max: 40 }), fc.jsonValue({ maxDepth: 0 })),
  }),
  fc.record({
    kind: fc.constant('rank' as const),
    at: fc.nat(),
    value: fc.array(fc.integer({ min: 0, max: 20 }), { maxLength: 5 }),
  }),
  fc.record({
    kind: fc.constant('value' as const),
    at: fc.nat(),
    index: fc.nat(),
    value: fc.oneof(
      fc.double(),
      fc.jsonValue({ maxDepth: 1 }),
      fc.constantFrom('NaN', 'Infinity', 2 ** 60, -1, 256, 1e40),
    ),
  }),
  fc.record({ kind: fc.constant('length' as const), at: fc.nat(), delta: fc.integer({ min: -3, max: 3 }) }),
  fc.record({ kind: fc.constant('nest' as const), at: fc.nat(), width: fc.integer({ min: 1, max: 8 }) }),
  fc.record({
    kind: fc.constant('name' as const),
    at: fc.nat(),
    value: fc.oneof(fc.constantFrom('x', 'a', 'b', 'counts', 'bytes', ''), fc.string({ maxLength: 5 })),
  }),
  fc.record({ kind: fc.constant('drop' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('duplicate' as const), at: fc.nat() }),
  fc.record({
    kind: fc.constant('binary' as const),
    at: fc.nat(),
    value: fc.oneof(fc.integer({ min: -1, max: 100 }), fc.jsonValue({ maxDepth: 0 })),
  }),
  fc.record({
    kind: fc.constant('outputs' as const),
    value: fc.array(
      fc.record(
        { name: fc.constantFrom('y', 'sum', 'product', 'counts_plus_one', 'bytes_out', 'z'), parameters },
        { requiredKeys: ['name'] },
      ),
      { maxLength: 3 },
    ),
  }),
  fc.record({ kind: fc.constant('id' as const), value: fc.jsonValue({ maxDepth: 1 }) }),
);

function mutate(
  request: ReturnType<typeof validRequest>,
  change: typeof mutation extends fc.Arbitrary<infer T> ? T : never,
): void {
  const inputs = request.inputs;
  const input = inputs.length > 0 && 'at' in change ? inputs[change.at % inputs.length] : undefined;
  const values = Array.isArray(input?.data) ? (input.data as unknown[]) : undefined;
  switch (change.kind) {
    case 'datatype':
      if (input) input.datatype = change.value;
      break;
    case 'dimension':
      if (input && Array.isArray(input.shape) && input.shape.length > 0)
        input.shape[change.dim % input.shape.length] = change.value;
      break;
    case 'rank':
      if (input) input.shape = change.value;
      break;
    case 'value':
      if (values && values.length > 0) values[change.index % values.length] = change.value;
      break;
    case 'length':
      if (values) values.length = Math.max(0, values.length + change.delta);
      if (values && change.delta > 0) values.fill(1, values.length - change.delta);
      break;
    case 'nest':
      if (values)
        input!.data = Array.from({ length: Math.ceil(values.length / change.width) }, (_, i) =>
          values.slice(i * change.width, (i + 1) * change.width),
        );
      break;
    case 'name':
      if (input) input.name = change.value;
      break;
    case 'drop':
      inputs.splice(change.at % Math.max(1, inputs.length), 1);
      break;
    case 'duplicate':
      if (input) inputs.push(structuredClone(input));
      break;
    case 'binary':
      if (input) input.parameters = { binary_data_size: change.value };
      break;
    case 'outputs':
      request.outputs = change.value;
      break;
    case 'id':
      request.id = change.value;
      break;
  }
}

/** A header value node:http will send: visible ASCII only. */
const headerText = fc.string({ unit: fc.constantFrom(...'0123456789-+ .eE,xX'.split('')), maxLength: 8 });

// --- properties ----------------------------------------------------------------------------------------------

describe('fuzzing the REST API with malformed requests', () => {
  it('correct requests with one to three random mutations', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...LOADED),
        fc.array(mutation, { minLength: 1, maxLength: 3 }),
        async (model, changes) => {
          const request = validRequest(model);
          for (const change of changes) mutate(request, change);
          expectWellFormed(await client.postJson(`/v2/models/${model}/infer`, request));
        },
      ),
      { numRuns: 1200 },
    );
  });

  it('random JSON documents and random bytes as inference requests', async () => {
    await fc.assert(
      fc.asyncProperty(
        modelName,
        fc.oneof(
          { weight: 4, arbitrary: inferenceRequest.map((value) => JSON.stringify(value)) },
          { weight: 2, arbitrary: fc.jsonValue().map((value) => JSON.stringify(value)) },
          { weight: 1, arbitrary: fc.string({ maxLength: 200 }) },
          { weight: 1, arbitrary: fc.uint8Array({ maxLength: 300 }) },
        ),
        fc.oneof(
          fc.constantFrom('application/json', 'application/octet-stream', 'text/plain', undefined),
          // Any printable ASCII: node:http sends it; Fastify may find it is no media type at all.
          fc.string({
            unit: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)),
            maxLength: 24,
          }),
        ),
        async (model, body, contentType) => {
          const headers: Record<string, string> = contentType ? { 'content-type': contentType } : {};
          expectWellFormed(
            await client.request({ method: 'POST', path: `/v2/models/${model}/infer`, headers, body }),
          );
        },
      ),
      { numRuns: 800 },
    );
  });

  it('random binary tails and Inference-Header-Content-Length values', async () => {
    await fc.assert(
      fc.asyncProperty(
        modelName,
        fc.oneof(
          inferenceRequest,
          fc.record({
            inputs: fc.array(
              fc.record({
                name: fc.constantFrom('x', 'a', 'b', 'counts', 'bytes'),
                shape: fc.array(fc.integer({ min: 0, max: 20 }), { minLength: 1, maxLength: 2 }),
                datatype: fc.constantFrom('FP32', 'INT64', 'UINT8', 'FP16'),
                parameters: fc.record({ binary_data_size: fc.integer({ min: 0, max: 300 }) }),
              }),
              { minLength: 1, maxLength: 3 },
            ),
            parameters: fc.record({ binary_data_output: fc.boolean() }),
          }),
        ),
        fc.array(fc.uint8Array({ maxLength: 200 }), { maxLength: 3 }),
        fc.oneof(
          fc.constant('exact'),
          fc.integer({ min: -20, max: 20 }),
          fc.nat({ max: 100_000 }),
          headerText,
        ),
        async (model, json, tail, headerLength) => {
          const request = binaryBody(json, tail);
          const length = request.headers['inference-header-content-length'];
          const header =
            headerLength === 'exact'
              ? length
              : typeof headerLength === 'number'
                ? Math.max(0, length + headerLength)
                : headerLength;
          expectWellFormed(
            await client.request({
              method: 'POST',
              path: `/v2/models/${model}/infer`,
              headers: { ...request.headers, 'inference-header-content-length': header },
              body: request.body,
            }),
          );
        },
      ),
      { numRuns: 1200 },
    );
  });

  it('random methods, paths and bodies on every endpoint', async () => {
    const segment = fc.oneof(
      fc.constantFrom(
        'v2',
        'models',
        'infer',
        'ready',
        'versions',
        '1.0',
        'repository',
        'index',
        'load',
        'health',
        'live',
        'metrics',
        '%',
        '%zz',
        '..',
        '',
        ...LOADED,
        'absent',
      ),
      fc.string({ maxLength: 12 }).map(encodeURIComponent),
    );
    const path = fc
      .tuple(
        fc.array(segment, { maxLength: 6 }),
        fc.option(fc.string({ maxLength: 10 }).map(encodeURIComponent)),
      )
      .map(([segments, query]) => `/${segments.join('/')}${query === null ? '' : `?${query}`}`)
      // Unloading the models under test would only make later requests 404; everything else is fair game.
      .filter((p) => !/unload/.test(p));
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom('GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'HEAD'),
        fc.oneof(
          path,
          fc.constantFrom(
            '/v2/repository/index',
            '/v2/repository/models/fuzzed/load',
            '/v2/models/tiny',
            '/metrics',
          ),
        ),
        fc.option(
          fc.oneof(
            fc.jsonValue().map((v) => JSON.stringify(v)),
            fc.uint8Array({ maxLength: 100 }),
          ),
        ),
        async (method, target, body) => {
          const spec: RequestSpec = {
            method,
            path: target,
            ...(body !== null && method !== 'GET' && method !== 'HEAD' ? { body } : {}),
          };
          expectWellFormed(await client.request(spec), method);
        },
      ),
      { numRuns: 800 },
    );
  });

  it('random bytes where an HTTP request should be (the HTTP parser refuses them; the server goes on)', async () => {
    const socketPath = join(files.root, 'rest.sock');
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          fc.constant('POST /v2/models/tiny/infer HTTP/1.1\r\n'),
          fc.constant('GET / HTTP/1.1\r\n'),
          fc.constant(''),
        ),
        fc.uint8Array({ maxLength: 300 }),
        async (start, garbage) => {
          const answer = await new Promise<string>((resolve, reject) => {
            const socket = connect({ path: socketPath });
            const chunks: Buffer[] = [];
            socket.on('data', (chunk: Buffer) => chunks.push(chunk));
            socket.on('error', (error: NodeJS.ErrnoException) =>
              error.code === 'ECONNRESET' || error.code === 'EPIPE'
                ? resolve(Buffer.concat(chunks).toString('latin1'))
                : reject(error),
            );
            socket.on('close', () => resolve(Buffer.concat(chunks).toString('latin1')));
            socket.end(Buffer.concat([Buffer.from(start, 'latin1'), garbage]));
          });
          sent++;
          // Either nothing (the request never completed) or HTTP answers that are not server errors.
          for (const status of answer.matchAll(/HTTP\/1\.1 (\d{3})/g))
            expect(Number(status[1])).toBeLessThan(500);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('after all of that, correct requests still get the exact answers', async () => {
    expect(sent).toBeGreaterThanOrEqual(4000);
    const x = TEST_MODELS.tiny.sampleInputs().x!;
    const want = TEST_MODELS.tiny.reference({ x }).y!;
    const json = await client.postJson('/v2/models/tiny/infer', {
      inputs: [{ name: 'x', shape: [1, 16], datatype: 'FP32', data: Array.from(x.data as Float32Array) }],
    });
    expect(json.status, json.text()).toBe(200);
    expect(
      new Float32Array((json.json() as { outputs: Array<{ data: number[] }> }).outputs[0]!.data),
    ).toEqual(want.data);

    const request = binaryBody(
      {
        inputs: [{ name: 'x', shape: [1, 16], datatype: 'FP32', parameters: { binary_data_size: 64 } }],
        parameters: { binary_data_output: true },
      },
      [bytesOf(x.data)],
    );
    const binary = await client.request({ method: 'POST', path: '/v2/models/tiny/infer', ...request });
    expect(binary.status).toBe(200);
    expect(Buffer.from(splitBinaryResponse(binary).tail).equals(Buffer.from(bytesOf(want.data)))).toBe(true);
    expect(agent.registry.list().map((m) => m.name)).toEqual(LOADED);
    expect((await client.get('/metrics')).text()).toMatch(
      /^edgefleet_rest_requests_total\{method="POST",route="\/v2\/models\/:name\/infer",status="400"\} \d+$/m,
    );
  });
});
