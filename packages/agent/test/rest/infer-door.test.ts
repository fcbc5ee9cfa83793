import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildRestApp } from '../../src/rest/index.js';
import {
  HttpClient,
  binaryBody,
  jsonInputs,
  scratch,
  startAgent,
  targetOf,
  type HttpResult,
  type RequestSpec,
} from './helpers.js';

// Inference requests are served by a lean door in front of Fastify (src/rest/infer-door.ts); requests it leaves
// to Fastify (another Content-Type, percent-encoded names, …) reach Fastify's inference route. Both must answer
// alike: each request here is sent once as it is (the lean door) and once with a Content-Type only Fastify takes.
const FASTIFY_ONLY_TYPE = 'application/x-edgefleet-test';

let files: Awaited<ReturnType<typeof scratch>>;
let agent: Awaited<ReturnType<typeof startAgent>>;
let client: HttpClient;

beforeAll(async () => {
  files = await scratch('agent-rest-infer-door-');
  agent = await startAgent({
    socketPath: join(files.root, 'rest.sock'),
    maxBodyBytes: 8192,
    maxJsonBodyBytes: 2048,
  });
  await agent.registry.load({ name: 'tiny', url: await files.catalogue('tiny', 'tiny', '3.1') });
  client = new HttpClient(targetOf(agent.server.addresses[0]!));
});

afterAll(async () => {
  client?.close();
  await agent?.stop();
  await files?.cleanup();
});

/** What a client can see of an answer: status, headers (but the date) and body. */
function visible(result: HttpResult) {
  const { date: _date, ...headers } = result.headers;
  return { status: result.status, headers, body: result.text() };
}

async function viaBothDoors(spec: RequestSpec) {
  const lean = await client.request(spec);
  const fastify = await client.request({
    ...spec,
    headers: { ...spec.headers, 'content-type': FASTIFY_ONLY_TYPE },
  });
  expect(visible(lean)).toEqual(visible(fastify));
  return lean;
}

const inputs = jsonInputs('tiny');
const json = (value: unknown, path = '/v2/models/tiny/infer'): RequestSpec => ({
  method: 'POST',
  path,
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify(value),
});
const tensor = new Float32Array(16).map((_, i) => i / 4);
const binary = (path = '/v2/models/tiny/infer', size = tensor.byteLength): RequestSpec => ({
  method: 'POST',
  path,
  ...binaryBody(
    {
      inputs: [
        { name: inputs[0]!.name, shape: [1, 16], datatype: 'FP32', parameters: { binary_data_size: size } },
      ],
      parameters: { binary_data_output: true },
    },
    [new Uint8Array(tensor.buffer)],
  ),
});

describe('the lean inference door', () => {
  it('answers successful requests as Fastify does: JSON, binary, with a version, with a trailing slash', async () => {
    expect((await viaBothDoors(json({ id: 'x', inputs }))).status).toBe(200);
    const answer = await viaBothDoors(binary());
    expect(answer.status).toBe(200);
    expect(answer.headers['content-type']).toBe('application/octet-stream');
    expect((await viaBothDoors(binary('/v2/models/tiny/versions/3.1/infer'))).status).toBe(200);
    expect((await viaBothDoors(json({ inputs }, '/v2/models/tiny/infer/'))).status).toBe(200);
    expect((await viaBothDoors(json({ inputs }, '/v2/models/tiny/versions/3.1/infer/'))).status).toBe(200);
  });

  it('answers refused requests as Fastify does: unknown model or version, bad bodies, bad headers', async () => {
    const cases: Array<[RequestSpec, number]> = [
      [json({ inputs }, '/v2/models/nope/infer'), 404],
      [json({ inputs }, '/v2/models/tiny/versions/9/infer'), 404],
      [{ method: 'POST', path: '/v2/models/tiny/infer', body: '{' }, 400],
      [{ method: 'POST', path: '/v2/models/tiny/infer' }, 400],
      [{ method: 'POST', path: '/v2/models/tiny/infer', body: '' }, 400],
      [json({ inputs: [] }), 400],
      [json({ inputs, outputs: [{ name: 'nope' }] }), 400],
      [json({ inputs: [{ ...inputs[0], shape: [2, 16] }] }), 400],
      [binary('/v2/models/tiny/infer', 60), 400],
      [{ ...binary(), headers: { 'inference-header-content-length': 'x' } }, 400],
    ];
    for (const [spec, status] of cases) {
      const answer = await viaBothDoors(spec);
      expect(answer.status, answer.text()).toBe(status);
      expect(Object.keys(answer.json() as object)).toEqual(['error']);
    }
  });

  it('refuses bodies over the limits as Fastify does (413, connection closed)', async () => {
    const cases: RequestSpec[] = [
      // JSON over maxJsonBodyBytes, by Content-Length and while it arrives (chunked).
      json({ inputs, padding: 'x'.repeat(3000) }),
      { ...json({ inputs, padding: 'x'.repeat(3000) }), headers: { 'transfer-encoding': 'chunked' } },
      // A JSON part over maxJsonBodyBytes, and a body over maxBodyBytes.
      { ...binary(), headers: { 'inference-header-content-length': 4096 } },
      { ...binary(), body: new Uint8Array(9000), headers: { 'inference-header-content-length': 10 } },
    ];
    for (const spec of cases) {
      const answer = await viaBothDoors(spec);
      expect(answer.status, answer.text()).toBe(413);
      expect(answer.headers.connection).toBe('close');
    }
  });

  it('answers random mutations of inference requests as Fastify does', async () => {
    let seed = 14;
    const random = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const paths = [
      '/v2/models/tiny/infer',
      '/v2/models/tiny/infer/',
      '/v2/models/tiny/versions/3.1/infer',
      '/v2/models/tiny/versions/3.2/infer',
      '/v2/models/other/infer',
    ];
    const valid = [json({ inputs }), json({ id: 'q', inputs, outputs: [{ name: 'y' }] }), binary()];
    const statuses = new Set<number>();
    for (let i = 0; i < 150; i++) {
      const base = valid[random(valid.length)]!;
      const parts =
        typeof base.body === 'string'
          ? [Buffer.from(base.body)]
          : (base.body as readonly Uint8Array[]).map((part) => Buffer.from(part));
      const bytes = Buffer.concat(parts);
      for (let m = random(4); m > 0; m--) bytes[random(bytes.length)] = random(256);
      const cut = random(5) === 0 ? bytes.subarray(0, random(bytes.length)) : bytes;
      const headers: Record<string, string | number> = { ...base.headers };
      if (random(6) === 0) headers['inference-header-content-length'] = random(cut.length + 20);
      const answer = await viaBothDoors({
        method: 'POST',
        path: paths[random(paths.length)]!,
        headers,
        body: cut,
      });
      expect(answer.status).toBeLessThan(500);
      statuses.add(answer.status);
    }
    expect([...statuses].sort()).toEqual([200, 400, 404]);
  });

  it('leaves paths it does not take as they are to Fastify: percent-encoding, overlong segments, other methods', async () => {
    expect((await client.request(json({ inputs }, '/v2/models/t%69ny/infer'))).status).toBe(200);
    expect((await client.request(json({ inputs }, '/v2/models/tiny/infer?x=1'))).status).toBe(200);
    const bad = await client.request(json({ inputs }, '/v2/models/%E0%A4%A/infer'));
    expect([bad.status, bad.text()]).toEqual([400, expect.stringMatching(/bad percent-encoding/) as string]);
    const long = await client.request(json({ inputs }, `/v2/models/${'a'.repeat(1025)}/infer`));
    expect([long.status, long.text()]).toEqual([400, expect.stringMatching(/longer than 1024/) as string]);
    expect((await client.request({ ...json({ inputs }), method: 'PUT' })).status).toBe(404);
    expect((await client.request({ method: 'HEAD', path: '/v2/models/tiny/infer' })).status).toBe(404);
  });

  it('counts its requests under the same route labels as Fastify', async () => {
    const count = async (route: string, status: number) => {
      const text = (await client.get('/metrics')).text();
      const line = `edgefleet_rest_requests_total{method="POST",route="${route}",status="${status}"} `;
      const found = text.split('\n').find((l) => l.startsWith(line));
      return found === undefined ? 0 : Number(found.slice(line.length));
    };
    const versioned = '/v2/models/:name/versions/:version/infer';
    const counts = async () => [
      await count(versioned, 200),
      await count('/v2/models/:name/infer', 404),
      await count('/v2/models/:name/infer', 200),
    ];
    const before = await counts();
    await viaBothDoors(binary('/v2/models/tiny/versions/3.1/infer'));
    await viaBothDoors(json({ inputs }, '/v2/models/nope/infer'));
    await viaBothDoors(json({ inputs }, '/v2/models/tiny/infer/'));
    expect(await counts()).toEqual(before.map((n) => n + 2));
  });

  it('is not in the way of app.inject, which reaches Fastify’s inference route', async () => {
    const app = buildRestApp({
      registry: agent.registry,
      metrics: agent.metrics,
      logger: pino({ level: 'silent' }),
    });
    try {
      const injected = await app.inject({
        method: 'POST',
        url: '/v2/models/tiny/infer',
        headers: { 'content-type': 'application/json' },
        payload: JSON.stringify({ id: 'x', inputs }),
      });
      const served = await client.request(json({ id: 'x', inputs }));
      expect([injected.statusCode, injected.headers['content-type'], injected.body]).toEqual([
        200,
        served.headers['content-type'],
        served.text(),
      ]);
    } finally {
      await app.close();
    }
  });
});
