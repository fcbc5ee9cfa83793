import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startGrpcServer, type RunningGrpcServer } from '../../src/grpc/index.js';
import type { InferencePool } from '../../src/inference/index.js';
import { ModelRegistry } from '../../src/models/index.js';
import { callMethod, newClient, scratch, silentLogger, startPool } from './helpers.js';

// A local user flooding the socket with idle connections: the listener holds at most `maxConnections` and
// closes the rest on accept, so the agent's descriptors stay bounded; once the flood stops, clients get in.
const CAP = 8;
let pool: InferencePool;
let server: RunningGrpcServer;
let socketPath: string;

beforeAll(async () => {
  const dir = (await scratch('grpc-cap-')).root;
  pool = await startPool(1);
  socketPath = join(dir, 'agent.sock');
  server = await startGrpcServer({
    registry: new ModelRegistry({ pool, trust: null, cwd: dir }),
    sharedMemory: null,
    logger: silentLogger,
    socketPath,
    maxMessageBytes: 1024 * 1024,
    maxConnections: CAP,
  });
});

afterAll(async () => {
  await server?.close(1000);
  await pool?.close();
});

function openIdle(): Promise<{ socket: Socket; closed: Promise<void> }> {
  return new Promise((resolve, reject) => {
    const socket = connect(socketPath);
    const closed = new Promise<void>((done) => socket.once('close', () => done()));
    socket.once('error', () => undefined);
    socket.once('connect', () => resolve({ socket, closed }));
    socket.once('error', reject);
  });
}

describe('gRPC socket connection cap', () => {
  it('closes connections past the cap at once, and serves again when the flood ends', async () => {
    const held = [];
    for (let i = 0; i < CAP; i += 1) held.push(await openIdle());
    const extra = await Promise.all(Array.from({ length: 5 }, openIdle));
    // Every connection past the cap is closed by the agent (this would hang until the test timeout otherwise).
    await Promise.all(extra.map((e) => e.closed));
    const stillOpen = await Promise.all(
      held.map((h) => Promise.race([h.closed.then(() => false), delay(200).then(() => true)])),
    );
    expect(stillOpen.every(Boolean)).toBe(true);

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
