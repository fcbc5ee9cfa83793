import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ResponseBudget } from '../../src/body-budget/index.js';
import { DEFAULT_ORT_SESSION_CONFIG, InferencePool } from '../../src/inference/index.js';
import { AgentMetrics } from '../../src/metrics/index.js';
import { ModelRegistry } from '../../src/models/index.js';
import { startRestServer, type RestServer } from '../../src/rest/index.js';
import { HttpClient, binaryBody, scratch, targetOf } from './helpers.js';

// The red-team flood on the REST door: connections that send an inference request and never read the answer (a
// JSON answer of about 3 MB, far more than the socket's kernel buffer takes), beside a client that reads.
let files: Awaited<ReturnType<typeof scratch>>;
let pool: InferencePool;
let registry: ModelRegistry;
const metrics = new AgentMetrics({ defaultMetrics: false });
const logger = pino({ level: 'silent' });
const running: RestServer[] = [];
const sockets: Socket[] = [];

beforeAll(async () => {
  files = await scratch('agent-rest-responses-');
  pool = await InferencePool.start({ workers: 1, session: DEFAULT_ORT_SESSION_CONFIG });
  registry = new ModelRegistry({ pool, trust: null, cwd: files.root, metrics });
  await registry.load({ name: 'image', url: await files.catalogue('image-identity') });
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

const MiB = 1024 ** 2;
/** An image of values with long decimal forms: its JSON answer is about 3 MB. */
const request = (() => {
  const tensor = new Float32Array(3 * 224 * 224).map((_, i) => 0.123456789 + i * 1e-7);
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
})();
const requestBytes = Buffer.concat(request.body);

/** Sends the request on a connection of its own and never reads from it (the socket stays paused). */
function nonReader(socketPath: string): Promise<{ socket: Socket; closed: Promise<void> }> {
  return new Promise((resolve, reject) => {
    const socket = connect({ path: socketPath });
    sockets.push(socket);
    socket.once('error', reject);
    const closed = new Promise<void>((done) => socket.once('close', () => done()));
    socket.once('connect', () => {
      socket.removeListener('error', reject);
      socket.on('error', () => undefined);
      socket.write(
        `POST /v2/models/image/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n` +
          `Inference-Header-Content-Length: ${request.headers['inference-header-content-length']}\r\n` +
          `Content-Length: ${requestBytes.length}\r\n\r\n`,
      );
      socket.write(requestBytes);
      resolve({ socket, closed });
    });
  });
}

async function until(condition: () => boolean): Promise<void> {
  while (!condition()) await delay(5);
}

describe('REST answers waiting for clients that do not read them', () => {
  it('counts them until read, closes the connection whose answers have waited longest once they pass the budget, and a reading client is answered throughout', async () => {
    // Room for two unread answers, not three.
    const budget = new ResponseBudget(7 * MiB);
    const socketPath = join(files.root, 'responses.sock');
    const server = await startRestServer({
      registry,
      metrics,
      logger,
      unixSocketPath: socketPath,
      responseBudget: budget,
    });
    running.push(server);
    const reader = new HttpClient(targetOf(server.addresses[0]!));
    const readerAnswers = async () => {
      const answer = await reader.request({ method: 'POST', path: '/v2/models/image/infer', ...request });
      expect(answer.status).toBe(200);
      expect(answer.body.length).toBeGreaterThan(2 * MiB);
    };
    try {
      // One non-reader: most of its answer waits in the agent, counted, and the connection is kept.
      const first = await nonReader(socketPath);
      await until(() => budget.queuedBytes > 0);
      const heldByFirst = budget.queuedBytes;
      expect(heldByFirst).toBeGreaterThan(MiB);
      await readerAnswers();
      // The reader's answer is given back once its socket has written it out (an event after the client's end).
      await until(() => budget.queuedBytes === heldByFirst);
      expect(budget.slowReadersClosed).toBe(0);
      expect(first.socket.destroyed).toBe(false);

      // More of them: each answer that passes the budget closes the connection whose answer has waited longest,
      // never the reading client's; the count never stays past the limit.
      const floods = [first];
      for (let i = 0; i < 5; i++) {
        const before = { queued: budget.queuedBytes, closed: budget.slowReadersClosed };
        floods.push(await nonReader(socketPath));
        await until(() => budget.queuedBytes !== before.queued || budget.slowReadersClosed !== before.closed);
        expect(budget.queuedBytes).toBeLessThanOrEqual(budget.limitBytes);
        await readerAnswers();
      }
      const closedByBudget = budget.slowReadersClosed;
      expect(closedByBudget).toBeGreaterThanOrEqual(4);

      // Once they read: those closed get a cut-off answer and the connection's end, the others their whole
      // answer; the budget is given back.
      const outcomes = floods.map(({ socket, closed }) => {
        let received = '';
        socket.on('data', (chunk: Buffer) => (received += chunk.toString('latin1')));
        socket.resume();
        const whole = () => {
          const head = received.indexOf('\r\n\r\n');
          const length = /content-length: (\d+)/i.exec(received)?.[1];
          return head >= 0 && length !== undefined && received.length - head - 4 === Number(length);
        };
        return closed.then(
          () => (whole() ? 'whole' : 'cut off'),
          () => 'cut off',
        );
      });
      await until(() => budget.queuedBytes === 0);
      for (const { socket } of floods) socket.end();
      const seen = await Promise.all(outcomes);
      expect(seen.filter((outcome) => outcome === 'cut off')).toHaveLength(closedByBudget);
      expect(seen.filter((outcome) => outcome === 'whole')).toHaveLength(floods.length - closedByBudget);
    } finally {
      reader.close();
    }
  });
});
