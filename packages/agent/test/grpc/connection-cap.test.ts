import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { setTimeout as delay } from 'node:timers/promises';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { startGrpcServer, type RunningGrpcServer } from '../../src/grpc/index.js';
import type { InferencePool } from '../../src/inference/index.js';
import { AgentMetrics } from '../../src/metrics/index.js';
import { ModelRegistry } from '../../src/models/index.js';
import { callMethod, newClient, scratch, silentLogger, startPool } from './helpers.js';

// A local user flooding the socket with idle connections: the listener holds at most `maxConnections` and
// closes the rest on accept, so the agent's descriptors stay bounded; once the flood stops, clients get in.
const CAP = 8;
let pool: InferencePool;
let server: RunningGrpcServer;
let socketPath: string;
let dir: string;
const metrics = new AgentMetrics({ defaultMetrics: false });
const lines: Record<string, unknown>[] = [];
const logger = pino(
  { level: 'info' },
  new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n').filter(Boolean)) lines.push(JSON.parse(line));
      done();
    },
  }),
);

beforeAll(async () => {
  dir = (await scratch('grpc-cap-')).root;
  pool = await startPool(1);
  socketPath = join(dir, 'agent.sock');
  server = await startGrpcServer({
    registry: new ModelRegistry({ pool, trust: null, cwd: dir }),
    sharedMemory: null,
    logger,
    metrics,
    socketPath,
    maxMessageBytes: 1024 * 1024,
    maxConnections: CAP,
  });
});

afterAll(async () => {
  await server?.close(1000);
  await pool?.close();
});

function openIdle(path = socketPath): Promise<{ socket: Socket; closed: Promise<void> }> {
  return new Promise((resolve, reject) => {
    const socket = connect(path);
    const closed = new Promise<void>((done) => socket.once('close', () => done()));
    socket.once('error', () => undefined);
    socket.once('connect', () => resolve({ socket, closed }));
    socket.once('error', reject);
  });
}

/** The client connection preface: the magic and an empty SETTINGS frame. */
const PREFACE = Buffer.concat([
  Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'),
  Buffer.from('000000040000000000', 'hex'),
]);

describe('gRPC socket connection cap', () => {
  it('closes connections past the cap at once, and serves again when the flood ends', async () => {
    // Connections that sent their preface: none of them makes room for a newcomer.
    const held = [];
    for (let i = 0; i < CAP; i += 1) {
      const connection = await openIdle();
      connection.socket.write(PREFACE);
      held.push(connection);
    }
    // The server has taken each preface once it has answered with its own SETTINGS.
    await Promise.all(held.map((h) => new Promise((resolve) => h.socket.once('data', resolve))));
    const extra = await Promise.all(Array.from({ length: 5 }, () => openIdle()));
    // Every connection past the cap is closed by the agent (this would hang until the test timeout otherwise).
    await Promise.all(extra.map((e) => e.closed));
    const stillOpen = await Promise.all(
      held.map((h) => Promise.race([h.closed.then(() => false), delay(200).then(() => true)])),
    );
    expect(stillOpen.every(Boolean)).toBe(true);
    // F-F: refusals were silent. The first is logged at once (the rest when the minute ends), all are counted.
    const refusals = lines.filter((line) => line.event === 'connections_refused');
    expect(refusals).toHaveLength(1);
    expect(refusals[0]).toMatchObject({ level: 40, listener: 'grpc', refused: 1, totalCap: CAP });
    expect(refusals[0]!.msg).toBe(
      `1 connection(s) refused on the grpc listener from unix socket (1): total cap ${CAP}`,
    );
    expect(await metrics.registry.getSingleMetricAsString('edgefleet_connections_refused_total')).toContain(
      'edgefleet_connections_refused_total{listener="grpc",cap="total"} 5',
    );

    for (const h of held) h.socket.destroy();
    await Promise.all(held.map((h) => h.closed));
    const client = newClient(server.address);
    try {
      const answer = await callMethod(client, 'ListModels', {});
      expect(answer.models ?? []).toEqual([]);
    } finally {
      client.close();
    }
  });
});

describe('gRPC socket full of connections that sent nothing (F-F)', () => {
  it('lets a client in by closing the oldest of them, and logs it', async () => {
    const path = join(dir, 'silent.sock');
    const own = await startGrpcServer({
      registry: new ModelRegistry({ pool, trust: null, cwd: dir }),
      sharedMemory: null,
      logger,
      socketPath: path,
      maxMessageBytes: 1024 * 1024,
      maxConnections: CAP,
    });
    const silent = [];
    try {
      for (let i = 0; i < CAP; i += 1) silent.push(await openIdle(path));
      const client = newClient(own.address);
      try {
        expect((await callMethod(client, 'ListModels', {})).models ?? []).toEqual([]);
      } finally {
        client.close();
      }
      await silent[0]!.closed;
      expect(silent.slice(1).every((s) => !s.socket.destroyed)).toBe(true);
      const refusals = lines.filter((line) => line.event === 'connections_refused' && line.totalCap === CAP);
      expect(refusals.at(-1)).toMatchObject({ listener: 'grpc', refused: 0, evicted: 1 });
      expect(refusals.at(-1)!.msg).toBe(
        `1 connection(s) over a cap on the grpc listener from unix socket (1) let in by closing another connection, of unix socket (1): total cap ${CAP}`,
      );
    } finally {
      silent.forEach((s) => s.socket.destroy());
      await own.close(1000);
    }
  });
});

describe('gRPC socket preface timeout (F-F)', () => {
  it('closes a connection that sends nothing, and keeps one that sent the HTTP/2 preface', async () => {
    const path = join(dir, 'preface.sock');
    const timed = await startGrpcServer({
      registry: new ModelRegistry({ pool, trust: null, cwd: dir }),
      sharedMemory: null,
      logger: silentLogger,
      socketPath: path,
      maxMessageBytes: 1024 * 1024,
      prefaceTimeoutMs: 300,
    });
    try {
      // Opened first: by the time the silent one is closed, this one has been open longer than the timeout.
      const talking = await openIdle(path);
      const received: Buffer[] = [];
      talking.socket.on('data', (chunk: Buffer) => received.push(chunk));
      talking.socket.write(PREFACE);
      const silent = await openIdle(path);
      // Without the timeout it would be held for the 5-minute idle limit, past the test's timeout.
      await silent.closed;
      // The one that sent its preface still answers a PING (type 6) with a PING ACK (flags 1).
      const ack = new Promise<boolean>((resolve) => {
        const check = () => {
          const all = Buffer.concat(received);
          for (let at = 0; at + 9 <= all.length; at += 9 + all.readUIntBE(at, 3)) {
            if (all[at + 3] === 6 && all[at + 4] === 1) return resolve(true);
          }
        };
        talking.socket.on('data', check);
        void talking.closed.then(() => resolve(false));
        check();
      });
      talking.socket.write(Buffer.concat([Buffer.from('000008060000000000', 'hex'), Buffer.alloc(8, 7)]));
      expect(await ack).toBe(true);
      talking.socket.destroy();
      // A real client still gets its calls answered.
      const client = newClient(timed.address);
      try {
        expect((await callMethod(client, 'ListModels', {})).models ?? []).toEqual([]);
      } finally {
        client.close();
      }
    } finally {
      await timed.close(1000);
    }
  });
});

describe('gRPC socket preface timeout: logged and counted', () => {
  it('counts each connection closed for sending no preface and logs them with the refusals, a line a minute', async () => {
    const path = join(dir, 'preface-counted.sock');
    const counted = new AgentMetrics({ defaultMetrics: false });
    const own: Record<string, unknown>[] = [];
    const ownLogger = pino(
      { level: 'info' },
      new Writable({
        write(chunk: Buffer, _encoding, done) {
          for (const line of chunk.toString('utf8').split('\n').filter(Boolean)) own.push(JSON.parse(line));
          done();
        },
      }),
    );
    const timed = await startGrpcServer({
      registry: new ModelRegistry({ pool, trust: null, cwd: dir }),
      sharedMemory: null,
      logger: ownLogger,
      metrics: counted,
      socketPath: path,
      maxMessageBytes: 1024 * 1024,
      prefaceTimeoutMs: 300,
      // The log's minute never ends on its own: the three time-outs fall in one minute however slow the machine.
      refusalClock: { now: () => 0, after: () => () => undefined },
    });
    let closedServer = false;
    try {
      const silent = [await openIdle(path), await openIdle(path), await openIdle(path)];
      await Promise.all(silent.map((s) => s.closed));
      await vi.waitFor(
        async () =>
          expect(
            await counted.registry.getSingleMetricAsString('edgefleet_connections_closed_unserved_total'),
          ).toContain(
            'edgefleet_connections_closed_unserved_total{listener="grpc",reason="preface-timeout"} 3',
          ),
        { timeout: 5_000, interval: 20 },
      );
      // Not refusals: no cap was reached.
      expect(
        await counted.registry.getSingleMetricAsString('edgefleet_connections_refused_total'),
      ).not.toContain('listener="grpc"');
      // The first at once; the others within the minute are summed up when it ends (here: the close).
      const first = own.filter((line) => line.event === 'connections_refused');
      expect(first).toHaveLength(1);
      expect(first[0]).toMatchObject({ level: 40, listener: 'grpc', refused: 0, timedOut: 1 });
      expect(first[0]!.msg).toBe(
        '1 connection(s) closed on the grpc listener from unix socket (1): sent no HTTP/2 preface within 0.3 s',
      );
      await timed.close(1000);
      closedServer = true;
      const all = own.filter((line) => line.event === 'connections_refused');
      expect(all).toHaveLength(2);
      expect(all[1]).toMatchObject({ listener: 'grpc', refused: 0, timedOut: 2 });
    } finally {
      if (!closedServer) await timed.close(1000);
    }
  });
});
