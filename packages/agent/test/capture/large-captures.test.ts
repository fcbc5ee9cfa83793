import { execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, openSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, open, readdir, rm, stat } from 'node:fs/promises';
import { createServer, get } from 'node:http';
import type { AddressInfo } from 'node:net';
import { basename, dirname, join } from 'node:path';
import { AgentDataType, type Tensor } from '@edgefleet/core';
import SqliteDatabase from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CaptureService, DiskDestination, SqliteCaptureQueue } from '../../src/capture/index.js';
import {
  AgentDatabase,
  agentDatabasePath,
  capturePayloadFolder,
  CaptureQueueRepository,
  migrate,
  NODE_PAYLOAD_FILE_SYSTEM,
} from '../../src/state/index.js';
import { agentErrorOf } from '../support/agent-error.js';
import {
  captureInput,
  captureItem,
  diskRecords,
  readDataRef,
  testSettings,
  useModelRegistry,
} from './helpers.js';

// Captures larger than the inline limit (64 KiB) are written as files beside the database, off the event loop,
// before their rows are committed. Real SQLite, real files, real processes killed with SIGKILL.

const loaded = useModelRegistry('edgefleet-large-capture-', { tiny: 'tiny' });

let work: string;
let database: AgentDatabase | undefined;
let services: CaptureService[] = [];
/** The queue's clock (ms): deferred captures wait for it to pass their next try. */
let clock = 0;
beforeEach(async () => {
  work = await mkdtemp(join(loaded.root, 'case-'));
  clock = 0;
});
afterEach(async () => {
  for (const service of services) await service.close();
  services = [];
  database?.close();
  database = undefined;
});

/** A float tensor of `bytes` bytes of random data (so a reordered or cut payload shows). */
function randomTensor(name: string, bytes: number): { tensor: Tensor; data: Buffer } {
  const data = randomBytes(bytes);
  return {
    tensor: {
      tensorMetadata: { name: Buffer.from(name), dataType: AgentDataType.FLOAT32, shape: [1, bytes / 4] },
      byteData: data,
      data: 'byteData',
    },
    data,
  };
}

async function startService(
  settings = testSettings(work, { batchSize: 10, pushPeriodSeconds: 600 }),
  /** Runs before the service starts, with its queue: what an earlier run left queued. */
  before?: (queue: SqliteCaptureQueue, payloads: string) => Promise<void>,
) {
  database = AgentDatabase.open({ path: agentDatabasePath(join(work, 'data')), walSyncIntervalMs: 0 });
  const queue = new SqliteCaptureQueue({
    repository: database.captureQueue,
    now: () => clock,
    monotonic: () => clock,
  });
  await before?.(queue, capturePayloadFolder(database.path));
  const service = new CaptureService({
    settings,
    models: loaded.registry,
    queue,
    destination: new DiskDestination(settings.diskPath),
  });
  await service.start();
  services.push(service);
  return { service, settings, database, payloads: capturePayloadFolder(database.path) };
}

/** The first input tensor's bytes of each written record (in a side file, or embedded), by capture id. */
async function writtenInputs(diskPath: string): Promise<Map<string, Buffer>> {
  const found = new Map<string, Buffer>();
  for (const { record } of await diskRecords(diskPath)) {
    const input = record.deviceFleetInputs[0] as { 'data-ref'?: string; data?: string };
    found.set(
      record.eventMetadata.eventId as string,
      input['data-ref'] !== undefined
        ? await readDataRef(input['data-ref'])
        : Buffer.from(input.data!, 'base64'),
    );
  }
  return found;
}

describe('a large capture', () => {
  it('is acknowledged once its file and row are durable, delivered intact, and its file removed once written', async () => {
    // Room in the buffer for one 1 MiB capture, not two: file-held captures count as before.
    const { service, settings, database, payloads } = await startService(
      testSettings(work, { batchSize: 10, pushPeriodSeconds: 600, bufferBytes: 1.5 * 1024 * 1024 }),
    );
    const big = randomTensor('x', 1024 * 1024);
    await service.capture(captureInput('big', { inputTensors: [big.tensor] }));
    await service.capture(captureInput('small'));

    // The big one's bytes are in a file the row names; the small one's stay in the row.
    const raw = new SqliteDatabase(database.path, { readonly: true });
    const rows = raw
      .prepare('SELECT capture_id, length(payload) AS inline, payload_file FROM capture_queue ORDER BY seq')
      .all() as { capture_id: string; inline: number; payload_file: string | null }[];
    raw.close();
    expect(rows.map((r) => [r.capture_id, r.inline > 0, r.payload_file !== null])).toEqual([
      ['big', false, true],
      ['small', true, false],
    ]);
    expect(await readdir(payloads)).toEqual([rows[0]!.payload_file]);
    const stored = await open(join(payloads, rows[0]!.payload_file!));
    expect((await stored.stat()).mode & 0o777).toBe(0o600);
    await stored.close();
    expect((await stat(payloads)).mode & 0o777).toBe(0o700);

    const refused = await agentErrorOf(
      service.capture(captureInput('no-room', { inputTensors: [randomTensor('x', 1024 * 1024).tensor] })),
    );
    expect(refused.code).toBe('RESOURCE_EXHAUSTED');

    await service.flush();
    expect(service.status('big').status).toBe('SUCCESS');
    expect((await writtenInputs(settings.diskPath)).get('big')?.equals(big.data)).toBe(true);
    await database.captureQueue.payloadRemovalsDone();
    expect(await readdir(payloads)).toEqual([]);

    // Written, it gave its bytes back: another 1 MiB capture fits now.
    await service.capture(captureInput('after', { inputTensors: [randomTensor('x', 1024 * 1024).tensor] }));
    expect(service.held).toBe(1);
  });

  it('is written while the event loop keeps serving: other captures and requests are answered before it is acknowledged', async () => {
    const { service, settings } = await startService();
    // Every thread of libuv's pool is held in open() of a FIFO with no writer, so the large capture's file write
    // cannot finish until the test lets go: what the event loop does meanwhile is what it does while a slow disk
    // writes. Nothing here needs the pool (SQLite is synchronous, the HTTP server is on 127.0.0.1).
    const threads = Number(process.env.UV_THREADPOOL_SIZE ?? 4);
    const fifos = Array.from({ length: threads }, (_, i) => join(work, `gate-${i}`));
    execFileSync('mkfifo', fifos);
    const held = fifos.map((fifo) => open(fifo, 'r'));
    let released = false;
    const release = async () => {
      if (released) return;
      released = true;
      for (const fifo of fifos) closeSync(openSync(fifo, 'w'));
      for (const handle of held) await (await handle).close();
    };
    const events: string[] = [];
    const big = randomTensor('x', 8 * 1024 * 1024);
    const bigCapture = service
      .capture(captureInput('big', { inputTensors: [big.tensor] }))
      .then(() => events.push('big acknowledged'));
    try {
      await service.capture(captureInput('small'));
      events.push('small acknowledged');
      await new Promise((resolve) => setTimeout(resolve, 1));
      events.push('timer');
      const server = createServer((_, response) => response.end('pong'));
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      const answer = await new Promise<string>((resolve, reject) => {
        get(`http://127.0.0.1:${(server.address() as AddressInfo).port}/`, (response) => {
          let body = '';
          response.on('data', (chunk: Buffer) => (body += chunk.toString()));
          response.on('end', () => resolve(body));
        }).on('error', reject);
      });
      server.close();
      events.push(`http ${answer}`);
      expect(service.status('big').status).toBe('IN_PROGRESS');

      // Let the pool go: the write finishes and the capture is acknowledged.
      await release();
    } finally {
      // A failed assertion above must not leave the pool blocked for the rest of the file.
      await release();
    }
    await bigCapture;
    expect(events).toEqual(['small acknowledged', 'timer', 'http pong', 'big acknowledged']);

    await service.flush();
    const written = await writtenInputs(settings.diskPath);
    expect(written.get('big')?.equals(big.data)).toBe(true);
    expect([...written.keys()].sort()).toEqual(['big', 'small']);
  });
});

/**
 * Runs `script` (an ES module; `state` and `capture` are the source index modules) in a child process, which
 * prints a line for each step it completes; SIGKILLs it once it has printed `until`. Returns the lines.
 */
async function killAfter(script: string, until: string, env: NodeJS.ProcessEnv = {}): Promise<string[]> {
  const state = new URL('../../src/state/index.ts', import.meta.url).pathname;
  const capture = new URL('../../src/capture/index.ts', import.meta.url).pathname;
  const source = `
    import * as state from ${JSON.stringify(state)};
    import * as capture from ${JSON.stringify(capture)};
    const say = (line) => process.stdout.write(line + '\\n');
    setInterval(() => {}, 60_000);
    ${script}
  `;
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', source], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...env },
  });
  const lines: string[] = [];
  let buffered = '';
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  await new Promise<void>((resolve, reject) => {
    child.on('exit', () => reject(new Error(`the child exited before "${until}": ${stderr}`)));
    child.stdout.on('data', (chunk: Buffer) => {
      buffered += chunk.toString();
      const complete = buffered.split('\n');
      buffered = complete.pop()!;
      lines.push(...complete);
      if (lines.includes(until)) {
        child.removeAllListeners('exit');
        child.on('exit', () => resolve());
        child.kill('SIGKILL');
      }
    });
  });
  return lines;
}

/** A capture item of `bytes` bytes of one input tensor, filled from `seed`. */
function itemScript(id: string, bytes: number, seed: number): string {
  return `{
    captureId: ${JSON.stringify(id)}, model: 'm', modelVersion: '1', inferenceTime: 1, receivedAt: 1, source: 'api',
    inputTensors: [{ name: 'x', dataType: 'FLOAT32', shape: [1, ${bytes / 4}],
      data: Buffer.from(Array.from({ length: ${bytes} }, (_, i) => (i * 31 + ${seed}) % 251)) }],
    outputTensors: [], inputs: [], outputs: [],
  }`;
}

function expectedBytes(bytes: number, seed: number): Buffer {
  return Buffer.from(Array.from({ length: bytes }, (_, i) => (i * 31 + seed) % 251));
}

describe('a large capture whose file is gone', () => {
  it('is marked FAILURE when its batch is formed, and gives back its place and bytes in the buffer', async () => {
    const { service, settings, payloads } = await startService(
      testSettings(work, { batchSize: 10, pushPeriodSeconds: 600, bufferBytes: 1.5 * 1024 * 1024 }),
    );
    await service.capture(captureInput('lost', { inputTensors: [randomTensor('x', 1024 * 1024).tensor] }));
    await service.capture(captureInput('kept'));
    // Removed behind the agent's back (a user cleaning the data folder).
    for (const name of await readdir(payloads)) await rm(join(payloads, name));
    await service.flush();
    expect(service.status('lost')).toMatchObject({
      status: 'FAILURE',
      detail: expect.stringMatching(
        /could not be read back: its payload file [0-9a-f]{32}\.payload is gone \(ENOENT\)/,
      ),
    });
    expect(service.status('kept').status).toBe('SUCCESS');
    expect([...(await writtenInputs(settings.diskPath)).keys()]).toEqual(['kept']);
    expect(service.held).toBe(0);
    await service.capture(captureInput('fits', { inputTensors: [randomTensor('x', 1024 * 1024).tensor] }));
  });
});

describe('SIGKILL around a large capture (real processes)', () => {
  it('after the row: the capture is kept intact; between the file and the row: the file is removed at start', async () => {
    const path = agentDatabasePath(join(work, 'data'));
    const lines = await killAfter(
      `
      const db = state.AgentDatabase.open({ path: ${JSON.stringify(path)}, walSyncIntervalMs: 0 });
      const queue = new capture.SqliteCaptureQueue({ repository: db.captureQueue });
      await queue.enqueue(${itemScript('acknowledged', 512 * 1024, 3)});
      say('acknowledged');
      // The first half of another enqueue: its file is durable, its row never inserted.
      say('stored ' + (await db.captureQueue.storePayload([Buffer.alloc(256 * 1024, 9)])));
      say('killable');
      `,
      'killable',
    );
    const orphan = lines.find((line) => line.startsWith('stored '))!.slice('stored '.length);
    const folder = capturePayloadFolder(path);
    expect((await readdir(folder)).sort()).toHaveLength(2);
    expect(await readdir(folder)).toContain(orphan);

    database = AgentDatabase.open({ path, walSyncIntervalMs: 0 });
    const queue = new SqliteCaptureQueue({ repository: database.captureQueue });
    const recovered = await queue.recover();
    expect(recovered).toMatchObject({ pending: 1, orphansRemoved: 1 });
    expect(await readdir(folder)).not.toContain(orphan);
    expect(await readdir(folder)).toHaveLength(1);

    const { items, damaged } = await queue.formBatch('after-restart', 10);
    expect(damaged).toEqual([]);
    expect(items.map((item) => item.captureId)).toEqual(['acknowledged']);
    expect(items[0]!.inputTensors[0]!.data.equals(expectedBytes(512 * 1024, 3))).toBe(true);
    queue.completeBatch('after-restart', 'SUCCESS');
    await queue.close();
    expect(await readdir(folder)).toEqual([]);
    expect(queue.status('acknowledged')?.status).toBe('SUCCESS');
  });

  it('in the middle of the write: the temporary file is removed at start and nothing is queued', async () => {
    const path = agentDatabasePath(join(work, 'data'));
    const gate = join(work, 'gate');
    execFileSync('mkfifo', [gate]);
    // One thread in libuv's pool: once the temporary file exists, a FIFO opened with no writer takes that thread,
    // so the write cannot get to its rename before the kill.
    await killAfter(
      `
      const { readdirSync } = await import('node:fs');
      const { open } = await import('node:fs/promises');
      const db = state.AgentDatabase.open({ path: ${JSON.stringify(path)}, walSyncIntervalMs: 0 });
      const queue = new capture.SqliteCaptureQueue({ repository: db.captureQueue });
      void queue.enqueue(${itemScript('never-acknowledged', 1024 * 1024, 5)}).then(() => say('acknowledged'));
      const folder = state.capturePayloadFolder(${JSON.stringify(path)});
      const writing = () => { try { return readdirSync(folder).some((n) => n.startsWith('.tmp-')); } catch { return false; } };
      while (!writing()) await new Promise((resolve) => setImmediate(resolve));
      void open(${JSON.stringify(gate)}, 'r');
      say('writing');
      `,
      'writing',
      { UV_THREADPOOL_SIZE: '1' },
    );
    const folder = capturePayloadFolder(path);
    const left = await readdir(folder);
    expect(left).toHaveLength(1);
    expect(left[0]).toMatch(/^\.tmp-/);

    database = AgentDatabase.open({ path, walSyncIntervalMs: 0 });
    const queue = new SqliteCaptureQueue({ repository: database.captureQueue });
    expect(await queue.recover()).toEqual({
      pending: 0,
      pendingBytes: new Map(),
      heldAside: new Map(),
      openBatches: [],
      orphansRemoved: 1,
      problems: [],
    });
    expect(await readdir(folder)).toEqual([]);
    expect(queue.status('never-acknowledged')).toBeUndefined();
    await queue.close();
  });
});

/**
 * Runs `script` like killAfter, to its end, with at most `files` open descriptors (ulimit -n); returns the lines
 * it printed.
 */
async function runLimited(script: string, files: number): Promise<string[]> {
  const state = new URL('../../src/state/index.ts', import.meta.url).pathname;
  const capture = new URL('../../src/capture/index.ts', import.meta.url).pathname;
  const source = `
    import * as state from ${JSON.stringify(state)};
    import * as capture from ${JSON.stringify(capture)};
    const say = (line) => process.stdout.write(line + '\\n');
    ${script}
  `;
  const child = spawn(
    'sh',
    [
      '-c',
      `ulimit -n ${files} && exec "$@"`,
      'sh',
      process.execPath,
      '--import',
      'tsx',
      '--input-type=module',
      '-e',
      source,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
  if (code !== 0) throw new Error(`the child exited with ${code}: ${stderr}`);
  return stdout.split('\n').filter((line) => line !== '');
}

describe('a large capture whose file cannot be read for now', () => {
  it('out of file descriptors (EMFILE): stays queued, in its place, and is delivered intact once they are back', async () => {
    const path = agentDatabasePath(join(work, 'data'));
    const lines = await runLimited(
      `
      const { openSync, closeSync } = await import('node:fs');
      const db = state.AgentDatabase.open({ path: ${JSON.stringify(path)}, walSyncIntervalMs: 0 });
      // Tried again at once (no delay between tries).
      const queue = new capture.SqliteCaptureQueue({
        repository: db.captureQueue,
        deferral: { firstDelayMs: 0, maxDelayMs: 0, maxTries: 15 },
      });
      await queue.enqueue(${itemScript('acknowledged', 256 * 1024, 4)});
      // Every descriptor the limit allows is taken, as by a burst of connections.
      const taken = [];
      try { for (;;) taken.push(openSync('/dev/null', 'r')); } catch (error) { if (error.code !== 'EMFILE') throw error; }
      const short = await queue.formBatch('short', 10);
      for (const fd of taken) closeSync(fd);
      say(JSON.stringify({
        items: short.items.length,
        damaged: short.damaged,
        deferred: short.deferred.map((d) => [d.captureId, d.error.code]),
        status: queue.status('acknowledged').status,
      }));
      const later = await queue.formBatch('later', 10);
      say(JSON.stringify({
        items: later.items.map((item) => item.captureId),
        bytes: later.items[0].inputTensors[0].data.toString('base64'),
      }));
      queue.completeBatch('later', 'SUCCESS');
      await queue.close();
      say(queue.status('acknowledged').status);
      db.close();
      `,
      256,
    );
    expect(JSON.parse(lines[0]!)).toEqual({
      items: 0,
      damaged: [],
      deferred: [['acknowledged', 'EMFILE']],
      status: 'IN_PROGRESS',
    });
    const later = JSON.parse(lines[1]!) as { items: string[]; bytes: string };
    expect(later.items).toEqual(['acknowledged']);
    expect(Buffer.from(later.bytes, 'base64').equals(expectedBytes(256 * 1024, 4))).toBe(true);
    expect(lines[2]).toBe('SUCCESS');
  });

  it('in an unsafe folder: the service keeps it waiting (not FAILURE) and writes it once the folder is fixed', async () => {
    const { service, settings, payloads } = await startService();
    const big = randomTensor('x', 1024 * 1024);
    await service.capture(captureInput('big', { inputTensors: [big.tensor] }));
    await chmod(payloads, 0o777);
    await service.flush();
    expect(service.status('big').status).toBe('IN_PROGRESS');
    expect(service.held).toBe(1);

    await chmod(payloads, 0o700);
    // At its next try (1 s after the failed read).
    clock += 1000;
    await service.flush();
    expect(service.status('big').status).toBe('SUCCESS');
    expect((await writtenInputs(settings.diskPath)).get('big')?.equals(big.data)).toBe(true);
    expect(service.held).toBe(0);
  });
});

describe('a full batch of captures that cannot be read for now, at the head of the queue', () => {
  it('does not hold back the captures behind it: they are written; it is written once it can be read', async () => {
    const bigs = [randomTensor('x', 256 * 1024), randomTensor('x', 256 * 1024)];
    const { service, settings, payloads } = await startService(
      testSettings(work, { batchSize: 2, pushPeriodSeconds: 600 }),
      async (queue, folder) => {
        for (const [i, big] of bigs.entries()) await queue.enqueue(captureItem(`big${i}`, big.data));
        // Lasting until an admin fixes it: the folder made group-writable.
        await chmod(folder, 0o770);
      },
    );
    // The service's first batch (at start: two waiting) could not read either.
    await service.whenIdle();
    // The deferred ones, passed over until their next try, do not count towards batchSize: a capture alone
    // waits (no batch of one per arrival); the second makes a full batch, written at once (not at the push
    // period, 600 s away).
    for (let round = 0; round < 2; round++) {
      const [first, second] = [`small${2 * round}`, `small${2 * round + 1}`];
      await service.capture(captureInput(first, { inputTensors: [randomTensor('x', 64).tensor] }));
      await service.whenIdle();
      expect(service.status(first).status).toBe('IN_PROGRESS');
      await service.capture(captureInput(second, { inputTensors: [randomTensor('x', 64).tensor] }));
      await service.whenIdle();
      expect(service.status(first).status).toBe('SUCCESS');
      expect(service.status(second).status).toBe('SUCCESS');
    }
    expect(service.status('big0').status).toBe('IN_PROGRESS');
    expect(service.held).toBe(2);

    await chmod(payloads, 0o700);
    clock += 1000;
    await service.flush();
    expect(service.status('big0').status).toBe('SUCCESS');
    expect(service.status('big1').status).toBe('SUCCESS');
    const written = await writtenInputs(settings.diskPath);
    expect(written.get('big1')?.equals(bigs[1]!.data)).toBe(true);
    expect(service.held).toBe(0);
  });
});

/** The name the Disk destination gives batch `batchId`'s records of model 'tiny' (captureItem's hour). */
function recordsFileOf(batchId: string): string {
  const name = createHash('sha256').update(`${batchId}\0tiny\x001970/01/01/00`).digest('hex').slice(0, 32);
  return `${name}.jsonl`;
}

/** The file each written capture's record is in, by capture id. */
async function recordFiles(diskPath: string): Promise<Map<string, string>> {
  const found = new Map<string, string>();
  for (const { file, record } of await diskRecords(diskPath))
    found.set(record.eventMetadata.eventId as string, basename(file));
  return found;
}

describe('an interrupted batch that cannot be read whole at start (F1, G1)', () => {
  it('is set aside whole, still held, and written under its own id once it can be read, without a restart', async () => {
    const big = randomTensor('x', 256 * 1024);
    const { service, settings, payloads } = await startService(undefined, async (queue, folder) => {
      await queue.enqueue(captureItem('big', big.data));
      await queue.enqueue(captureItem('small', Buffer.alloc(64)));
      await queue.formBatch('interrupted', 10); // formed (maybe written), then killed before completeBatch
      await chmod(folder, 0o770);
    });
    expect(service.held).toBe(2);
    // An unsafe folder is not counted against the capture: tried for hours (the default's 15 tries), never given up.
    for (let hour = 0; hour < 20; hour++) {
      clock += 3_600_000;
      await service.flush();
    }
    expect(service.status('big').status).toBe('IN_PROGRESS');
    expect(await writtenInputs(settings.diskPath)).toEqual(new Map());
    expect(service.held).toBe(2);

    await chmod(payloads, 0o700); // fixed while the agent runs
    clock += 600_000; // its next try (the delay's cap)
    await service.flush();
    expect(service.status('big').status).toBe('SUCCESS');
    expect(service.status('small').status).toBe('SUCCESS');
    expect((await writtenInputs(settings.diskPath)).get('big')?.equals(big.data)).toBe(true);
    // Under its own id: the records replace what it may have written before the kill.
    expect(await recordFiles(settings.diskPath)).toEqual(
      new Map([
        ['big', recordsFileOf('interrupted')],
        ['small', recordsFileOf('interrupted')],
      ]),
    );
    expect(service.held).toBe(0);
  });

  it('with a capture that cannot be read for a lasting reason (EIO): tried again while the agent runs, then given up (FAILURE), the rest written under its id and the bytes given back', async () => {
    const dataPath = agentDatabasePath(join(work, 'data'));
    await mkdir(dirname(dataPath), { recursive: true });
    const db = new SqliteDatabase(dataPath);
    db.pragma('journal_mode = WAL');
    migrate(db);
    const failing = { reads: false, tried: 0 };
    const repository = new CaptureQueueRepository(db, {
      payloadDir: capturePayloadFolder(dataPath),
      fileSystem: {
        ...NODE_PAYLOAD_FILE_SYSTEM,
        // A bad SD-card block: every read of a payload file fails.
        open: (p, flags, mode) => {
          if (!failing.reads || typeof flags !== 'number')
            return NODE_PAYLOAD_FILE_SYSTEM.open(p, flags, mode);
          failing.tried++;
          return Promise.reject(Object.assign(new Error(`EIO: i/o error, open '${p}'`), { code: 'EIO' }));
        },
      },
    });
    const settings = testSettings(work, { batchSize: 10, pushPeriodSeconds: 600, bufferBytes: 300 * 1024 });
    const deferral = { firstDelayMs: 1000, maxDelayMs: 4000, maxTries: 3 };
    try {
      const before = new SqliteCaptureQueue({ repository, now: () => clock, monotonic: () => clock });
      await before.enqueue(captureItem('bad', randomBytes(256 * 1024)));
      await before.enqueue(captureItem('good', Buffer.alloc(64, 7))); // inline: read from its row
      await before.formBatch('interrupted', 10); // then killed before completeBatch
      await before.close();

      failing.reads = true;
      const queue = new SqliteCaptureQueue({
        repository,
        now: () => clock,
        monotonic: () => clock,
        deferral,
      });
      const service = new CaptureService({
        settings,
        models: loaded.registry,
        queue,
        destination: new DiskDestination(settings.diskPath),
      });
      await service.start(); // the first try
      services.push(service);
      expect(failing.tried).toBe(1);
      expect(service.held).toBe(2);
      const noRoom = () =>
        service.capture(captureInput('later', { inputTensors: [randomTensor('x', 64 * 1024).tensor] }));
      expect((await agentErrorOf(noRoom())).code).toBe('RESOURCE_EXHAUSTED');

      clock += 1000; // the second try, during the run
      await service.flush();
      expect(failing.tried).toBe(2);
      expect(service.status('bad').status).toBe('IN_PROGRESS');
      expect(service.status('good').status).toBe('IN_PROGRESS');

      clock += 2000; // the third: the last
      await service.flush();
      expect(failing.tried).toBe(3);
      expect(service.status('bad')).toMatchObject({
        status: 'FAILURE',
        detail: expect.stringMatching(/could not be read back in 3 tries \(the last: EIO: i\/o error/),
      });
      expect(service.status('good').status).toBe('SUCCESS');
      expect(await recordFiles(settings.diskPath)).toEqual(new Map([['good', recordsFileOf('interrupted')]]));
      expect(service.held).toBe(0);
      // Its bytes are given back.
      await noRoom();
      await service.close();
    } finally {
      db.close();
    }
  });
});

describe('the buffer byte cap after a restart', () => {
  it('counts the captures still queued, so the payload folder holds no more than the cap across restarts', async () => {
    const path = agentDatabasePath(join(work, 'data'));
    await killAfter(
      `
      const db = state.AgentDatabase.open({ path: ${JSON.stringify(path)}, walSyncIntervalMs: 0 });
      const queue = new capture.SqliteCaptureQueue({ repository: db.captureQueue });
      await queue.enqueue(${itemScript('queued', 1024 * 1024, 2)});
      say('acknowledged');
      `,
      'acknowledged',
    );
    const { service } = await startService(
      testSettings(work, { batchSize: 10, pushPeriodSeconds: 600, bufferBytes: 1.5 * 1024 * 1024 }),
    );
    expect(service.held).toBe(1);
    const refused = await agentErrorOf(
      service.capture(captureInput('no-room', { inputTensors: [randomTensor('x', 1024 * 1024).tensor] })),
    );
    expect(refused.code).toBe('RESOURCE_EXHAUSTED');
    expect(refused.message).toMatch(/1048576 bytes of captures waiting/);

    await service.flush();
    expect(service.status('queued').status).toBe('SUCCESS');
    // Written, it gave its bytes back.
    await service.capture(captureInput('fits', { inputTensors: [randomTensor('x', 1024 * 1024).tensor] }));
  });
});
