import { connect as connectHttp2, type ClientHttp2Session } from 'node:http2';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { createAgentCodec } from '@edgefleet/core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ResponseBudget } from '../../src/body-budget/index.js';
import { startGrpcServer, type RunningGrpcServer } from '../../src/grpc/index.js';
import type { InferencePool } from '../../src/inference/index.js';
import { ModelRegistry } from '../../src/models/index.js';
import { callMethod, newClient, scratch, silentLogger, startPool, wireInputs } from './helpers.js';

// The red-team flood in miniature: raw HTTP/2 sessions that send Predict calls and never read the answers (their
// flow-control window is 0, so not a byte of any answer can leave the agent), beside a client that reads.
const IMAGE_BYTES = 602_112;
let files: Awaited<ReturnType<typeof scratch>>;
let pool: InferencePool;
let registry: ModelRegistry;
const servers: RunningGrpcServer[] = [];
const sessions: ClientHttp2Session[] = [];

beforeAll(async () => {
  files = await scratch('grpc-responses-');
  pool = await startPool(1);
  registry = new ModelRegistry({ pool, trust: null, cwd: files.root });
  await registry.load({ name: 'image-identity', url: await files.catalogue('image-identity') });
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
async function start(responseBudget: ResponseBudget): Promise<string> {
  const socketPath = join(files.root, `agent-${++counter}.sock`);
  servers.push(
    await startGrpcServer({
      registry,
      sharedMemory: null,
      logger: silentLogger,
      socketPath,
      maxMessageBytes: 4 * 1024 ** 2,
      responseBudget,
    }),
  );
  return socketPath;
}

/** A raw HTTP/2 session that never lets the agent send it a byte of data (its windows are 0). */
function nonReader(socketPath: string): Promise<ClientHttp2Session> {
  return new Promise((resolve, reject) => {
    const session = connectHttp2('http://localhost', {
      createConnection: () => connect(socketPath) as Socket,
      settings: { initialWindowSize: 0 },
    });
    sessions.push(session);
    session.once('remoteSettings', () => resolve(session));
    session.once('error', reject);
  });
}

const request = { handle: 'image-identity', tensors: wireInputs('image-identity') };
const framed = (() => {
  const message = createAgentCodec().encode('PredictRequest', request);
  const prefix = Buffer.alloc(5);
  prefix.writeUInt32BE(message.length, 1);
  return Buffer.concat([prefix, message]);
})();

/** Sends a whole Predict on `session`; its answer is never read. */
function unreadPredict(session: ClientHttp2Session): void {
  const stream = session.request({
    ':method': 'POST',
    ':path': '/AWS.SageMaker.Edge.Agent/Predict',
    'content-type': 'application/grpc',
    te: 'trailers',
  });
  stream.on('error', () => undefined);
  stream.end(framed);
}

async function until(condition: () => boolean): Promise<void> {
  while (!condition()) await delay(5);
}

describe('gRPC answers waiting for clients that do not read them', () => {
  it('counts them until read, closes the connection whose answers have waited longest once they pass the budget, and a reading client is answered throughout', async () => {
    // Room for four answers (each the image, plus a little framing), not five.
    const budget = new ResponseBudget(4 * IMAGE_BYTES + IMAGE_BYTES / 2);
    const socketPath = await start(budget);
    const reader = newClient(`unix://${socketPath}`);
    try {
      const first = await nonReader(socketPath);
      const firstClosed = new Promise<void>((resolve) => first.once('close', resolve));
      for (let i = 0; i < 3; i++) unreadPredict(first);
      await until(() => budget.queuedBytes >= 3 * IMAGE_BYTES);
      // Held while unread; a reading client's answers (each counted while in transit) come and go meanwhile.
      for (let i = 0; i < 2; i++) {
        const answer = await callMethod(reader, 'Predict', request);
        expect(answer.tensors[0]?.byteData?.length).toBe(IMAGE_BYTES);
      }
      // Each is given back once the stream's write completes (an event that may come after the client has it).
      await until(() => budget.queuedBytes < 3 * IMAGE_BYTES + 3000);
      expect(budget.slowReadersClosed).toBe(0);
      expect(budget.queuedBytes).toBeGreaterThanOrEqual(3 * IMAGE_BYTES);

      // A second non-reader's answers pass the budget: the first, whose answers have waited longest, is closed
      // and its bytes given back; the second keeps its two.
      const second = await nonReader(socketPath);
      for (let i = 0; i < 2; i++) unreadPredict(second);
      await firstClosed;
      await until(() => budget.queuedBytes >= 2 * IMAGE_BYTES);
      expect(budget.slowReadersClosed).toBe(1);
      expect(budget.queuedBytes).toBeLessThan(2 * IMAGE_BYTES + 2000);
      expect(second.closed).toBe(false);

      // Floods on one connection each: the older non-readers go first, then each flood, never the reading client.
      for (let round = 0; round < 3; round++) {
        const flood = await nonReader(socketPath);
        const floodClosed = new Promise<void>((resolve) => flood.once('close', resolve));
        for (let i = 0; i < 8; i++) unreadPredict(flood);
        await floodClosed;
        const answer = await callMethod(reader, 'Predict', request);
        expect(answer.tensors[0]?.byteData?.length).toBe(IMAGE_BYTES);
        expect(budget.queuedBytes).toBeLessThanOrEqual(budget.limitBytes);
      }
      expect(budget.slowReadersClosed).toBeGreaterThanOrEqual(4);
      expect(budget.queuedBytes).toBeLessThanOrEqual(budget.limitBytes);
    } finally {
      reader.close();
    }
  });
});
