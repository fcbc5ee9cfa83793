import { connect as connectHttp2, type ClientHttp2Session, type ClientHttp2Stream } from 'node:http2';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { createAgentCodec, slowModelInput } from '@edgefleet/core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { BodyBudget } from '../../src/body-budget/index.js';
import { startGrpcServer, type RunningGrpcServer } from '../../src/grpc/index.js';
import type { InferencePool } from '../../src/inference/index.js';
import { AgentMetrics } from '../../src/metrics/index.js';
import { ModelRegistry } from '../../src/models/index.js';
import { startRestServer, type RestServer } from '../../src/rest/index.js';
import { callMethod, newClient, scratch, silentLogger, startPool, wireInputs } from './helpers.js';

// The audit's hold scenario in miniature: raw HTTP/2 on the gRPC socket, a Predict whose length prefix announces
// N bytes, some of them sent, then silence. grpc-js would hold each such call's bytes with no deadline.
const KiB = 1024;
let files: Awaited<ReturnType<typeof scratch>>;
let dir: string;
let tinyPackage: string;
let slowPackage: string;
let pool: InferencePool;
let registry: ModelRegistry;
const servers: RunningGrpcServer[] = [];
const sessions: ClientHttp2Session[] = [];

beforeAll(async () => {
  files = await scratch('grpc-receive-');
  dir = files.root;
  tinyPackage = await files.catalogue('tiny');
  slowPackage = await files.catalogue('slow');
  pool = await startPool(1);
  registry = new ModelRegistry({ pool, trust: null, cwd: dir });
});
afterEach(async () => {
  for (const session of sessions.splice(0)) session.destroy();
  await Promise.all(servers.splice(0).map((server) => server.close(1000)));
});
afterAll(async () => {
  await registry?.close();
  await pool?.close();
  await files?.cleanup();
});

let counter = 0;
async function start(options: { budget?: BodyBudget; receiveTimeoutMs?: number }) {
  const socketPath = join(dir, `agent-${++counter}.sock`);
  const server = await startGrpcServer({
    registry,
    sharedMemory: null,
    logger: silentLogger,
    socketPath,
    maxMessageBytes: 1024 * KiB,
    ...(options.budget && { bodyBudget: options.budget }),
    ...(options.receiveTimeoutMs !== undefined && { receiveTimeoutMs: options.receiveTimeoutMs }),
  });
  servers.push(server);
  return socketPath;
}

function session(socketPath: string): Promise<ClientHttp2Session> {
  return new Promise((resolve, reject) => {
    const opened = connectHttp2('http://localhost', {
      createConnection: () => connect(socketPath) as Socket,
    });
    sessions.push(opened);
    opened.once('remoteSettings', () => resolve(opened));
    opened.once('error', reject);
  });
}

interface Answer {
  status: string | undefined;
  message: string;
}

/** A Predict whose message announces `announced` bytes, of which `sent` are sent; the stream stays open. */
function holdPredict(
  http2: ClientHttp2Session,
  announced: number,
  sent: number,
): { stream: ClientHttp2Stream; answer: Promise<Answer> } {
  const stream = http2.request({
    ':method': 'POST',
    ':path': '/AWS.SageMaker.Edge.Agent/Predict',
    'content-type': 'application/grpc',
    te: 'trailers',
  });
  const prefix = Buffer.alloc(5);
  prefix.writeUInt32BE(announced, 1);
  stream.write(Buffer.concat([prefix, Buffer.alloc(sent, 0x0a)]));
  const answer = new Promise<Answer>((resolve) => {
    const take = (headers: Record<string, unknown>) => {
      if (headers['grpc-status'] === undefined) return;
      resolve({
        status: String(headers['grpc-status']),
        message: decodeURIComponent(String(headers['grpc-message'] ?? '')),
      });
    };
    stream.on('response', take);
    stream.on('trailers', take);
    stream.on('error', () => undefined);
    stream.on('close', () => resolve({ status: undefined, message: `closed (${stream.rstCode})` }));
  });
  return { stream, answer };
}

/** A ListModels call on the session, answered: the agent has read every frame sent on it before. */
function roundTrip(http2: ClientHttp2Session): Promise<void> {
  const stream = http2.request({
    ':method': 'POST',
    ':path': '/AWS.SageMaker.Edge.Agent/ListModels',
    'content-type': 'application/grpc',
    te: 'trailers',
  });
  stream.end(Buffer.alloc(5));
  stream.resume();
  return new Promise((resolve) => {
    stream.on('error', () => undefined);
    stream.on('close', () => resolve());
  });
}

/** The answer, or "none" when there is none within `ms` (a call the agent holds). */
function within(answer: Promise<Answer>, ms: number): Promise<Answer | 'none'> {
  return Promise.race([answer, delay(ms).then(() => 'none' as const)]);
}

describe('gRPC request messages being received', () => {
  it('cancels a call whose message is not complete within the receive timeout (DEADLINE_EXCEEDED)', async () => {
    const socketPath = await start({ receiveTimeoutMs: 200 });
    const http2 = await session(socketPath);
    const { answer } = holdPredict(http2, 100 * KiB, 10 * KiB);
    // A whole message whose stream is never ended is not handled (a unary call waits for the end): cancelled too.
    const whole = holdPredict(http2, 10 * KiB, 10 * KiB);
    expect(await within(whole.answer, 10_000)).toMatchObject({ status: '4' });
    expect(await within(answer, 10_000)).toEqual({
      status: '4',
      message: expect.stringMatching(
        /the request \(its message and the end of the client's stream\) was not complete 200 ms after the call began \(edgefleet_grpc_receive_timeout_seconds\)/,
      ),
    });
  });

  it('allows 32 concurrent streams per connection', async () => {
    const http2 = await session(await start({}));
    expect(http2.remoteSettings.maxConcurrentStreams).toBe(32);
  });

  it('takes bytes as they arrive: refuses the message whose next bytes would pass the budget (RESOURCE_EXHAUSTED) while stalled ones hold theirs, and gives the budget back when they go', async () => {
    const budget = new BodyBudget(1024 * KiB);
    const socketPath = await start({ budget, receiveTimeoutMs: 60_000 });
    const http2 = await session(socketPath);
    // Two messages of 400 KiB, 390 KiB of each sent: 780 KiB (and the prefixes) taken.
    const held = [holdPredict(http2, 400 * KiB, 390 * KiB), holdPredict(http2, 400 * KiB, 390 * KiB)];
    while (budget.usedBytes < 2 * (5 + 390 * KiB)) await delay(10);
    const third = holdPredict(http2, 400 * KiB, 390 * KiB);
    expect(await within(third.answer, 10_000)).toEqual({
      status: '8',
      message: expect.stringMatching(
        /bytes of request bodies are being received or held already; the next \d+ bytes of this call’s request message \(after \d+ taken for it\) would pass the agent's budget of 1048576 bytes/,
      ),
    });
    // The held calls get no answer: they are still being received.
    expect(await within(Promise.race(held.map((h) => h.answer)), 100)).toBe('none');
    for (const h of held) h.stream.close();
    while (budget.usedBytes > 0) await delay(10);
    // Room again: a whole message of the same size is taken (and answered, here as the garbage it is).
    const whole = holdPredict(http2, 400 * KiB, 400 * KiB);
    whole.stream.end();
    const answer = await within(whole.answer, 10_000);
    expect(answer).not.toBe('none');
    expect((answer as Answer).status).not.toBe('8');
    while (budget.usedBytes > 0) await delay(10);
  });

  it('takes nothing for an announced length alone, nor for a prefix over -m (refused, naming -m): neither blocks other callers', async () => {
    // A budget larger than -m, so that a prefix over -m would fit it.
    const budget = new BodyBudget(2560 * KiB);
    const socketPath = await start({ budget, receiveTimeoutMs: 60_000 });
    const http2 = await session(socketPath);
    // A prefix announcing 2 MiB (over -m): refused from the prefix, naming the option; nothing is taken for it.
    const overMax = holdPredict(http2, 2048 * KiB, 10);
    expect(await within(overMax.answer, 10_000)).toMatchObject({
      status: '8',
      message: expect.stringMatching(
        /^the request message is 2097152 bytes, larger than the agent's limit of 1048576 bytes \(its -m \/ --max-message-size option\)/,
      ),
    });
    expect(budget.usedBytes).toBe(0);
    // Prefixes announcing 1000 KiB each (within -m) with 10 bytes sent: at most what was sent is taken.
    const announced = [1, 2, 3, 4].map(() => holdPredict(http2, 1000 * KiB, 10));
    await roundTrip(http2);
    expect(budget.usedBytes).toBeLessThanOrEqual(4 * (5 + 10));
    // Two whole messages of 1000 KiB still fit the budget of 2560 KiB.
    const whole = [1, 2].map(() => holdPredict(http2, 1000 * KiB, 1000 * KiB));
    for (const w of whole) w.stream.end();
    for (const w of whole) {
      const answer = await within(w.answer, 10_000);
      expect(answer).not.toBe('none');
      expect((answer as Answer).status).not.toBe('8');
    }
    expect(await within(Promise.race(announced.map((h) => h.answer)), 50)).toBe('none');
    for (const h of [...announced, overMax]) h.stream.close();
    while (budget.usedBytes > 0) await delay(10);
  });

  it('resets a call refused for -m whose client keeps sending, at the receive timeout (grpc-js reads and drops what it sends until then)', async () => {
    const socketPath = await start({ receiveTimeoutMs: 300 });
    const http2 = await session(socketPath);
    const overMax = holdPredict(http2, 2048 * KiB, 10);
    expect(await within(overMax.answer, 10_000)).toMatchObject({ status: '8' });
    // The client goes on sending its announced message (and more): the refused call stays under the receive
    // timeout, so the agent resets it rather than reading whatever comes for as long as the client likes. The
    // writes stop after 150 (10 times the timeout), long after the reset is due.
    const chunk = Buffer.alloc(64 * KiB);
    for (let writes = 0; !overMax.stream.closed && writes < 150; writes++) {
      overMax.stream.write(chunk);
      await delay(20);
    }
    expect(overMax.stream.closed).toBe(true);
    expect(overMax.stream.rstCode).toBe(8); // NGHTTP2_CANCEL: the agent's reset
  });

  it('refuses bytes after a call’s one request message (grpc-js would buffer a second message uncounted), and compressed messages', async () => {
    const budget = new BodyBudget(2560 * KiB);
    const socketPath = await start({ budget, receiveTimeoutMs: 60_000 });
    const http2 = await session(socketPath);
    // An empty message, then a second prefix announcing -m and a few bytes of it, the stream left open.
    const second = holdPredict(http2, 0, 0);
    const prefix = Buffer.alloc(5);
    prefix.writeUInt32BE(1024 * KiB, 1);
    second.stream.write(Buffer.concat([prefix, Buffer.alloc(10)]));
    expect(await within(second.answer, 10_000)).toEqual({
      status: '3',
      message: 'the call sent more after its request message; expected one request message per call',
    });
    // A compressed message (the prefix's flag set) is refused before its bytes are taken.
    const compressed = http2.request({
      ':method': 'POST',
      ':path': '/AWS.SageMaker.Edge.Agent/Predict',
      'content-type': 'application/grpc',
      'grpc-encoding': 'gzip',
      te: 'trailers',
    });
    const flagged = Buffer.alloc(5);
    flagged[0] = 1;
    flagged.writeUInt32BE(100, 1);
    compressed.write(Buffer.concat([flagged, Buffer.alloc(20)]));
    const refused = await new Promise<string>((resolve) => {
      const take = (headers: Record<string, unknown>) => {
        if (headers['grpc-status'] !== undefined) resolve(String(headers['grpc-status']));
      };
      compressed.on('response', take);
      compressed.on('trailers', take);
      compressed.on('error', () => undefined);
    });
    expect(refused).toBe('12');
    while (budget.usedBytes > 0) await delay(10);
  });

  it('keeps a cancelled call’s message in the budget until its handler has answered (the message is still queued or running)', async () => {
    const budget = new BodyBudget(4096 * KiB);
    const socketPath = await start({ budget, receiveTimeoutMs: 60_000 });
    const client = newClient(`unix://${socketPath}`, 1024 * KiB);
    try {
      await registry.load({ name: 'slow', url: slowPackage });
      const request = { handle: 'slow', tensors: wireInputs('slow', { x: slowModelInput() }) };
      const messageBytes = createAgentCodec().encode('PredictRequest', request).length + 5;
      const call = client.Predict(request, () => undefined);
      const slow = () => pool.stats().models.find((m) => m.key.startsWith('slow#'));
      // Handed on: the model runs it.
      while ((slow()?.running ?? 0) + (slow()?.queued ?? 0) === 0) await delay(5);
      expect(budget.usedBytes).toBe(messageBytes);
      call.cancel();
      // The cancel (RST_STREAM) reaches the agent before a later call on the same connection is answered.
      await callMethod(client, 'ListModels', {});
      const used = budget.usedBytes;
      const stillRunning = (slow()?.running ?? 0) + (slow()?.queued ?? 0);
      expect(
        stillRunning,
        'the slow model finished before the cancel was seen; the check needs it running',
      ).toBe(1);
      expect(used).toBe(messageBytes);
      // Once the inference is over (its answer dropped: the call is gone), the budget is given back.
      while (budget.usedBytes > 0) await delay(10);
      expect((slow()?.running ?? 0) + (slow()?.queued ?? 0)).toBe(0);
    } finally {
      client.close();
      await registry.unload('slow').catch(() => undefined);
    }
  });

  it('shares the budget with the REST door: a stalled REST body leaves no room for a large gRPC message', async () => {
    const budget = new BodyBudget(1024 * KiB);
    const socketPath = await start({ budget, receiveTimeoutMs: 60_000 });
    const metrics = new AgentMetrics({ defaultMetrics: false });
    const rest: RestServer = await startRestServer({
      registry,
      metrics,
      logger: silentLogger,
      tcp: { host: '127.0.0.1', port: 0 },
      maxBodyBytes: 1024 * KiB,
      bodyBudget: budget,
    });
    const socket = connect(Number(new URL(rest.addresses[0]!).port), '127.0.0.1');
    try {
      await registry.load({
        name: 'shared',
        url: tinyPackage,
      });
      // 800 KiB of the body sent (bytes are taken as they arrive), the last byte held back.
      socket.write(
        'POST /v2/models/shared/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n' +
          `Inference-Header-Content-Length: 10\r\nContent-Length: ${800 * KiB + 1}\r\n\r\n`,
      );
      socket.write(Buffer.alloc(800 * KiB, 0x20));
      while (budget.usedBytes < 800 * KiB) await delay(10);
      const http2 = await session(socketPath);
      const call = holdPredict(http2, 400 * KiB, 400 * KiB);
      expect(await within(call.answer, 10_000)).toMatchObject({ status: '8' });
    } finally {
      socket.destroy();
      await rest.close();
      await registry.unload('shared').catch(() => undefined);
    }
  });
});
