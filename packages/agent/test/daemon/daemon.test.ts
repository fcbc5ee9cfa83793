import { lstat, mkdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { connect as connectHttp2 } from 'node:http2';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import { createAgentCodec } from '@edgefleet/core';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, parseAgentConfig } from '../../src/config/index.js';
import { StartupError, prepareSocketPath, startAgentDaemon } from '../../src/daemon/index.js';
import { CAPTURE_FOLDER, CAPTURE_FOLDER_LOCK_FILE } from '../../src/capture/index.js';
import { DataRootLock, FolderLockError } from '../../src/state/index.js';
import { bindUnixSocket, removeOwnSocketFile } from '../../src/unix-socket/index.js';
import { captureRequest, listFiles } from '../capture/helpers.js';
import { callError, callMethod, newClient, scratch, silentLogger, wireInputs } from '../grpc/helpers.js';

let files: Awaited<ReturnType<typeof scratch>>;
beforeAll(async () => {
  files = await scratch('agent-daemon-');
});
afterAll(async () => {
  await files?.cleanup();
});

/** The daemon in the scratch folder, on `socketPath`, with the config file `configPath`. */
function startDaemon(socketPath: string, configPath: string) {
  return startAgentDaemon({
    commandLine: { socketPath, configPath, removeStaleSocket: false, maxMessageBytes: 4 << 20 },
    cwd: files.root,
    logger: silentLogger,
    cpuCount: 2,
    version: 'test',
  });
}

function listenOn(path: string): Promise<Server> {
  return new Promise((resolve, reject) => {
    const server = createServer((socket) => socket.destroy());
    server.once('error', reject);
    server.listen(path, () => resolve(server));
  });
}

describe('edgefleet_preload_models', () => {
  const context = { cwd: '/srv/agent', cpuCount: 2, grpcSocketPath: '/tmp/a.sock' };

  it('is a list of {url, name}, kept as given (relative urls resolve like LoadModel, against the working directory)', () => {
    const models = [
      { url: '/opt/models/demo', name: 'demo' },
      { url: 'models/other', name: 'other-2' },
    ];
    expect(parseAgentConfig({ edgefleet_preload_models: models }, context).config.preloadModels).toEqual(
      models,
    );
    expect(parseAgentConfig({}, context).config.preloadModels).toBeUndefined();
    expect(parseAgentConfig({ edgefleet_preload_models: '' }, context).config.preloadModels).toBeUndefined();
  });

  it('refuses bad entries with a ConfigError naming the key', () => {
    for (const value of [
      [{ url: '/m', name: 'has_underscore' }],
      [{ url: '', name: 'm' }],
      [{ url: '/m' }],
      [{ url: '/m', name: 'm', extra: 1 }],
      [
        { url: '/a', name: 'same' },
        { url: '/b', name: 'same' },
      ],
      'demo',
      { url: '/m', name: 'm' },
    ]) {
      let thrown: unknown;
      try {
        parseAgentConfig({ edgefleet_preload_models: value }, context);
      } catch (error) {
        thrown = error;
      }
      expect(thrown, JSON.stringify(value)).toBeInstanceOf(ConfigError);
      expect((thrown as ConfigError).key).toBe('edgefleet_preload_models');
      expect((thrown as ConfigError).message).toMatch(/expected a list of \{"url".*each name once/);
    }
  });
});

describe('socket files', () => {
  it('prepareSocketPath: nothing there is fine; a stale socket needs -f; a live one or another file is refused', async () => {
    const path = join(files.root, 'p.sock');
    expect(await prepareSocketPath(path, false)).toEqual({ removedStale: false });

    const server = await listenOn(path);
    for (const force of [false, true]) {
      const error = await prepareSocketPath(path, force).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(StartupError);
      expect((error as StartupError).exitCode).toBe(3);
      expect((error as StartupError).message).toMatch(/a process is already serving on/);
    }
    // A socket whose server is gone without unlinking it: what SIGKILL leaves.
    await new Promise<void>((resolve) => server.close(() => resolve()));
    const stale = join(files.root, 'stale.sock');
    const orphan = await listenOn(stale);
    const { ino } = await lstat(stale);
    await new Promise<void>((resolve) => {
      // Node unlinks a Unix socket on close; keep a hard copy of the inode's name first.
      void import('node:fs/promises').then(async ({ link }) => {
        await link(stale, `${stale}.keep`);
        orphan.close(() => resolve());
      });
    });
    const { rename } = await import('node:fs/promises');
    await rename(`${stale}.keep`, stale);
    expect((await lstat(stale)).ino).toBe(ino);
    const refused = await prepareSocketPath(stale, false).catch((e: unknown) => e);
    expect((refused as StartupError).message).toMatch(
      /already exists, and no process answers on it .*start with -f/,
    );
    expect(await prepareSocketPath(stale, true)).toEqual({ removedStale: true });
    expect(await lstat(stale).catch(() => 'gone')).toBe('gone');

    const file = join(files.root, 'file.sock');
    await writeFile(file, 'x');
    const notSocket = await prepareSocketPath(file, true).catch((e: unknown) => e);
    expect((notSocket as StartupError).message).toMatch(
      /is not a socket \(a regular file\); the agent will not remove it, even with -f/,
    );
    expect((await lstat(file)).isFile()).toBe(true);
  });

  it('bindUnixSocket binds with the mode; removeOwnSocketFile removes only the socket it was given (same inode)', async () => {
    const path = join(files.root, 'own.sock');
    let first!: Server;
    const ino = await bindUnixSocket(path, 0o600, async (bindPath) => {
      first = await listenOn(bindPath);
    });
    expect((await lstat(path)).ino).toBe(ino);
    expect((await lstat(path)).mode & 0o777).toBe(0o600);
    const { link, unlink } = await import('node:fs/promises');
    await link(path, `${path}.old`);
    await unlink(path);
    const second = await listenOn(path); // another agent's socket at the same path now
    await removeOwnSocketFile(path, ino);
    expect((await lstat(path)).ino).not.toBe(ino);
    await removeOwnSocketFile(`${path}.old`, ino);
    expect(await lstat(`${path}.old`).catch(() => 'gone')).toBe('gone');
    await Promise.all([first, second].map((s) => new Promise((resolve) => s.close(resolve))));
  });
});

describe('startAgentDaemon', () => {
  it('serves with the configured socket mode and, after the grace period, cancels what still runs and stops', async () => {
    const socketPath = join(files.root, 'd.sock');
    const configPath = join(files.root, 'd.json');
    const slow = await files.catalogue('slow');
    await writeFile(
      configPath,
      JSON.stringify({
        edgefleet_inference_workers: 1,
        edgefleet_socket_mode: '0600',
        edgefleet_rest_socket_path: '',
        edgefleet_preload_models: [{ url: slow, name: 'slow' }],
      }),
    );
    const daemon = await startDaemon(socketPath, configPath);
    expect(daemon.grpcAddress).toBe(`unix://${socketPath}`);
    expect((await lstat(socketPath)).mode & 0o777).toBe(0o600);
    expect(daemon.registry.list().map((m) => m.name)).toEqual(['slow']);

    const client = newClient(daemon.grpcAddress);
    const request = { handle: 'slow', tensors: wireInputs('slow') };
    // Queue several slow runs on the one worker: more than a 1 ms grace period can finish.
    const calls = Array.from({ length: 4 }, () =>
      callError(callMethod(client as never, 'Predict', request)).catch((e: unknown) => e),
    );
    while (daemon.registry.describe('slow').requests.succeeded === 0 && !(await settledAny(calls))) {
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    await daemon.shutdown(1);
    const outcomes = await Promise.all(calls);
    const cancelled = outcomes.filter(
      (o) => o instanceof Error && (o as grpc.ServiceError).code !== undefined,
    );
    expect(cancelled.length).toBeGreaterThan(0);
    for (const error of cancelled) {
      expect([grpc.status.CANCELLED, grpc.status.UNAVAILABLE, grpc.status.INTERNAL]).toContain(
        (error as grpc.ServiceError).code,
      );
    }
    expect(await lstat(socketPath).catch(() => 'gone')).toBe('gone');
    client.close();
  });
});

describe('startAgentDaemon: the data root', () => {
  it('holds it while running (a second daemon is refused, exit 4) and lets it go on shutdown and on a failed start', async () => {
    const dataRoot = join(files.root, 'held-data');
    const configPath = join(files.root, 'held.json');
    await writeFile(
      configPath,
      JSON.stringify({
        edgefleet_inference_workers: 1,
        edgefleet_rest_socket_path: '',
        sagemaker_edge_local_data_root_path: dataRoot,
      }),
    );
    const daemon = await startDaemon(join(files.root, 'held-1.sock'), configPath);
    const refused = await startDaemon(join(files.root, 'held-2.sock'), configPath).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(StartupError);
    expect(refused).toMatchObject({ exitCode: 4, cause: { folder: dataRoot, holderPid: process.pid } });
    await daemon.shutdown(0);
    // Let go on shutdown: the lock is free for this process's next take.
    DataRootLock.acquire(dataRoot).release();

    // A start that fails after taking the lock (here at the socket: a regular file is there) lets it go too.
    const blocked = join(files.root, 'held-blocked.sock');
    await writeFile(blocked, 'not a socket');
    const failed = await startDaemon(blocked, configPath).catch((e: unknown) => e);
    expect(failed).toMatchObject({ exitCode: 3 });
    DataRootLock.acquire(dataRoot).release();
  });

  it('a capture folder whose lock file cannot be used is a ConfigError naming its key, with the lock’s error as its cause', async () => {
    const captures = join(files.root, 'linked-captures');
    await mkdir(captures);
    await symlink(join(files.root, 'not-a-lock'), join(captures, CAPTURE_FOLDER_LOCK_FILE));
    const configPath = join(files.root, 'linked.json');
    await writeFile(
      configPath,
      JSON.stringify({
        edgefleet_inference_workers: 1,
        edgefleet_rest_socket_path: '',
        sagemaker_edge_local_data_root_path: join(files.root, 'linked-data'),
        sagemaker_edge_core_capture_data_destination: 'Disk',
        sagemaker_edge_core_capture_data_disk_path: captures,
      }),
    );
    const refused = await startDaemon(join(files.root, 'linked.sock'), configPath).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(ConfigError);
    expect(refused).toMatchObject({
      key: 'sagemaker_edge_core_capture_data_disk_path',
      message: expect.stringMatching(
        /^sagemaker_edge_core_capture_data_disk_path: the lock file .* is a symbolic link/,
      ),
    });
    expect((refused as Error).cause).toBeInstanceOf(FolderLockError);
    expect((refused as Error).cause).toMatchObject({ kind: CAPTURE_FOLDER, folder: captures });
  });
});

describe('startAgentDaemon: edgefleet_max_bodies_in_flight_bytes', () => {
  it('warns at start when the budget is smaller than the largest body, which would then be refused every time', async () => {
    const socketPath = join(files.root, 'budget.sock');
    const configPath = join(files.root, 'budget.json');
    await writeFile(
      configPath,
      JSON.stringify({
        edgefleet_inference_workers: 1,
        edgefleet_rest_socket_path: '',
        edgefleet_max_bodies_in_flight_bytes: '16MiB',
      }),
    );
    const lines: string[] = [];
    const logger = pino(
      { level: 'warn' },
      new Writable({
        write(chunk: Buffer, _encoding, done) {
          lines.push(chunk.toString());
          done();
        },
      }),
    );
    const daemon = await startAgentDaemon({
      commandLine: { socketPath, configPath, removeStaleSocket: false, maxMessageBytes: 4 << 20 },
      cwd: files.root,
      logger,
      cpuCount: 2,
      version: 'test',
    });
    await daemon.shutdown(0);
    const warnings = lines.map((line) => (JSON.parse(line) as { msg: string }).msg);
    expect(warnings).toContainEqual(
      expect.stringMatching(
        /^edgefleet_max_bodies_in_flight_bytes \(16777216 bytes\) is smaller than the largest request the agent accepts, a REST body of up to 67108864 bytes/,
      ),
    );
  });
});

describe('startAgentDaemon: without the native addon', () => {
  it("warns once at start that model loads are not checked against the caller's rights", async () => {
    const configPath = join(files.root, 'no-addon.json');
    await writeFile(
      configPath,
      JSON.stringify({ edgefleet_inference_workers: 1, edgefleet_rest_socket_path: '' }),
    );
    const start = async (loadNativeAddon?: () => never) => {
      const lines: { event?: string; msg: string }[] = [];
      const logger = pino(
        { level: 'warn' },
        new Writable({
          write(chunk: Buffer, _encoding, done) {
            lines.push(JSON.parse(chunk.toString()) as { event?: string; msg: string });
            done();
          },
        }),
      );
      const daemon = await startAgentDaemon({
        commandLine: {
          socketPath: join(files.root, 'no-addon.sock'),
          configPath,
          removeStaleSocket: false,
          maxMessageBytes: 4 << 20,
        },
        cwd: files.root,
        logger,
        cpuCount: 2,
        version: 'test',
        ...(loadNativeAddon && { loadNativeAddon }),
      });
      await daemon.shutdown(0);
      return lines.filter((line) => line.event === 'caller_check_off');
    };
    const without = await start(() => {
      throw new Error('the System V shared memory addon is not built: expected /nowhere/addon.node');
    });
    expect(without).toHaveLength(1);
    expect(without[0]!.msg).toMatch(
      /model loads are not checked against the caller's rights: .*take any folder the agent can read from any caller that can reach the sockets \(root, the agent's user and the sockets' group members\)/,
    );
    expect(await start()).toEqual([]);
  });
});

describe('startAgentDaemon: edgefleet_max_responses_queued_bytes', () => {
  it('holds answers a client leaves unread to the key across the doors: past it the connection is closed, counted and logged, and a reading client is answered', async () => {
    const socketPath = join(files.root, 'responses.sock');
    const configPath = join(files.root, 'responses.json');
    await writeFile(
      configPath,
      JSON.stringify({
        edgefleet_inference_workers: 1,
        edgefleet_rest_socket_path: '',
        edgefleet_preload_models: [{ url: await files.catalogue('image-identity'), name: 'image' }],
        edgefleet_max_responses_queued_bytes: '1MiB',
      }),
    );
    const lines: Array<{ msg: string; event?: string }> = [];
    const logger = pino(
      { level: 'warn' },
      new Writable({
        write(chunk: Buffer, _encoding, done) {
          lines.push(JSON.parse(chunk.toString()) as { msg: string; event?: string });
          done();
        },
      }),
    );
    const daemon = await startAgentDaemon({
      commandLine: { socketPath, configPath, removeStaleSocket: false, maxMessageBytes: 4 << 20 },
      cwd: files.root,
      logger,
      cpuCount: 2,
      version: 'test',
    });
    const reader = newClient(daemon.grpcAddress);
    // A raw HTTP/2 client whose window is 0: not a byte of its answers (600 KB each) can leave the agent.
    const nonReader = connectHttp2('http://localhost', {
      createConnection: () => connect(socketPath) as Socket,
      settings: { initialWindowSize: 0 },
    });
    try {
      const request = { handle: 'image', tensors: wireInputs('image-identity') };
      const message = createAgentCodec().encode('PredictRequest', request);
      const prefix = Buffer.alloc(5);
      prefix.writeUInt32BE(message.length, 1);
      const closed = new Promise<void>((resolve) => nonReader.once('close', resolve));
      nonReader.on('error', () => undefined);
      for (let i = 0; i < 2; i++) {
        const stream = nonReader.request({
          ':method': 'POST',
          ':path': '/AWS.SageMaker.Edge.Agent/Predict',
          'content-type': 'application/grpc',
          te: 'trailers',
        });
        stream.on('error', () => undefined);
        stream.end(Buffer.concat([prefix, message]));
      }
      await closed;
      const answer = await callMethod(reader, 'Predict', request);
      expect(answer.tensors[0]?.byteData?.length).toBe(602_112);
      // 1 MiB is below -m (4 MiB): said at start.
      expect(lines.map((line) => line.msg)).toContainEqual(
        expect.stringMatching(
          /^edgefleet_max_responses_queued_bytes \(1048576 bytes\) is smaller than the largest answer/,
        ),
      );
      const metric = await daemon.metrics.registry.getSingleMetricAsString(
        'edgefleet_slow_readers_closed_total',
      );
      expect(metric).toContain('edgefleet_slow_readers_closed_total{door="grpc"} 1');
      expect(lines.filter((line) => line.event === 'slow_reader_closed').map((line) => line.msg)).toEqual([
        expect.stringMatching(
          /^closed a gRPC connection whose client left \d+ bytes of answers unread: .* budget of 1048576 bytes for them \(edgefleet_max_responses_queued_bytes\)/,
        ),
      ]);
    } finally {
      nonReader.destroy();
      reader.close();
      await daemon.shutdown(0);
    }
  });
});

describe('startAgentDaemon: edgefleet_capture_* keys reach the capture service', () => {
  it('with model monitor format and an automatic capture rule set in the file, writes both formats for CaptureData and for Predict', async () => {
    const socketPath = join(files.root, 'c.sock');
    const configPath = join(files.root, 'c.json');
    const dataRoot = join(files.root, 'capture-data');
    await writeFile(
      configPath,
      JSON.stringify({
        edgefleet_inference_workers: 1,
        edgefleet_rest_socket_path: 'none',
        edgefleet_preload_models: [{ url: await files.catalogue('tiny'), name: 'tiny' }],
        sagemaker_edge_local_data_root_path: dataRoot,
        sagemaker_edge_core_capture_data_batch_size: '1',
        sagemaker_edge_db_module_path: 'builtin',
        edgefleet_db_synchronous: 'FULL',
        edgefleet_capture_model_monitor_format: 'true',
        edgefleet_capture_auto: [{ model: 'tiny', sampleRate: '1' }],
      }),
    );
    const daemon = await startDaemon(socketPath, configPath);
    const client = newClient(daemon.grpcAddress);
    try {
      await callMethod(client as never, 'Predict', { handle: 'tiny', tensors: wireInputs('tiny') });
      expect(await callMethod(client as never, 'CaptureData', captureRequest('cap-1'))).toEqual({});
    } finally {
      client.close();
      // Shutdown writes what capture holds.
      await daemon.shutdown();
    }
    const captureRoot = join(dataRoot, 'capture', 'sme-capture');
    const manifests = (await listFiles(captureRoot)).filter((f) => f.endsWith('.jsonl'));
    const edge = manifests.filter((f) => f.startsWith('default/tiny/'));
    const monitor = manifests.filter((f) => f.startsWith('_model-monitor/tiny/default/'));
    const eventIds = async (paths: string[]) => {
      const ids: string[] = [];
      for (const path of paths)
        for (const line of (await readFile(join(captureRoot, path), 'utf8')).split('\n'))
          if (line !== '')
            ids.push((JSON.parse(line) as { eventMetadata: { eventId: string } }).eventMetadata.eventId);
      return ids.sort();
    };
    const expected = [expect.stringMatching(/^auto-/), 'cap-1']; // sorted: "auto-…" < "cap-1"
    expect(await eventIds(edge)).toEqual(expected);
    expect(await eventIds(monitor)).toEqual(expected);
  });
});

async function settledAny(promises: Promise<unknown>[]): Promise<boolean> {
  const marker = Symbol('pending');
  const first = await Promise.race([...promises, Promise.resolve(marker)]);
  return first !== marker;
}
