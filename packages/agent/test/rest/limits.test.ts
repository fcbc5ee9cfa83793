import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { setTimeout as delay } from 'node:timers/promises';
import { slowModelInput } from '@edgefleet/core';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_ORT_SESSION_CONFIG, InferencePool } from '../../src/inference/index.js';
import { AgentMetrics } from '../../src/metrics/index.js';
import { ModelRegistry } from '../../src/models/index.js';
import { startRestServer, type RestServer, type RestServerOptions } from '../../src/rest/index.js';
import { BodyBudget } from '../../src/body-budget/index.js';
import { HttpClient, binaryBody, scratch, targetOf } from './helpers.js';
import { bytesOf } from '../support/model-packages.js';

let files: Awaited<ReturnType<typeof scratch>>;
let pool: InferencePool;
let registry: ModelRegistry;
const metrics = new AgentMetrics({ defaultMetrics: false });
const logger = pino({ level: 'silent' });
const running: RestServer[] = [];
const sockets: Socket[] = [];

beforeAll(async () => {
  files = await scratch('agent-rest-limits-');
  pool = await InferencePool.start({ workers: 1, session: DEFAULT_ORT_SESSION_CONFIG });
  registry = new ModelRegistry({ pool, trust: null, cwd: files.root, metrics });
  await registry.load({ name: 'image', url: await files.catalogue('image-identity') });
  await registry.load({ name: 'slow', url: await files.catalogue('slow') });
});
afterEach(async () => {
  sockets.splice(0).forEach((socket) => socket.destroy());
  await Promise.all(running.splice(0).map((server) => server.close()));
});
afterAll(async () => {
  await registry?.close();
  await pool?.close();
  await files?.cleanup();
});

async function start(options: Partial<RestServerOptions>): Promise<RestServer> {
  const server = await startRestServer({ registry, metrics, logger, ...options });
  running.push(server);
  return server;
}

/** A raw connection to a listener address; `received` collects what the server sends. */
function open(address: string, localAddress?: string): Promise<{ socket: Socket; received: () => string }> {
  const target = targetOf(address);
  return new Promise((resolve, reject) => {
    const socket =
      target.kind === 'unix'
        ? connect({ path: target.socketPath })
        : connect({ host: target.host, port: target.port, ...(localAddress && { localAddress }) });
    sockets.push(socket);
    let text = '';
    socket.on('data', (chunk: Buffer) => (text += chunk.toString()));
    socket.once('connect', () => resolve({ socket, received: () => text }));
    socket.once('error', reject);
  });
}

function closed(socket: Socket): Promise<void> {
  return new Promise((resolve) => {
    socket.on('error', () => {});
    if (socket.destroyed) resolve();
    else socket.once('close', () => resolve());
  });
}

const tcp = { host: '127.0.0.1', port: 0 };

describe('REST listener limits (issue 15: a slow body took gRPC down)', () => {
  it('cuts off a body that never finishes (Content-Length 1000, one byte sent)', async () => {
    const server = await start({ tcp, limits: { requestTimeoutMs: 400 } });
    const { socket, received } = await open(server.addresses[0]!);
    socket.write(
      'POST /v2/models/image/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{',
    );
    await closed(socket);
    expect(received()).toMatch(/^HTTP\/1\.1 408/);
  });

  it('cuts off headers that never finish', async () => {
    const path = join(files.root, 'slow-headers.sock');
    const server = await start({ unixSocketPath: path, limits: { headersTimeoutMs: 300 } });
    const { socket, received } = await open(server.addresses[0]!);
    socket.write('GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: a');
    await closed(socket);
    expect(received()).toMatch(/^HTTP\/1\.1 408/);
  });

  it('closes idle connections that never send a request', async () => {
    const server = await start({ tcp, limits: { idleTimeoutMs: 300 } });
    const { socket } = await open(server.addresses[0]!);
    await closed(socket);
  });

  it('caps connections per address on TCP, and in total on the Unix socket, and logs and counts what it refused', async () => {
    const path = join(files.root, 'capped.sock');
    const lines: Record<string, unknown>[] = [];
    const recording = pino(
      { level: 'info' },
      new Writable({
        write(chunk: Buffer, _encoding, done) {
          for (const line of chunk.toString('utf8').split('\n').filter(Boolean)) lines.push(JSON.parse(line));
          done();
        },
      }),
    );
    const counted = new AgentMetrics({ defaultMetrics: false });
    const server = await start({
      tcp,
      unixSocketPath: path,
      limits: { maxConnectionsPerAddress: 3, maxConnections: 5 },
      logger: recording,
      metrics: counted,
    });
    const [unixAddress, tcpAddress] = server.addresses as [string, string];
    const held = [];
    for (let i = 0; i < 3; i++) held.push(await open(tcpAddress)); // one by one: held[0] is the oldest
    // None has a request in progress: a fourth from the same address closes the oldest, and is let in.
    const over = await open(tcpAddress);
    await closed(held[0]!.socket);
    expect([...held.slice(1), over].every(({ socket }) => !socket.destroyed)).toBe(true);
    // Another address still gets in; the Unix socket has a cap of its own.
    const other = await open(tcpAddress, '127.0.0.2');
    expect(other.socket.destroyed).toBe(false);
    const local = [];
    for (let i = 0; i < 5; i++) local.push(await open(unixAddress)); // one by one: local[0] is the oldest
    // Full and all idle: a sixth closes the oldest.
    const overLocal = await open(unixAddress);
    await closed(local[0]!.socket);
    expect([...local.slice(1), overLocal].every(({ socket }) => !socket.destroyed)).toBe(true);
    // F-E: the refusals were silent; each listener logs its first at once, and /metrics counts them.
    const refusals = lines.filter((line) => line.event === 'connections_refused');
    expect(refusals.map((line) => line.msg)).toEqual([
      '1 connection(s) over a cap on the rest-tcp listener from 127.0.0.1 (1) let in by closing another connection, of 127.0.0.1 (1): per-address cap 3 / total cap 5',
      '1 connection(s) over a cap on the rest-unix listener from unix socket (1) let in by closing another connection, of unix socket (1): total cap 5',
    ]);
    // N3: counted as closed to let a newcomer in, not as refused.
    const text = (await counted.text()).body;
    expect(text).toContain('edgefleet_connections_evicted_total{listener="rest-tcp",cap="per-address"} 1');
    expect(text).toContain('edgefleet_connections_evicted_total{listener="rest-unix",cap="total"} 1');
    expect(text).not.toContain('edgefleet_connections_refused_total{');
    // A connection that stays within the caps is served.
    const { socket, received } = local[1]!;
    socket.write('GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    await closed(socket);
    expect(received()).toMatch(/^HTTP\/1\.1 200[\s\S]*\{"live":true\}/);
  });
});

describe('JSON bodies (issue 15: a JSON request cost ~30x its size)', () => {
  const values = Array.from({ length: 3 * 224 * 224 }, (_, i) => (i % 255) / 8);
  const input = { name: 'image', shape: [1, 3, 224, 224], datatype: 'FP32' };

  it('refuses a JSON body over maxJsonBodyBytes (413) while a binary one of the same tensor is served', async () => {
    const server = await start({ tcp, maxJsonBodyBytes: 256 * 1024, maxBodyBytes: 4 * 1024 * 1024 });
    const client = new HttpClient(targetOf(server.addresses[0]!));
    try {
      const json = await client.postJson('/v2/models/image/infer', { inputs: [{ ...input, data: values }] });
      expect(json.status).toBe(413);
      expect(json.headers.connection).toBe('close');
      expect((json.json() as { error: string }).error).toMatch(
        /bytes \(Content-Length\); this agent accepts at most 262144 bytes of JSON \(maxJsonBodyBytes\); send large tensors as binary data/,
      );
      const tensor = new Float32Array(values);
      const binary = binaryBody(
        { inputs: [{ ...input, parameters: { binary_data_size: tensor.byteLength } }] },
        [new Uint8Array(tensor.buffer)],
      );
      const answer = await client.request({ method: 'POST', path: '/v2/models/image/infer', ...binary });
      expect(answer.status).toBe(200);
      // A JSON part over the JSON limit is refused from its header alone.
      const bigHeader = await client.request({
        method: 'POST',
        path: '/v2/models/image/infer',
        headers: { 'inference-header-content-length': 300 * 1024 },
        body: new Uint8Array(300 * 1024),
      });
      expect(bigHeader.status).toBe(413);
      expect((bigHeader.json() as { error: string }).error).toMatch(/JSON part of the body is 307200 bytes/);
    } finally {
      client.close();
    }
  });

  it('parses a JSON body within the limit into the tensor exactly', async () => {
    const server = await start({ tcp });
    const client = new HttpClient(targetOf(server.addresses[0]!));
    try {
      const answer = await client.postJson('/v2/models/image/infer', {
        inputs: [{ ...input, data: values }],
      });
      expect(answer.status).toBe(200);
      const output = (answer.json() as { outputs: Array<{ data: number[] }> }).outputs[0]!;
      expect(output.data).toEqual(Array.from(new Float32Array(values)));
    } finally {
      client.close();
    }
  });

  it('takes at most maxConcurrentJsonBodies large JSON bodies at once (429), then takes more once they are done', async () => {
    // tcpManagement: the repository index (a small JSON body below) is served on TCP too.
    const server = await start({ tcp, maxConcurrentJsonBodies: 2, tcpManagement: true });
    const address = server.addresses[0]!;
    // Two large JSON bodies that have begun to arrive and wait for the rest.
    const slow = await Promise.all([1, 2].map(() => open(address)));
    for (const { socket } of slow) {
      socket.write(
        'POST /v2/models/image/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{"inputs": [',
      );
    }
    const client = new HttpClient(targetOf(address));
    try {
      const body = { inputs: [{ ...input, data: values }] };
      // The slow ones are in flight once the server answers anything after them on another connection.
      await client.get('/v2/health/live');
      const refused = await client.postJson('/v2/models/image/infer', body);
      expect(refused.status).toBe(429);
      expect((refused.json() as { error: string }).error).toMatch(/maxConcurrentJsonBodies/);
      // Small JSON bodies are not counted.
      const small = await client.postJson('/v2/repository/index', {});
      expect(small.status).toBe(200);
      for (const { socket } of slow) socket.destroy();
      await Promise.all(slow.map(({ socket }) => closed(socket)));
      let answer = await client.postJson('/v2/models/image/infer', body);
      // The server sees the slow connections close a moment after the client does.
      while (answer.status === 429) answer = await client.postJson('/v2/models/image/infer', body);
      expect(answer.status).toBe(200);
    } finally {
      client.close();
    }
  });

  it('counts the JSON part of binary bodies against maxConcurrentJsonBodies too', async () => {
    const server = await start({ tcp, maxConcurrentJsonBodies: 2 });
    const address = server.addresses[0]!;
    // Two bodies that say they carry binary data, with a large JSON part still arriving.
    const slow = await Promise.all([1, 2].map(() => open(address)));
    for (const { socket } of slow) {
      socket.write(
        'POST /v2/models/image/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n' +
          'Inference-Header-Content-Length: 1000000\r\nContent-Length: 1000000\r\n\r\n{"inputs": [',
      );
    }
    const client = new HttpClient(targetOf(address));
    try {
      await client.get('/v2/health/live');
      const refused = await client.postJson('/v2/models/image/infer', {
        inputs: [{ ...input, data: values }],
      });
      expect(refused.status).toBe(429);
    } finally {
      client.close();
      for (const { socket } of slow) socket.destroy();
      await Promise.all(slow.map(({ socket }) => closed(socket)));
    }
  });
});

describe('the body budget (audit finding 2: stalled bodies held the whole limit each)', () => {
  const KiB = 1024;
  const imageBody = () => {
    const tensor = new Float32Array(3 * 224 * 224);
    return binaryBody(
      {
        inputs: [
          {
            name: 'image',
            shape: [1, 3, 224, 224],
            datatype: 'FP32',
            parameters: { binary_data_size: tensor.byteLength },
          },
        ],
      },
      [new Uint8Array(tensor.buffer)],
    );
  };
  const binaryHeaders = (path: string, length: number) =>
    `POST ${path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n` +
    `Inference-Header-Content-Length: 100\r\nContent-Length: ${length}\r\n\r\n`;

  it('takes bytes as they arrive: refuses the body whose next bytes would pass the budget (429, connection closed) while stalled bodies hold theirs, and takes bodies again once they are gone', async () => {
    const budget = new BodyBudget(1536 * KiB);
    const server = await start({ tcp, maxBodyBytes: 1024 * KiB, bodyBudget: budget });
    const address = server.addresses[0]!;
    // Two bodies of 700 KiB, 690 KiB of each sent, that stall: 1380 KiB of the 1536 KiB taken.
    const stalled = await Promise.all([1, 2].map(() => open(address)));
    for (const { socket } of stalled) {
      socket.write(binaryHeaders('/v2/models/image/infer', 700 * KiB));
      socket.write(Buffer.alloc(690 * KiB, 0x20));
    }
    const client = new HttpClient(targetOf(address));
    try {
      while (budget.usedBytes < 1380 * KiB) await delay(10);
      expect(budget.usedBytes).toBe(1380 * KiB);
      const third = await open(address);
      third.socket.write(binaryHeaders('/v2/models/image/infer', 700 * KiB));
      third.socket.write(Buffer.alloc(200 * KiB, 0x20));
      await closed(third.socket);
      expect(third.received()).toMatch(/^HTTP\/1\.1 429 /);
      expect(third.received()).toMatch(/\r\nconnection: close\r\n/i);
      expect(third.received()).toMatch(
        /bytes of request bodies are being received or held already; the next \d+ bytes of this request body \(after \d+ taken for it\) would pass the agent's budget of 1572864 bytes for them \(edgefleet_max_bodies_in_flight_bytes\)/,
      );
      // A chunked body is counted the same way.
      const chunked = await open(address);
      chunked.socket.write(
        'POST /v2/models/image/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n' +
          'Inference-Header-Content-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n',
      );
      chunked.socket.write(`${(200 * KiB).toString(16)}\r\n${'x'.repeat(200 * KiB)}\r\n`);
      await closed(chunked.socket);
      expect(chunked.received()).toMatch(/^HTTP\/1\.1 429 [\s\S]*this request body/);
      // What the refused bodies took is given back when their connections close.
      while (budget.usedBytes > 1380 * KiB) await delay(10);

      for (const { socket } of stalled) socket.destroy();
      await Promise.all(stalled.map(({ socket }) => closed(socket)));
      const infer = () => client.request({ method: 'POST', path: '/v2/models/image/infer', ...imageBody() });
      let answer = await infer();
      // The server sees the stalled connections close a moment after the client does.
      while (answer.status === 429) answer = await infer();
      expect(answer.status).toBe(200);
    } finally {
      client.close();
    }
    while (budget.usedBytes > 0) await delay(10);
  });

  it('takes nothing for an announced Content-Length alone: requests that send only their headers do not block others', async () => {
    const budget = new BodyBudget(1536 * KiB);
    const server = await start({ tcp, maxBodyBytes: 1024 * KiB, bodyBudget: budget });
    const address = server.addresses[0]!;
    const announcing = await Promise.all([1, 2, 3, 4].map(() => open(address)));
    for (const { socket } of announcing) socket.write(binaryHeaders('/v2/models/image/infer', 1000 * KiB));
    const client = new HttpClient(targetOf(address));
    try {
      // The headers are in once the server answers anything after them on another connection.
      await client.get('/v2/health/live');
      expect(budget.usedBytes).toBe(0);
      const answer = await client.request({ method: 'POST', path: '/v2/models/image/infer', ...imageBody() });
      expect(answer.status).toBe(200);
    } finally {
      client.close();
    }
  });

  // application/octet-stream takes the lean door in front of Fastify; another type, Fastify's own route.
  it.each(['application/octet-stream', 'application/x-tensors'])(
    'keeps a body in the budget until its inference settles, even when the client disconnects while it is still running (%s)',
    async (contentType) => {
      const budget = new BodyBudget(4096 * KiB);
      // One connection per address, so that a new connection from it is served only once the agent has seen the
      // old one close.
      const server = await start({
        tcp,
        maxBodyBytes: 1024 * KiB,
        bodyBudget: budget,
        limits: { maxConnectionsPerAddress: 1 },
      });
      const address = server.addresses[0]!;
      const x = slowModelInput();
      const json = Buffer.from(
        JSON.stringify({
          inputs: [
            {
              name: 'x',
              shape: x.shape,
              datatype: 'FP32',
              parameters: { binary_data_size: x.data.byteLength },
            },
          ],
        }),
      );
      const bodyBytes = json.length + x.data.byteLength;
      const victim = await open(address);
      victim.socket.write(
        `POST /v2/models/slow/infer HTTP/1.1\r\nHost: x\r\nContent-Type: ${contentType}\r\n` +
          `Inference-Header-Content-Length: ${json.length}\r\nContent-Length: ${bodyBytes}\r\n\r\n`,
      );
      victim.socket.write(Buffer.concat([json, bytesOf(x.data)]));
      const slow = () => {
        const stats = pool.stats().models.find((m) => m.key.startsWith('slow#'));
        return (stats?.running ?? 0) + (stats?.queued ?? 0);
      };
      // Handed on: the model runs it.
      while (slow() === 0) await delay(5);
      expect(budget.usedBytes).toBe(bodyBytes);
      victim.socket.destroy();
      // A new connection from the same address is served once the agent has seen the old one close.
      for (;;) {
        const probe = await open(address);
        probe.socket.write('GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
        await closed(probe.socket);
        if (/^HTTP\/1\.1 200/.test(probe.received())) break;
      }
      const used = budget.usedBytes;
      expect(
        slow(),
        'the slow model finished before the disconnect was seen; the check needs it running',
      ).toBe(1);
      expect(used).toBe(bodyBytes);
      // Once the inference is over (its answer has nowhere to go), the budget is given back.
      while (budget.usedBytes > 0) await delay(10);
      expect(slow()).toBe(0);
    },
  );

  it('answers 404 for a model or version that is not there before reading the body, and closes the connection', async () => {
    const server = await start({ tcp, maxBodyBytes: 1024 * KiB });
    const address = server.addresses[0]!;
    const cases: Array<[string, string, RegExp]> = [
      ['/v2/models/nosuch/infer', 'application/octet-stream', /nosuch/],
      ['/v2/models/image/versions/99/infer', 'application/octet-stream', /, not ..99/],
      // Content types the lean door leaves to Fastify's route take the same check.
      ['/v2/models/nosuch/infer', 'text/plain', /nosuch/],
    ];
    for (const [path, type, message] of cases) {
      const { socket, received } = await open(address);
      // Only the headers and a few bytes of a 700 KiB body: without the check, no answer until the timeout.
      socket.write(
        `POST ${path} HTTP/1.1\r\nHost: x\r\nContent-Type: ${type}\r\nContent-Length: ${700 * KiB}\r\n\r\n{"in`,
      );
      await closed(socket);
      expect(received(), path).toMatch(/^HTTP\/1\.1 404 /);
      expect(received(), path).toMatch(/\r\nconnection: close\r\n/i);
      expect(received(), path).toMatch(message);
    }
  });
});
