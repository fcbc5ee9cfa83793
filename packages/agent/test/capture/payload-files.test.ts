import { execFileSync } from 'node:child_process';
import {
  chmod,
  chown,
  lstat,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  rm,
  symlink,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import SqliteDatabase from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SqliteCaptureQueue, type CaptureItem } from '../../src/capture/index.js';
import {
  AgentDatabase,
  agentDatabasePath,
  capturePayloadFolder,
  CaptureQueueRepository,
  migrate,
  NODE_PAYLOAD_FILE_SYSTEM,
  type PayloadFileSystem,
} from '../../src/state/index.js';
import { formBatch } from '../state/form-batch.js';
import { captureItem } from './helpers.js';

// The payload files of large captures, against what can be found in their folder: files, links, FIFOs and folders
// put there by someone else, a folder that is a link or that others can write, files that cannot be read now.
// Real files, real SQLite.

let root: string;
let path: string;
let folder: string;
let database: AgentDatabase | undefined;
const opened: SqliteDatabase.Database[] = [];
/** The queues' clock (ms): deferred captures wait for it to pass their next try. */
let clock = 0;
beforeEach(async () => {
  clock = 0;
  root = await mkdtemp(join(tmpdir(), 'edgefleet-payload-files-'));
  path = agentDatabasePath(join(root, 'data'));
  folder = capturePayloadFolder(path);
});
afterEach(async () => {
  database?.close();
  database = undefined;
  for (const db of opened.splice(0)) db.close();
  await rm(root, { recursive: true, force: true });
});

function open(
  options: { busyTimeoutMs?: number } = {},
  queueOptions: Partial<ConstructorParameters<typeof SqliteCaptureQueue>[0]> = {},
): {
  database: AgentDatabase;
  queue: SqliteCaptureQueue;
  damaged: string[];
} {
  database?.close();
  database = AgentDatabase.open({ path, walSyncIntervalMs: 0, ...options });
  const damaged: string[] = [];
  const queue = new SqliteCaptureQueue({
    repository: database.captureQueue,
    onDamaged: (captureId) => damaged.push(captureId),
    now: () => clock,
    monotonic: () => clock,
    ...queueOptions,
  });
  return { database, queue, damaged };
}

/** A capture of one input tensor of `bytes` bytes, all `fill`. */
function item(captureId: string, bytes: number, fill = 1): CaptureItem {
  return captureItem(captureId, Buffer.alloc(bytes, fill), 'm');
}

/** The payload file each queued capture's row names (null: its bytes are in the row). */
function payloadFiles(): Map<string, string | null> {
  const raw = new SqliteDatabase(path, { readonly: true });
  opened.push(raw);
  const rows = raw.prepare('SELECT capture_id, payload_file FROM capture_queue').all() as {
    capture_id: string;
    payload_file: string | null;
  }[];
  return new Map(rows.map((row) => [row.capture_id, row.payload_file]));
}

describe('a queued capture whose payload file was replaced', () => {
  const secret = Buffer.alloc(256 * 1024, 0x53);
  const cases: [string, (file: string) => Promise<void>, RegExp][] = [
    [
      'by a symbolic link to another file of the same size',
      async (file) => {
        await writeFile(join(root, 'secret'), secret);
        await symlink(join(root, 'secret'), file);
      },
      /was replaced by a symbolic link \(not followed\)/,
    ],
    ['by a FIFO', async (file) => void execFileSync('mkfifo', [file]), /is not a regular file/],
    ['by a folder', async (file) => mkdir(file), /is not a regular file/],
    [
      'by a longer file',
      async (file) => writeFile(file, Buffer.alloc(512 * 1024, 7)),
      /holds 524288 bytes; its row names 262144/,
    ],
  ];
  it.each(cases)(
    '%s: is marked FAILURE, and nothing else is read or delivered',
    async (_, replace, reason) => {
      const { queue, damaged } = open();
      await queue.enqueue(item('replaced', 256 * 1024));
      await queue.enqueue(item('kept', 100));
      const file = join(folder, payloadFiles().get('replaced')!);
      await rm(file);
      await replace(file);

      const formed = await queue.formBatch('b', 10);
      expect(formed.items.map((i) => i.captureId)).toEqual(['kept']);
      expect(formed.damaged).toEqual(['replaced']);
      expect(formed.deferred).toEqual([]);
      expect(damaged).toEqual(['replaced']);
      expect(queue.status('replaced')).toMatchObject({
        status: 'FAILURE',
        detail: expect.stringMatching(reason),
      });
      queue.completeBatch('b', 'SUCCESS');
      await queue.close();
    },
  );
});

describe('a payload file that cannot be read now', () => {
  it('leaves its capture queued, in its place, while the folder is unsafe; it is delivered once fixed', async () => {
    const { queue } = open();
    await queue.enqueue(item('first', 256 * 1024, 3));
    await queue.enqueue(item('second', 100));
    // Group- and world-writable: a file in it may not be the agent's, so nothing in it is read.
    await chmod(folder, 0o777);

    const held = await queue.formBatch('b1', 10);
    expect(held.items.map((i) => i.captureId)).toEqual(['second']);
    expect(held.damaged).toEqual([]);
    expect(held.deferred.map((d) => d.captureId)).toEqual(['first']);
    expect(held.deferred[0]!.error.message).toMatch(/writable by its group or others \(mode 777\)/);
    expect(queue.status('first')?.status).toBe('IN_PROGRESS');
    queue.completeBatch('b1', 'SUCCESS');

    await chmod(folder, 0o700);
    // Passed over until its next try (1 s after the first failed read).
    expect(await queue.formBatch('b2', 10)).toMatchObject({ items: [], deferred: [], untaken: 10 });
    clock += 1000;
    const later = await queue.formBatch('b2', 10);
    expect(later.items.map((i) => i.captureId)).toEqual(['first']);
    expect(later.items[0]!.inputTensors[0]!.data.equals(Buffer.alloc(256 * 1024, 3))).toBe(true);
    queue.completeBatch('b2', 'SUCCESS');
    await queue.close();
    expect(queue.status('first')?.status).toBe('SUCCESS');
    expect(await readdir(folder)).toEqual([]);
  });
});

describe('the start-up sweep of the payload folder', () => {
  it("removes only the agent's own leftover names (a leftover link, never its target), and starts whatever it finds", async () => {
    const { queue } = open();
    await queue.enqueue(item('queued', 256 * 1024));
    const kept = payloadFiles().get('queued')!;
    const hex = (c: string) => c.repeat(32);
    await writeFile(join(root, 'target'), 'not the agent’s');
    await writeFile(join(folder, `${hex('a')}.payload`), 'orphan');
    await writeFile(join(folder, `.tmp-${hex('b')}.payload`), 'interrupted write');
    await symlink(join(root, 'target'), join(folder, `${hex('c')}.payload`));
    // Not the agent's: left alone.
    await writeFile(join(folder, 'notes.txt'), 'a user file');
    await mkdir(join(folder, 'lost+found'));
    await mkdir(join(folder, `${hex('d')}.payload`));
    await queue.close();

    const again = open();
    const recovered = await again.queue.recover();
    expect(recovered).toMatchObject({ pending: 1, orphansRemoved: 3, problems: [] });
    expect((await readdir(folder)).sort()).toEqual(
      [kept, 'lost+found', 'notes.txt', `${hex('d')}.payload`].sort(),
    );
    expect(await readFile(join(root, 'target'), 'utf8')).toBe('not the agent’s');
    await again.queue.close();
  });

  it('does not use a folder that is a symbolic link: nothing in its target is removed; large captures stay inline', async () => {
    const elsewhere = join(root, 'models');
    await mkdir(elsewhere);
    await writeFile(join(elsewhere, 'model.onnx'), 'weights');
    await writeFile(join(elsewhere, `${'e'.repeat(32)}.payload`), 'looks like a leftover');
    await mkdir(dirname(folder), { recursive: true });
    await symlink(elsewhere, folder);

    const { queue } = open();
    const recovered = await queue.recover();
    expect(recovered.orphansRemoved).toBe(0);
    expect(recovered.problems).toEqual([
      expect.stringMatching(/not swept: .* is a symbolic link; expected a directory/),
    ]);
    expect((await readdir(elsewhere)).sort()).toEqual([`${'e'.repeat(32)}.payload`, 'model.onnx']);

    await queue.enqueue(item('large', 256 * 1024, 9));
    expect(payloadFiles().get('large')).toBeNull();
    const formed = await queue.formBatch('b', 10);
    expect(formed.items[0]!.inputTensors[0]!.data.equals(Buffer.alloc(256 * 1024, 9))).toBe(true);
    queue.completeBatch('b', 'SUCCESS');
    await queue.close();
    expect((await lstat(folder)).isSymbolicLink()).toBe(true);
  });

  // Only root can give the folder away.
  it.skipIf(process.geteuid?.() !== 0)('does not use a folder another user owns', async () => {
    await mkdir(folder, { recursive: true, mode: 0o700 });
    await chown(folder, 65534, 65534);
    const { queue } = open();
    expect((await queue.recover()).problems).toEqual([expect.stringMatching(/is owned by uid 65534/)]);
    await queue.enqueue(item('large', 256 * 1024));
    expect(payloadFiles().get('large')).toBeNull();
    await queue.close();
  });
});

/** A queue repository over a fresh database whose payload files go through `fileSystem`. */
async function repositoryWith(
  fileSystem: PayloadFileSystem,
  options: { busyTimeoutMs?: number } = {},
): Promise<CaptureQueueRepository> {
  await mkdir(dirname(path), { recursive: true });
  const db = new SqliteDatabase(path, {
    ...(options.busyTimeoutMs !== undefined && { timeout: options.busyTimeoutMs }),
  });
  opened.push(db);
  db.pragma('journal_mode = WAL');
  migrate(db);
  return new CaptureQueueRepository(db, { payloadDir: folder, fileSystem });
}

/**
 * A seam that records the folder and file steps in `steps` (paths relative to the data root, ids as N);
 * `beforeRootSync` runs before each fsync of the data root (to delay or fail it).
 */
function recordingFileSystem(
  steps: string[],
  hooks: { beforeRootSync?: () => Promise<void> } = {},
): PayloadFileSystem {
  const dataRoot = dirname(path);
  const label = (p: string) => relative(dataRoot, p).replace(/[0-9a-f]{32}/, 'N') || '.';
  return {
    ...NODE_PAYLOAD_FILE_SYSTEM,
    open: async (p, flags, mode) => {
      const handle = await NODE_PAYLOAD_FILE_SYSTEM.open(p, flags, mode);
      if (flags === 'wx') steps.push(`create ${label(p)}`);
      return handle;
    },
    fsync: async (handle, p) => {
      if (p === dataRoot && hooks.beforeRootSync) {
        try {
          await hooks.beforeRootSync();
        } catch (error) {
          steps.push(`fsync . failed`);
          throw error;
        }
      }
      await NODE_PAYLOAD_FILE_SYSTEM.fsync(handle, p);
      steps.push(`fsync ${label(p)}`);
    },
    rename: async (from, to) => {
      await NODE_PAYLOAD_FILE_SYSTEM.rename(from, to);
      steps.push(`rename ${label(from)} ${label(to)}`);
    },
    rm: async (p) => {
      await NODE_PAYLOAD_FILE_SYSTEM.rm(p);
      steps.push(`remove ${label(p)}`);
    },
    mkdir: async (p, mode) => {
      await NODE_PAYLOAD_FILE_SYSTEM.mkdir(p, mode);
      steps.push(`mkdir ${label(p)}`);
    },
    chmod: async (p, mode) => {
      await NODE_PAYLOAD_FILE_SYSTEM.chmod(p, mode);
      steps.push(`chmod ${label(p)} ${mode.toString(8)}`);
    },
  };
}

describe('payload writes at once', () => {
  it('are at most two, so they leave libuv threads and descriptors to the rest of the agent; all complete', async () => {
    let writing = 0;
    let most = 0;
    const fileSystem: PayloadFileSystem = {
      ...NODE_PAYLOAD_FILE_SYSTEM,
      open: async (p, flags, mode) => {
        const handle = await NODE_PAYLOAD_FILE_SYSTEM.open(p, flags, mode);
        if (flags === 'wx') most = Math.max(most, ++writing);
        return handle;
      },
      rename: async (from, to) => {
        await NODE_PAYLOAD_FILE_SYSTEM.rename(from, to);
        writing--;
      },
    };
    const repository = await repositoryWith(fileSystem);
    const names = await Promise.all(
      Array.from({ length: 6 }, (_, i) => repository.storePayload([Buffer.alloc(100_000, i)])),
    );
    expect(most).toBe(2);
    expect((await readdir(folder)).sort()).toEqual([...names].sort());
  });
});

describe('the order of writes, fsyncs and removals (recorded through the file-system seam)', () => {
  it('makes the file, its name and a new folder durable before a row names it, and removes it after the WAL fsync', async () => {
    const steps: string[] = [];
    const repository = await repositoryWith(recordingFileSystem(steps));
    const name = await repository.storePayload([Buffer.alloc(1000, 1)]);
    steps.push('stored');
    repository.enqueue([
      { captureId: 'c', model: 'm', meta: '{}', payload: Buffer.alloc(0), payloadFile: name, enqueuedAt: 1 },
    ]);
    steps.push('row committed');
    formBatch(repository, 'b', 10);
    repository.completeBatch('b', 'SUCCESS', 2);
    steps.push('row deleted');
    await repository.payloadRemovalsDone();
    expect(steps).toEqual([
      'mkdir agent.db-payloads',
      'chmod agent.db-payloads 700',
      'fsync .',
      'create agent.db-payloads/.tmp-N.payload',
      'fsync agent.db-payloads/.tmp-N.payload',
      'rename agent.db-payloads/.tmp-N.payload agent.db-payloads/N.payload',
      'fsync agent.db-payloads',
      'stored',
      'row committed',
      'row deleted',
      'fsync agent.db-wal',
      'remove agent.db-payloads/N.payload',
    ]);
  });
});

/** A seam that counts the payload files open at once (`most`: the peak), of the opens `counted` picks. */
function countingFileSystem(counted: (flags: Parameters<PayloadFileSystem['open']>[1]) => boolean) {
  const counts = { most: 0, fileSystem: NODE_PAYLOAD_FILE_SYSTEM };
  let busy = 0;
  counts.fileSystem = {
    ...NODE_PAYLOAD_FILE_SYSTEM,
    open: async (p, flags, mode) => {
      const handle = await NODE_PAYLOAD_FILE_SYSTEM.open(p, flags, mode);
      if (counted(flags)) {
        counts.most = Math.max(counts.most, ++busy);
        const close = handle.close.bind(handle);
        handle.close = () => {
          busy--;
          return close();
        };
      }
      return handle;
    },
  };
  return counts;
}

describe('payload reads and writes at once (N2)', () => {
  it('are at most two together, so captures arriving while a batch is read back leave libuv threads free', async () => {
    const counting = countingFileSystem(() => true);
    const queue = new SqliteCaptureQueue({ repository: await repositoryWith(counting.fileSystem) });
    await Promise.all(Array.from({ length: 4 }, (_, i) => queue.enqueue(item(`old${i}`, 100_000, i))));
    counting.most = 0;
    const forming = queue.formBatch('b', 4);
    const arriving = Array.from({ length: 4 }, (_, i) => queue.enqueue(item(`new${i}`, 100_000, i)));
    const formed = await forming;
    await Promise.all(arriving);
    expect(formed.items.map((i) => i.captureId).sort()).toEqual(['old0', 'old1', 'old2', 'old3']);
    expect(counting.most).toBe(2);
    queue.completeBatch('b', 'SUCCESS');
    await queue.close();
  });
});

describe('payload reads at once', () => {
  it('are at most two, however many captures a batch reads back; all are delivered', async () => {
    // Reads only (opened with numeric flags).
    const counting = countingFileSystem((flags) => typeof flags === 'number');
    const queue = new SqliteCaptureQueue({ repository: await repositoryWith(counting.fileSystem) });
    await Promise.all(Array.from({ length: 6 }, (_, i) => queue.enqueue(item(`c${i}`, 100_000, i))));
    const formed = await queue.formBatch('b', 10);
    expect(formed.items.map((i) => i.captureId).sort()).toEqual(['c0', 'c1', 'c2', 'c3', 'c4', 'c5']);
    expect(counting.most).toBe(2);
    queue.completeBatch('b', 'SUCCESS');
    await queue.close();
  });
});

describe('the payload folder made durable (C1: no row commits before the data root fsync)', () => {
  function recording(beforeRootSync: () => Promise<void>): {
    steps: string[];
    fileSystem: PayloadFileSystem;
  } {
    const steps: string[] = [];
    return { steps, fileSystem: recordingFileSystem(steps, { beforeRootSync }) };
  }
  /** Renames, chmods and the payload folder's fsyncs are not what these tests are about. */
  const folderAndData = (steps: string[]) =>
    steps.filter((step) => !/^(rename|chmod|fsync agent\.db-payloads)/.test(step));
  const row = (captureId: string, payloadFile: string) => ({
    captureId,
    model: 'm',
    meta: '{}',
    payload: Buffer.alloc(0),
    payloadFile,
    enqueuedAt: 1,
  });

  it('a write started while another is making the folder waits for the data root fsync', async () => {
    let releaseRootSync!: () => void;
    const rootSyncGate = new Promise<void>((resolve) => (releaseRootSync = resolve));
    const { steps, fileSystem } = recording(() => rootSyncGate); // a slow SD card
    const repository = await repositoryWith(fileSystem);
    const first = repository.storePayload([Buffer.alloc(1000, 1)]);
    while (!steps.includes('mkdir agent.db-payloads')) await new Promise((resolve) => setImmediate(resolve));
    const second = repository.storePayload([Buffer.alloc(1000, 2)]);
    // Long enough for the second write to finish if it did not wait (it is not timed: the order is checked).
    for (let i = 0; i < 50; i++) await new Promise((resolve) => setImmediate(resolve));
    releaseRootSync();
    repository.enqueue([row('B', await second)]);
    steps.push('row B committed');
    await first;
    expect(steps.indexOf('fsync .')).toBeGreaterThan(-1);
    expect(steps.indexOf('fsync .')).toBeLessThan(steps.indexOf('create agent.db-payloads/.tmp-N.payload'));
    expect(steps.indexOf('fsync .')).toBeLessThan(steps.indexOf('row B committed'));
  });

  it('a failed data root fsync is tried again by the next write, before it writes anything', async () => {
    let fail = true;
    const { steps, fileSystem } = recording(() => {
      if (!fail) return Promise.resolve();
      fail = false;
      return Promise.reject(Object.assign(new Error('EIO: i/o error, fsync'), { code: 'EIO' }));
    });
    const repository = await repositoryWith(fileSystem);
    await expect(repository.storePayload([Buffer.alloc(1000, 1)])).rejects.toThrow(/EIO/);
    const name = await repository.storePayload([Buffer.alloc(1000, 2)]);
    repository.enqueue([row('B', name)]);
    expect(folderAndData(steps).slice(0, 4)).toEqual([
      'mkdir agent.db-payloads',
      'fsync . failed',
      'fsync .',
      'create agent.db-payloads/.tmp-N.payload',
    ]);
  });

  it('a folder an earlier run made (killed before its fsync) is made durable before the first write', async () => {
    await mkdir(folder, { recursive: true, mode: 0o700 });
    const { steps, fileSystem } = recording(() => Promise.resolve());
    const repository = await repositoryWith(fileSystem);
    await repository.storePayload([Buffer.alloc(1000, 1)]);
    await repository.storePayload([Buffer.alloc(1000, 2)]);
    // Once per process: the second write does not fsync the data root again.
    expect(folderAndData(steps)).toEqual([
      'fsync .',
      'create agent.db-payloads/.tmp-N.payload',
      'create agent.db-payloads/.tmp-N.payload',
    ]);
  });
});

/** A queue whose payload file reads fail with EIO (a bad SD-card block) while `failing.reads` is true. */
async function queueWithFailingReads(
  deferral: {
    firstDelayMs: number;
    maxDelayMs: number;
    maxTries: number;
  },
  options: {
    busyTimeoutMs?: number;
    onReadTriesRecording?: (problem: Error | undefined) => void;
  } = {},
) {
  const failing = { reads: false };
  const fileSystem: PayloadFileSystem = {
    ...NODE_PAYLOAD_FILE_SYSTEM,
    open: (p, flags, mode) =>
      failing.reads && typeof flags === 'number'
        ? Promise.reject(Object.assign(new Error(`EIO: i/o error, open '${p}'`), { code: 'EIO' }))
        : NODE_PAYLOAD_FILE_SYSTEM.open(p, flags, mode),
  };
  const damaged: string[] = [];
  const queue = new SqliteCaptureQueue({
    repository: await repositoryWith(fileSystem, options),
    onDamaged: (captureId) => damaged.push(captureId),
    now: () => clock,
    monotonic: () => clock,
    deferral,
    ...(options.onReadTriesRecording && { onReadTriesRecording: options.onReadTriesRecording }),
  });
  return { queue, damaged, failing };
}

describe('captures that cannot be read for a lasting reason (C2)', () => {
  it('are passed over until their next try, so newer captures go on; FAILURE after the bounded tries', async () => {
    const { queue, damaged, failing } = await queueWithFailingReads({
      firstDelayMs: 1000,
      maxDelayMs: 4000,
      maxTries: 4,
    });
    for (let i = 0; i < 3; i++) await queue.enqueue(item(`big${i}`, 256 * 1024));
    await queue.enqueue(item('small', 100));
    // Lasting: the files' blocks cannot be read.
    failing.reads = true;
    const bigs = ['big0', 'big1', 'big2'];

    const first = await queue.formBatch('b0', 3);
    expect(first.items).toEqual([]);
    expect(first.deferred.map((d) => d.captureId)).toEqual(bigs);
    const next = await queue.formBatch('b1', 3);
    expect(next.items.map((i) => i.captureId)).toEqual(['small']);
    expect(next).toMatchObject({ deferred: [], untaken: 2 });
    queue.completeBatch('b1', 'SUCCESS');
    expect(queue.status('small')?.status).toBe('SUCCESS');

    // Tried again 1 s, then 2 s, then 4 s (the cap) after each failed read; on the 4th, given up.
    for (const [at, label] of [
      [1000, 'b2'],
      [3000, 'b3'],
    ] as const) {
      clock = at - 1;
      expect(await queue.formBatch(`${label}-early`, 3)).toMatchObject({
        items: [],
        deferred: [],
        untaken: 3,
      });
      clock = at;
      expect((await queue.formBatch(label, 3)).deferred.map((d) => d.captureId)).toEqual(bigs);
    }
    clock = 7000;
    const last = await queue.formBatch('b4', 3);
    expect(last).toMatchObject({ items: [], deferred: [], damaged: bigs });
    expect(damaged).toEqual(bigs);
    for (const id of bigs) {
      expect(queue.status(id)).toMatchObject({
        status: 'FAILURE',
        detail: expect.stringMatching(/could not be read back in 4 tries \(the last: EIO: i\/o error/),
      });
    }
    await queue.close();
  });
});

describe('the payload folder turning unsafe while the agent runs (C4, C5)', () => {
  it('is told once per change, and nothing is removed in it while it is unsafe', async () => {
    const told: (string | undefined)[] = [];
    const { queue } = open({}, { onPayloadFolder: (problem) => told.push(problem?.message) });
    await queue.enqueue(item('written', 256 * 1024));
    const written = payloadFiles().get('written')!;
    const formed = await queue.formBatch('b', 10);
    expect(formed.items.map((i) => i.captureId)).toEqual(['written']);

    await chmod(folder, 0o777);
    // Its row is deleted, but its file is left to the next start's sweep: the folder may not be the agent's now.
    queue.completeBatch('b', 'SUCCESS');
    await queue.enqueue(item('inline1', 256 * 1024));
    await queue.enqueue(item('inline2', 256 * 1024));
    await database!.captureQueue.payloadRemovalsDone();
    expect(await readdir(folder)).toEqual([written]);
    expect(told).toEqual([expect.stringMatching(/writable by its group or others \(mode 777\)/)]);

    await chmod(folder, 0o700);
    await queue.enqueue(item('file1', 256 * 1024));
    await queue.enqueue(item('file2', 256 * 1024));
    expect(told).toEqual([expect.stringMatching(/mode 777/), undefined]);
    expect(payloadFiles().get('inline1')).toBeNull();
    expect(payloadFiles().get('file1')).not.toBeNull();
    await queue.close();

    const again = open();
    expect((await again.queue.recover()).orphansRemoved).toBe(1);
    expect(await readdir(folder)).not.toContain(written);
    await again.queue.close();
  });
});

describe('an interrupted batch with a capture that cannot be read at the next start (F1)', () => {
  it('is kept whole under its id, never split into a new batch (it may have been written before the kill)', async () => {
    const { queue } = open();
    await queue.enqueue(item('a', 256 * 1024, 3));
    await queue.enqueue(item('b', 100));
    expect((await queue.formBatch('b1', 10)).items.map((i) => i.captureId)).toEqual(['a', 'b']);
    // Written to the destination, then killed before completeBatch.
    await queue.close();

    await chmod(folder, 0o770); // 'a' cannot be read at this start
    const again = open();
    const recovered = await again.queue.recover();
    expect(recovered.openBatches).toEqual([]);
    expect(recovered.pending).toBe(0);
    expect(recovered.heldAside).toEqual(
      new Map([
        ['a', 256 * 1024],
        ['b', 100],
      ]),
    );
    // The sweep's own complaint about the folder comes first.
    expect(recovered.problems.filter((p) => p.startsWith('interrupted'))).toEqual([
      expect.stringMatching(
        /^interrupted batch b1 \(2 captures\) is set aside, kept whole, and tried again later: its capture a could not be read now: .*writable by its group/,
      ),
    ]);
    await chmod(folder, 0o700);
    // Nothing of b1 is formed under another id.
    expect(await again.queue.formBatch('b2', 10)).toMatchObject({ items: [], untaken: 10 });
    // Tried again whole at its next try (1 s after the failed read), not before.
    expect(again.queue.nextSetAsideTryInMs()).toBe(1000);
    clock += 999;
    expect(await again.queue.retrySetAside()).toEqual([]);
    expect(again.queue.status('a')?.status).toBe('IN_PROGRESS');
    clock += 1;
    const retried = await again.queue.retrySetAside();
    expect(retried.map((b) => [b.batchId, b.items.map((i) => i.captureId), b.damaged])).toEqual([
      ['b1', ['a', 'b'], []],
    ]);
    expect(again.queue.nextSetAsideTryInMs()).toBeUndefined();
    again.queue.completeBatch('b1', 'SUCCESS');
    expect(again.queue.status('a')?.status).toBe('SUCCESS');
    await again.queue.close();
  });
});

describe('an interrupted batch with a capture that cannot be read for a lasting reason (G1)', () => {
  it('is tried again whole on the deferral delays; after maxTries the capture is FAILURE and the rest comes back under the same id', async () => {
    const { queue, damaged, failing } = await queueWithFailingReads({
      firstDelayMs: 1000,
      maxDelayMs: 4000,
      maxTries: 3,
    });
    await queue.enqueue(item('bad', 256 * 1024, 3));
    await queue.enqueue(item('good', 100));
    await queue.formBatch('b1', 10); // then killed before completeBatch
    failing.reads = true; // a bad block under 'bad''s file
    expect((await queue.recover()).heldAside.size).toBe(2); // the first try
    clock += 1000;
    expect(await queue.retrySetAside()).toEqual([]); // the second
    expect(queue.nextSetAsideTryInMs()).toBe(2000);
    clock += 2000;
    const [retried] = await queue.retrySetAside(); // the third: the last
    expect(retried).toMatchObject({ batchId: 'b1', damaged: ['bad'] });
    expect(retried!.items.map((i) => i.captureId)).toEqual(['good']);
    expect(damaged).toEqual(['bad']);
    expect(queue.status('bad')).toMatchObject({
      status: 'FAILURE',
      detail: expect.stringMatching(/could not be read back in 3 tries \(the last: EIO/),
    });
    queue.completeBatch('b1', 'SUCCESS');
    expect(queue.status('good')?.status).toBe('SUCCESS');
    await queue.close();
  });
});

describe('failed reads of an interrupted batch that the database refuses to record (N7)', () => {
  it('are told once per change (refused, then recorded again); the batch is tried again as before', async () => {
    const told: (string | undefined)[] = [];
    const { queue, failing } = await queueWithFailingReads(
      { firstDelayMs: 1000, maxDelayMs: 4000, maxTries: 10 },
      // A write that finds the lock taken fails at once (SQLITE_BUSY) instead of waiting for it.
      { busyTimeoutMs: 0, onReadTriesRecording: (problem) => told.push(problem?.message) },
    );
    await queue.enqueue(item('bad', 256 * 1024, 3));
    await queue.formBatch('b1', 10); // then killed before completeBatch
    failing.reads = true; // a bad block under its file
    expect((await queue.recover()).heldAside.size).toBe(1); // the first try, recorded: nothing told
    expect(told).toEqual([]);
    // Another connection holds the write lock through the next two tries: neither can be recorded.
    const other = new SqliteDatabase(path, { timeout: 0 });
    opened.push(other);
    other.prepare('BEGIN IMMEDIATE').run();
    clock += 1000;
    expect(await queue.retrySetAside()).toEqual([]);
    clock += 2000;
    expect(await queue.retrySetAside()).toEqual([]);
    expect(told).toEqual([expect.stringMatching(/locked|busy/i)]);
    other.prepare('COMMIT').run();
    clock += 4000;
    expect(await queue.retrySetAside()).toEqual([]);
    expect(told).toEqual([expect.stringMatching(/locked|busy/i), undefined]);
    failing.reads = false;
    clock += 4000;
    const [retried] = await queue.retrySetAside();
    expect(retried?.items.map((i) => i.captureId)).toEqual(['bad']);
    queue.completeBatch('b1', 'SUCCESS');
    await queue.close();
  });
});

describe('the deferral delay (F2)', () => {
  it('runs on the monotonic clock: a wall clock stepped back does not hold a deferred capture for the step', async () => {
    let elapsed = 0;
    clock = 2_000_000_000_000; // booted with the clock years ahead
    const { queue } = open({}, { monotonic: () => elapsed });
    await queue.enqueue(item('a', 256 * 1024, 3));
    await chmod(folder, 0o770);
    expect((await queue.formBatch('b1', 10)).deferred.map((d) => d.captureId)).toEqual(['a']);
    await chmod(folder, 0o700);

    clock = 1_800_000_000_000; // NTP steps the wall clock back
    elapsed = 999;
    expect(await queue.formBatch('b2', 10)).toMatchObject({ items: [], deferred: [], untaken: 10 });
    elapsed = 1000; // its next try, 1 s after the failed read
    expect((await queue.formBatch('b3', 10)).items.map((i) => i.captureId)).toEqual(['a']);
    queue.completeBatch('b3', 'SUCCESS');
    await queue.close();
  });
});

describe('captures in a payload folder left unsafe (N3)', () => {
  it('are passed over, never failed, however many reads the folder refuses; delivered once it is fixed', async () => {
    const { queue, damaged } = open({}, { deferral: { firstDelayMs: 1000, maxDelayMs: 4000, maxTries: 2 } });
    await queue.enqueue(item('a', 256 * 1024, 3));
    await chmod(folder, 0o770);
    for (let i = 0; i < 5; i++) {
      clock += 4000; // each try's delay has passed
      expect((await queue.formBatch(`b${i}`, 10)).deferred.map((d) => d.captureId)).toEqual(['a']);
    }
    expect(damaged).toEqual([]);
    expect(queue.status('a')?.status).toBe('IN_PROGRESS');

    await chmod(folder, 0o700);
    clock += 4000;
    expect((await queue.formBatch('fixed', 10)).items.map((i) => i.captureId)).toEqual(['a']);
    queue.completeBatch('fixed', 'SUCCESS');
    expect(queue.status('a')?.status).toBe('SUCCESS');
    await queue.close();
  });
});

describe('a batch whose record the database refuses (N5: read first, then record the batch)', () => {
  it('changes nothing: no capture is left in a batch, none is failed or told; the next formation takes them', async () => {
    // A write that finds the lock taken fails at once (SQLITE_BUSY) instead of waiting for it.
    const told: string[] = [];
    const { database, queue } = open(
      { busyTimeoutMs: 0 },
      { onDamaged: (captureId, error) => told.push(`${captureId}: ${error.message}`) },
    );
    await queue.enqueue(item('gone', 256 * 1024, 3));
    await queue.enqueue(item('unsafe-now', 256 * 1024, 4));
    await queue.enqueue(item('kept', 100));
    await rm(join(folder, payloadFiles().get('gone')!));
    // Another connection holds the write lock while the batch is read back: the batch cannot be recorded.
    const other = new SqliteDatabase(database.path, { timeout: 0 });
    opened.push(other);
    const forming = queue.formBatch('b', 10);
    other.prepare('BEGIN IMMEDIATE').run();
    await expect(forming).rejects.toThrow(/locked|busy/i);
    other.prepare('COMMIT').run();
    expect(told).toEqual([]);
    expect(queue.status('gone')?.status).toBe('IN_PROGRESS');
    expect(queue.passedOver()).toBe(0);
    const raw = new SqliteDatabase(path, { readonly: true });
    opened.push(raw);
    expect(raw.prepare('SELECT count(*) AS n FROM capture_queue WHERE batch_id IS NOT NULL').get()).toEqual({
      n: 0,
    });

    await chmod(folder, 0o770); // 'unsafe-now' (and 'gone') cannot be read at this formation
    const formed = await queue.formBatch('b2', 10);
    expect(formed.items.map((i) => i.captureId)).toEqual(['kept']);
    expect(formed.deferred.map((d) => d.captureId)).toEqual(['gone', 'unsafe-now']);
    await chmod(folder, 0o700);
    clock += 1000;
    const next = await queue.formBatch('b3', 10);
    expect(next.items.map((i) => i.captureId)).toEqual(['unsafe-now']);
    expect(next.damaged).toEqual(['gone']);
    expect(told).toEqual([expect.stringMatching(/^gone: its payload file .* is gone \(ENOENT\)$/)]);
    expect(queue.status('gone')).toMatchObject({
      status: 'FAILURE',
      detail: expect.stringMatching(/ENOENT/),
    });
    queue.completeBatch('b2', 'SUCCESS');
    queue.completeBatch('b3', 'SUCCESS');
    expect(queue.status('unsafe-now')?.status).toBe('SUCCESS');
    await queue.close();

    // Nothing is left for the next start.
    const again = open();
    expect(await again.queue.recover()).toMatchObject({ pending: 0, openBatches: [] });
    await again.queue.close();
  });
});
