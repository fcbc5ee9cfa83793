import { connect as connectHttp2, type ClientHttp2Session, type ClientHttp2Stream } from 'node:http2';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { BodyBudget } from '../../src/body-budget/index.js';
import { startGrpcServer, type RunningGrpcServer } from '../../src/grpc/index.js';
import type { InferencePool } from '../../src/inference/index.js';
import { AgentMetrics } from '../../src/metrics/index.js';
import { ModelRegistry } from '../../src/models/index.js';
import { startRestServer, type RestServer } from '../../src/rest/index.js';
import { scratch, silentLogger, startPool } from './helpers.js';

// The audit's hold scenario in miniature: raw HTTP/2 on the gRPC socket, a Predict whose length prefix announces
// N bytes, some of them sent, then silence. grpc-js would hold each such call's bytes with no deadline.
const KiB = 1024;
let files: Awaited<ReturnType<typeof scratch>>;
let dir: string;
let tinyPackage: string;
let pool: InferencePool;
let registry: ModelRegistry;
const servers: RunningGrpcServer[] = [];
const sessions: ClientHttp2Session[] = [];

beforeAll(async () => {
  files = await scratch('grpc-receive-');
  dir = files.root;
  tinyPackage = await files.catalogue('tiny');
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

  it('refuses a message that would pass the body budget (RESOURCE_EXHAUSTED) while stalled ones hold it, and gives the budget back when they go', async () => {
    const budget = new BodyBudget(1024 * KiB);
    const socketPath = await start({ budget, receiveTimeoutMs: 60_000 });
    const http2 = await session(socketPath);
    const held = [holdPredict(http2, 400 * KiB, 10 * KiB), holdPredict(http2, 400 * KiB, 10 * KiB)];
    const third = holdPredict(http2, 400 * KiB, 10 * KiB);
    expect(await within(third.answer, 10_000)).toEqual({
      status: '8',
      message: expect.stringMatching(
        /819210 bytes of request bodies are being received or held already; this call’s request message \(409605 bytes\) would pass the agent's budget of 1048576 bytes/,
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
      socket.write(
        'POST /v2/models/shared/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n' +
          `Inference-Header-Content-Length: 10\r\nContent-Length: ${800 * KiB}\r\n\r\n{"in`,
      );
      while (budget.usedBytes < 800 * KiB) await delay(10);
      const http2 = await session(socketPath);
      const call = holdPredict(http2, 400 * KiB, 10 * KiB);
      expect(await within(call.answer, 10_000)).toMatchObject({ status: '8' });
    } finally {
      socket.destroy();
      await rest.close();
      await registry.unload('shared').catch(() => undefined);
    }
  });
});
