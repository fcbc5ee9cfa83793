import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, connect, type Server, type Socket } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { LocalBlobStore } from '../../src/blobs/index.js';
import { FleetOutputs } from '../../src/captures/fleet-output.js';

// The fleet-output S3 clients' timeouts come from the config (captures.outputS3SocketTimeoutMs, …ConnectionTimeoutMs):
// a real S3 client against endpoints that never answer, or never accept, fails with the configured value.
let dir: string;
const credentials = { accessKeyId: 'test', secretAccessKey: 'test-secret' };
const cleanups: Array<() => void | Promise<void>> = [];

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-fleet-output-'));
});
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});
afterAll(() => rm(dir, { recursive: true, force: true }));

function outputsFor(endpoint: string, timeouts: { socketTimeoutMs: number; connectionTimeoutMs: number }) {
  const outputs = new FleetOutputs(
    new LocalBlobStore(dir),
    { endpoint, region: 'us-east-1', forcePathStyle: true, credentials },
    { uploadSlots: 1, timeouts },
  );
  cleanups.push(() => outputs.close());
  return outputs.targetFor('s3://fleet-bucket/captures')!.store;
}

describe('fleet-output S3 timeouts', () => {
  it('a request to an endpoint that accepts and never answers fails after outputS3SocketTimeoutMs', async () => {
    const sockets = new Set<Socket>();
    const silent: Server = createServer((socket) => {
      sockets.add(socket);
      socket.resume();
    });
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    cleanups.push(
      () =>
        new Promise<void>((resolve) => {
          for (const socket of sockets) socket.destroy();
          silent.close(() => resolve());
        }),
    );
    const { port } = silent.address() as { port: number };
    const store = outputsFor(`http://127.0.0.1:${port}`, {
      socketTimeoutMs: 1000,
      connectionTimeoutMs: 60_000,
    });
    await expect(store.put('plant/one.jsonl', 'x')).rejects.toThrow(
      /the request socket timed out after 1000 ms of inactivity \(configured by client requestHandler\)/,
    );
  }, 30_000);

  // Linux drops a SYN while a listener's accept queue is full, so a connection to a listener that never accepts
  // (backlog 0, its one queued place taken) stays unestablished. Node accepts at once, so Python holds it; without
  // python3 the test is skipped (spawning it would fail with an unhandled error instead).
  it.runIf(process.platform === 'linux' && spawnSync('python3', ['-c', '']).status === 0)(
    'a connection that is never established fails after outputS3ConnectionTimeoutMs',
    async () => {
      const listener: ChildProcess = spawn(
        'python3',
        [
          '-c',
          'import socket, sys\ns = socket.socket()\ns.bind(("127.0.0.1", 0))\ns.listen(0)\nprint(s.getsockname()[1], flush=True)\nsys.stdin.read()',
        ],
        { stdio: ['pipe', 'pipe', 'inherit'] },
      );
      cleanups.push(() => {
        listener.kill('SIGKILL');
      });
      const [line] = (await once(createInterface({ input: listener.stdout! }), 'line')) as [string];
      const port = Number(line);
      // Takes the queue's one place.
      const first = connect(port, '127.0.0.1');
      cleanups.push(() => {
        first.destroy();
      });
      await new Promise((resolve, reject) => first.once('connect', resolve).once('error', reject));
      const store = outputsFor(`http://127.0.0.1:${port}`, {
        socketTimeoutMs: 60_000,
        connectionTimeoutMs: 1000,
      });
      await expect(store.put('plant/two.jsonl', 'x')).rejects.toThrow(
        /did not establish a connection with the server within the configured timeout of 1000 ms/,
      );
    },
    30_000,
  );
});
