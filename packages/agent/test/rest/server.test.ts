import { spawn } from 'node:child_process';
import { lstat, mkdir, readdir, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { slowModelInput, slowModelReference } from '@edgefleet/core';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_ORT_SESSION_CONFIG, InferencePool } from '../../src/inference/index.js';
import { AgentMetrics } from '../../src/metrics/index.js';
import { ModelRegistry } from '../../src/models/index.js';
import { buildRestApp, startRestServer, type RestServerOptions } from '../../src/rest/index.js';
import { HttpClient, binaryBody, bytesOf, scratch, splitBinaryResponse, targetOf } from './helpers.js';

let files: Awaited<ReturnType<typeof scratch>>;
let pool: InferencePool;
let registry: ModelRegistry;
let metrics: AgentMetrics;
const logger = pino({ level: 'silent' });

beforeAll(async () => {
  files = await scratch('agent-rest-server-');
  pool = await InferencePool.start({ workers: 1, session: DEFAULT_ORT_SESSION_CONFIG });
  metrics = new AgentMetrics({ defaultMetrics: false });
  registry = new ModelRegistry({ pool, trust: null, cwd: files.root, metrics });
  await registry.load({ name: 'slow', url: await files.catalogue('slow') });
});

afterAll(async () => {
  await registry?.close();
  await pool?.close();
  await files?.cleanup();
});

const start = (options: Partial<RestServerOptions>) =>
  startRestServer({ registry, metrics, logger, ...options });

let socketCounter = 0;
const socketPath = () => join(files.root, `rest-${++socketCounter}.sock`);

/** Leaves a socket file behind, as a process killed while listening does. */
async function staleSocket(path: string): Promise<void> {
  const script = `require('net').createServer().listen(${JSON.stringify(path)}, () => process.kill(process.pid, 'SIGKILL'))`;
  await new Promise<void>((resolve) => spawn(process.execPath, ['-e', script]).on('exit', () => resolve()));
  expect((await lstat(path)).isSocket()).toBe(true);
}

describe('the Unix socket listener', () => {
  it('makes the socket file 0660 by default (or the mode asked for) and removes it on close', async () => {
    const path = socketPath();
    const server = await start({ unixSocketPath: path });
    expect(server.addresses).toEqual([`unix:${path}`]);
    expect((await lstat(path)).mode & 0o777).toBe(0o660);
    await server.close();
    await expect(lstat(path)).rejects.toMatchObject({ code: 'ENOENT' });

    const privatePath = socketPath();
    const private0600 = await start({ unixSocketPath: privatePath, socketMode: 0o600 });
    expect((await lstat(privatePath)).mode & 0o777).toBe(0o600);
    await private0600.close();
    // The private folder it binds in before moving the socket into place is gone.
    expect((await readdir(files.root)).filter((name) => name.startsWith('.rest-'))).toEqual([]);
  });

  it('binds in place, mode set, when a path near the length limit leaves no room for the private folder', async () => {
    const dir = join(files.root, 'd'.repeat(98 - files.root.length - 1)); // 98 bytes: room for /r.sock, not for /.rest-XXXXXX/s
    await mkdir(dir, { recursive: true });
    const path = join(dir, 'r.sock');
    expect(Buffer.byteLength(path)).toBeLessThanOrEqual(107);
    expect(Buffer.byteLength(join(dir, '.rest-XXXXXX', 's'))).toBeGreaterThan(107);
    const server = await start({ unixSocketPath: path, socketMode: 0o640 });
    expect((await lstat(path)).mode & 0o777).toBe(0o640);
    const client = new HttpClient(targetOf(server.addresses[0]!));
    expect((await client.get('/v2/health/live')).status).toBe(200);
    client.close();
    await server.close();
    expect(await readdir(dir)).toEqual([]);
  });

  it('replaces a socket file left by a process that is gone', async () => {
    const path = socketPath();
    await staleSocket(path);
    const server = await start({ unixSocketPath: path });
    const client = new HttpClient(targetOf(server.addresses[0]!));
    expect((await client.get('/v2/health/live')).status).toBe(200);
    client.close();
    await server.close();
  });

  it('refuses a socket another process serves on, and leaves it alone', async () => {
    const path = socketPath();
    const other = createServer();
    await new Promise<void>((resolve) => other.listen(path, resolve));
    await expect(start({ unixSocketPath: path })).rejects.toThrow(
      `a process is already serving on ${path} (another agent?); stop it, or choose another edgefleet_rest_socket_path path`,
    );
    expect((await lstat(path)).isSocket()).toBe(true);
    await new Promise((resolve) => other.close(resolve));
  });

  it('refuses a path holding a file that is not a socket, and leaves it alone', async () => {
    const path = socketPath();
    await writeFile(path, 'precious');
    await expect(start({ unixSocketPath: path })).rejects.toThrow(
      /exists and is not a socket \(a regular file\); the agent will not remove it: remove it yourself or choose another edgefleet_rest_socket_path path/,
    );
    expect((await lstat(path)).isFile()).toBe(true);
  });

  it('needs somewhere to listen', async () => {
    await expect(start({})).rejects.toThrow(/needs somewhere to listen: give unixSocketPath, tcp, or both/);
  });

  it('a TCP port in use fails the start and releases the Unix socket it had opened', async () => {
    const blocker = createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const port = (blocker.address() as { port: number }).port;
    const path = socketPath();
    await expect(start({ unixSocketPath: path, tcp: { host: '127.0.0.1', port } })).rejects.toThrow(
      new RegExp(`cannot listen on TCP 127\\.0\\.0\\.1:${port}: .*EADDRINUSE`),
    );
    await expect(lstat(path)).rejects.toMatchObject({ code: 'ENOENT' });
    await new Promise((resolve) => blocker.close(resolve));
  });
});

describe('connections', () => {
  it('serves TCP alone on a loopback address, with keep-alive', async () => {
    const server = await start({ tcp: { host: '127.0.0.1', port: 0 } });
    expect(server.addresses).toEqual([expect.stringMatching(/^http:\/\/127\.0\.0\.1:\d+$/)]);
    const client = new HttpClient(targetOf(server.addresses[0]!));
    const first = await client.get('/v2/health/live');
    const second = await client.get('/v2/models/slow/ready');
    expect([first.status, second.status]).toEqual([200, 200]);
    expect(first.headers.connection).toBe('keep-alive');
    expect(second.reusedSocket).toBe(true);
    client.close();
    await server.close();
  });

  it('close() waits for a request in flight, ends kept-alive connections, and can be called again', async () => {
    const path = socketPath();
    const server = await start({ unixSocketPath: path });
    const client = new HttpClient(targetOf(server.addresses[0]!));
    const idle = new HttpClient(targetOf(server.addresses[0]!));
    expect((await idle.get('/v2/health/live')).status).toBe(200); // leaves an idle kept-alive connection

    const input = slowModelInput();
    const request = binaryBody(
      {
        inputs: [
          {
            name: 'x',
            shape: input.shape,
            datatype: 'FP32',
            parameters: { binary_data_size: input.data.byteLength },
          },
        ],
        parameters: { binary_data_output: true },
      },
      [bytesOf(input.data)],
    );
    const inflight = client.request({ method: 'POST', path: '/v2/models/slow/infer', ...request });
    while (!pool.stats().models.some((m) => m.running > 0))
      await new Promise((resolve) => setTimeout(resolve, 2));

    const closing = server.close();
    expect(server.close()).toBe(closing);
    const result = await inflight;
    expect(result.status).toBe(200);
    expect(result.headers.connection).toBe('close');
    const { tail } = splitBinaryResponse(result);
    expect(Buffer.from(tail).equals(Buffer.from(bytesOf(slowModelReference(input).data)))).toBe(true);
    await closing;
    await expect(lstat(path)).rejects.toMatchObject({ code: 'ENOENT' });
    await expect(client.get('/v2/health/live')).rejects.toMatchObject({
      code: expect.stringMatching(/ENOENT|ECONNREFUSED/),
    });
    client.close();
    idle.close();
  }, 20_000);
});

describe('buildRestApp', () => {
  it('serves the same routes without listening (app.inject), and readiness follows the notReadyBecause option', async () => {
    let reason: string | undefined = 'still loading in the background: a, b';
    const app = buildRestApp({ registry, metrics, logger, notReadyBecause: () => reason, version: '9.9.9' });
    const server = await app.inject({ method: 'GET', url: '/v2' });
    expect(server.json()).toEqual({
      name: 'edgefleet-agent',
      version: '9.9.9',
      extensions: ['binary_tensor_data', 'model_repository'],
    });
    const notReady = await app.inject({ method: 'GET', url: '/v2/health/ready' });
    expect([notReady.statusCode, notReady.json()]).toEqual([
      400,
      { error: 'the agent is not ready for inference yet: still loading in the background: a, b' },
    ]);
    reason = undefined;
    expect((await app.inject({ method: 'GET', url: '/v2/health/ready' })).statusCode).toBe(200);
    expect((await app.inject({ method: 'GET', url: '/v2/health/live' })).json()).toEqual({ live: true });
    await app.close();
  });
});
