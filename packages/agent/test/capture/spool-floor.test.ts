import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { lstat, mkdir, mkdtemp, readFile, readdir, rename, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AgentEncoding } from '@edgefleet/core';
import { Registry } from 'prom-client';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { renderBatch } from '../../src/capture/records.js';
import {
  CaptureService,
  CaptureSpool,
  MemoryCaptureQueue,
  ObjectStoreDestination,
  S3ObjectStore,
  SqliteCaptureQueue,
  type AutoCaptureRule,
  type CaptureQueue,
} from '../../src/capture/index.js';
import { freeBytes } from '../../src/capture/disk-quota.js';
import { type PredictTensor } from '../../src/models/index.js';
import { AgentDatabase, agentDatabasePath } from '../../src/state/index.js';
import {
  captureCounters,
  captureInput,
  captureItem,
  plantRendering,
  startS3,
  takenAt,
  testSettings,
  type TestS3,
  useModelRegistry,
} from './helpers.js';

// The offline spool on a small disk: the data root's file system (the spool, the local database) is a disk of a
// given capacity, whose free space is that capacity less the bytes really under its folder (the statfs the spool
// is given, a constructor dependency). The bucket is s3rver over real HTTP, stopped while the spool fills.
const loaded = useModelRegistry('edgefleet-spool-floor-', { tiny: 'tiny' });

let work: string;
let disk: string;
let s3: TestS3;
let services: CaptureService[] = [];
let databases: AgentDatabase[] = [];
let stores: S3ObjectStore[] = [];

beforeEach(async () => {
  work = await mkdtemp(join(loaded.root, 'case-'));
  disk = join(work, 'disk');
  await mkdir(disk);
  s3 = await startS3(join(work, 's3'));
});
afterEach(async () => {
  for (const service of services) await service.close();
  for (const database of databases) database.close();
  for (const store of stores) store.close();
  services = [];
  databases = [];
  stores = [];
  await s3.close();
  await rm(work, { recursive: true, force: true });
});

/**
 * The bytes of the regular files under a folder; folders renamed or removed meanwhile count nothing. Asked on
 * every free-space check (a few per capture, hundreds of files by the end): the entries are read at once, not one
 * after another.
 */
async function bytesUnder(folder: string): Promise<number> {
  const entries = await readdir(folder, { withFileTypes: true }).catch(() => []);
  const sizes = await Promise.all(
    entries.map((entry) => {
      const path = join(folder, entry.name);
      if (entry.isDirectory()) return bytesUnder(path);
      if (!entry.isFile()) return 0;
      return lstat(path).then(
        (s) => s.size,
        () => 0,
      );
    }),
  );
  return sizes.reduce((sum, size) => sum + size, 0);
}

// The floor is above what the local database's write-ahead log may take (about 4 MiB before a checkpoint),
// which grows on the same disk whatever the spool does.
const FLOOR = 8 * 1024 * 1024;
const CAPTURE_AUX_BYTES = 64 * 1024;

function start(options: {
  capacity?: () => number;
  /** The free space statfs reports, whatever is written (instead of capacity). */
  free?: () => number;
  /** The file system's answer itself (instead of capacity or free). */
  statfs?: () => Promise<{ bavail: number; bsize: number }>;
  durable: boolean;
  logger?: Logger;
  autoCapture?: AutoCaptureRule[];
  /** Default 1: each capture its own batch. */
  batchSize?: number;
  bufferSize?: number;
}) {
  const settings = testSettings(disk, {
    destination: 'Cloud',
    cloud: { bucket: s3.bucket, region: 'us-east-1', endpoint: s3.endpoint, credentials: s3.credentials },
    batchSize: options.batchSize ?? 1,
    ...(options.batchSize !== undefined && { pushPeriodSeconds: 3600 }),
    ...(options.bufferSize !== undefined && { bufferSize: options.bufferSize }),
    ...(options.autoCapture && { autoCapture: options.autoCapture }),
    spool: {
      dir: join(disk, 'spool'),
      quotaBytes: 64 * 1024 * 1024,
      minFreeBytes: FLOOR,
      retryInitialMs: 50,
      retryMaxMs: 200,
    },
  });
  let queue: CaptureQueue = new MemoryCaptureQueue();
  if (options.durable) {
    const database = AgentDatabase.open({
      path: agentDatabasePath(join(disk, 'data')),
      walSyncIntervalMs: 0,
    });
    databases.push(database);
    queue = new SqliteCaptureQueue({ repository: database.captureQueue });
  }
  const store = new S3ObjectStore({
    bucket: s3.bucket,
    region: 'us-east-1',
    endpoint: s3.endpoint,
    credentials: s3.credentials,
    maxAttempts: 1,
  });
  stores.push(store);
  const capacity = options.capacity;
  const metrics = new Registry();
  const service = new CaptureService({
    settings,
    models: loaded.registry,
    queue,
    destination: new ObjectStoreDestination(store),
    store,
    metricsRegistry: metrics,
    ...(capacity !== undefined && { statfs: smallDisk(capacity) }),
    ...(options.free !== undefined && {
      statfs: async () => ({ bavail: options.free!(), bsize: 1 }),
    }),
    ...(options.statfs !== undefined && { statfs: options.statfs }),
    ...(options.logger && { logger: options.logger }),
  });
  services.push(service);
  return { service, settings, metrics };
}

/** A disk of `capacity()` bytes holding what is under `disk`: its free space as statfs reports it. */
function smallDisk(capacity: () => number) {
  return async () => ({ bavail: Math.max(0, capacity() - (await bytesUnder(disk))), bsize: 1 });
}

type Logger = {
  info(fields: Record<string, unknown>, message: string): void;
  warn(fields: Record<string, unknown>, message: string): void;
  error(fields: Record<string, unknown>, message: string): void;
};

function recordingLogger() {
  const lines: { level: string; fields: Record<string, unknown>; message: string }[] = [];
  const logger: Logger = {
    info: (fields, message) => lines.push({ level: 'info', fields, message }),
    warn: (fields, message) => lines.push({ level: 'warn', fields, message }),
    error: (fields, message) => lines.push({ level: 'error', fields, message }),
  };
  return { lines, logger };
}

function tinyInput(value: number): PredictTensor {
  return {
    name: Buffer.from('x'),
    dataType: 'FLOAT32',
    shape: [1, 16],
    data: new Uint8Array(new Float32Array(16).fill(value).buffer),
  };
}

const withAux = (id: string) =>
  captureInput(id, {
    inputs: [
      {
        name: 'blob',
        encoding: AgentEncoding.BASE64,
        byteData: Buffer.alloc(CAPTURE_AUX_BYTES, id.length),
        data: 'byteData',
      },
    ],
  });

/**
 * A disk that something else fills just after the next free-space check (the one that admits the next capture),
 * leaving a quarter of the floor free: the capture is acknowledged, and its batch then meets a full disk.
 */
function fillingDisk() {
  const roomy = 256 * 1024 * 1024;
  let checks = 0;
  let fullAfter = Number.POSITIVE_INFINITY;
  let full = roomy;
  return {
    capacity: () => (++checks > fullAfter ? full : roomy),
    /** How many times the disk was asked for its free space. */
    get checks() {
      return checks;
    },
    async fillAfterNextCheck() {
      full = (await bytesUnder(disk)) + FLOOR / 4;
      fullAfter = checks + 1;
    },
    empty() {
      fullAfter = Number.POSITIVE_INFINITY;
    },
  };
}

/** Polls (real time) until the check passes. */
async function eventually(check: () => boolean | Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > until) throw new Error('condition not met in time');
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/**
 * Captures until the spool's floor refuses (the store stopped), checking what the disk keeps free (`freeNow`) as
 * it goes; then brings the store back and checks that every acknowledged capture arrives.
 */
async function fillUntilRefused(service: CaptureService, freeNow: () => Promise<number>): Promise<void> {
  await s3.stop();
  const acknowledged: string[] = [];
  const refusals: string[] = [];
  let lowestFree = Number.POSITIVE_INFINITY;
  for (let i = 0; i < 600 && refusals.length < 5; i++) {
    try {
      await service.capture(withAux(`c-${i}`));
      acknowledged.push(`c-${i}`);
    } catch (error) {
      expect((error as { code?: string }).code).toBe('RESOURCE_EXHAUSTED');
      // The buffer may be full for a moment (batches not yet spooled): that refusal is not the one looked for.
      if (!/capture buffer is full/.test((error as Error).message)) refusals.push((error as Error).message);
    }
    if (i % 8 === 0) lowestFree = Math.min(lowestFree, await freeNow());
  }
  // Everything acknowledged is on the disk, queued or spooled (a batch that would pass half the floor, as the
  // database's pages are not given back, stays queued and is retried), and the disk kept at least half the floor.
  lowestFree = Math.min(lowestFree, await freeNow());
  expect(acknowledged.length).toBeGreaterThan(10);
  expect(refusals.length).toBeGreaterThan(0);
  expect(refusals[0]).toMatch(
    /was not taken: the offline capture spool .* cannot take more while .* is unreachable: its file system has \d+ bytes free; .* would leave less than the 8388608 bytes .*\(edgefleet_capture_min_free_bytes\)/,
  );
  expect(lowestFree).toBeGreaterThanOrEqual(FLOOR / 2);
  expect(acknowledged.every((id) => service.status(id).status === 'IN_PROGRESS')).toBe(true);

  await s3.restart();
  // 150 to 200 captures: 4 s here unloaded on a tmpfs, 13 s on the fake disk with two busy loops beside it.
  await eventually(() => acknowledged.every((id) => service.status(id).status === 'SUCCESS'), 60_000);
  const delivered = (await s3.records()).map((r) => r.record.eventMetadata.eventId as string);
  expect(delivered.sort()).toEqual([...acknowledged].sort());
  // Room again: captures are taken.
  await service.capture(withAux('after'));
  await eventually(() => service.status('after').status === 'SUCCESS');
}

/** A tmpfs can be mounted here (root with CAP_SYS_ADMIN): the real small-disk case runs. */
const canMountTmpfs = (() => {
  if (process.getuid?.() !== 0) return false;
  const probe = mkdtempSync(join(tmpdir(), 'ef-tmpfs-probe-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', probe], { stdio: 'ignore' });
    execFileSync('umount', [probe], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  } finally {
    rmSync(probe, { recursive: true, force: true });
  }
})();

// Each case fills a 24 MiB disk through the local database and the spool (150 to 200 captures of 64 KiB), then
// delivers them all: work that must finish, which took over 30 s (the default test timeout) on a loaded 2-core
// machine, most of it the fake disk's walk of its folder on every free-space check.
describe('the offline spool on a small disk', { timeout: 120_000 }, () => {
  it('refuses new captures with RESOURCE_EXHAUSTED at the free-space floor, keeps the floor, and delivers every capture it acknowledged', async () => {
    const capacity = 24 * 1024 * 1024;
    const { service } = start({ capacity: () => capacity, durable: true });
    await service.start();
    await fillUntilRefused(service, async () => capacity - (await bytesUnder(disk)));
  });

  it.skipIf(!canMountTmpfs)(
    "on a real 24 MiB tmpfs (root only): the same, with the file system's own statfs",
    async () => {
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=24m', 'tmpfs', disk]);
      try {
        const { service } = start({ durable: true });
        await service.start();
        await fillUntilRefused(service, () => freeBytes(disk));
        await service.close();
        for (const database of databases) database.close();
        databases = [];
      } finally {
        execFileSync('umount', ['-l', disk]);
      }
    },
  );

  it('keeps retrying a batch already acknowledged when the disk filled after its acceptance (local database), and delivers it', async () => {
    const { lines, logger } = recordingLogger();
    const filling = fillingDisk();
    const { service } = start({ capacity: filling.capacity, durable: true, logger });
    await service.start();
    await s3.stop();
    await service.capture(withAux('first'));
    await eventually(() => service.spoolState()!.batches === 1);
    await filling.fillAfterNextCheck();
    await service.capture(withAux('late'));
    // Each attempt to spool the batch asks the disk once: well past the attempts a batch gets without the database.
    const checksBefore = filling.checks;
    await eventually(() => filling.checks - checksBefore >= 12);
    expect(service.status('late').status).toBe('IN_PROGRESS');
    // Retried without end, logged once (then once a minute with a count).
    expect(lines.filter((l) => l.fields.event === 'capture-write-retry')).toHaveLength(1);
    expect(lines.some((l) => l.fields.event === 'capture-batch-given-up')).toBe(false);
    filling.empty();
    await s3.restart();
    await eventually(() => ['first', 'late'].every((id) => service.status(id).status === 'SUCCESS'), 30_000);
  });

  it('spools a batch where the file system cannot be asked for its free space (the write decides)', async () => {
    let broken = false;
    const { service } = start({
      capacity: () => {
        if (broken) throw Object.assign(new Error('statfs failed'), { code: 'ENOENT' });
        return 256 * 1024 * 1024;
      },
      durable: true,
    });
    await service.start();
    await s3.stop();
    broken = true;
    await service.capture(withAux('unasked'));
    await eventually(() => service.spoolState()!.batches === 1);
    broken = false;
    await s3.restart();
    await eventually(() => service.status('unasked').status === 'SUCCESS', 30_000);
  });

  it('without the local database, gives up such a batch after its attempts with one line naming the event and the captures dropped', async () => {
    const { lines, logger } = recordingLogger();
    const filling = fillingDisk();
    const { service, metrics } = start({ capacity: filling.capacity, durable: false, logger });
    await service.start();
    await s3.stop();
    await service.capture(withAux('first'));
    await eventually(() => service.spoolState()!.batches === 1);
    await filling.fillAfterNextCheck();
    await service.capture(withAux('late'));
    await eventually(() => service.status('late').status === 'FAILURE');
    const givenUp = lines.find((l) => l.fields.event === 'capture-batch-given-up');
    expect(givenUp).toBeDefined();
    expect(givenUp!.level).toBe('error');
    expect(givenUp!.fields).toMatchObject({ dropped: 1, reason: 'write-failed' });
    expect(givenUp!.message).toMatch(
      /giving up a batch: cannot keep the batch in the offline spool .*half of edgefleet_capture_min_free_bytes.*\(after 5 attempts\); its 1 capture\(s\) are marked FAILURE/,
    );
    expect(await metrics.metrics()).toMatch(/edgefleet_capture_dropped_total\{reason="write-failed"\} 1/);
  });
});

describe('the door of the offline spool', () => {
  it('counts the bytes of the captures held once: a large backlog on a roomy disk does not refuse new captures', async () => {
    // Captures held in memory (no local database), not yet in a batch (a batch of 100 or an hour), while the spool
    // holds a batch: each needs its spooled copy alone on this disk.
    let capacity = 256 * 1024 * 1024;
    const { service, metrics } = start({
      capacity: () => capacity,
      durable: false,
      batchSize: 100,
      bufferSize: 200,
    });
    await service.start();
    await s3.stop();
    await service.capture(withAux('spooled'));
    await service.flush();
    expect(service.spoolState()!.batches).toBe(1);
    // Room above the floor for 1.5 times a backlog of 20 captures.
    const oneCapture = CAPTURE_AUX_BYTES + 64;
    capacity = (await bytesUnder(disk)) + FLOOR + Math.floor(1.5 * 20 * oneCapture);
    for (let i = 0; i < 20; i++) await service.capture(withAux(`held-${i}`));
    expect(service.held).toBe(20);
    // The floor is still kept: the captures the room does not hold are refused.
    let taken = 20;
    let refusal: Error | undefined;
    for (; taken < 60 && refusal === undefined; taken++) {
      await service.capture(withAux(`more-${taken}`)).catch((error: Error) => (refusal = error));
    }
    expect(refusal).toMatchObject({ code: 'RESOURCE_EXHAUSTED' });
    expect(refusal!.message).toMatch(/offline capture spool .* would leave less than the 8388608 bytes/);
    expect(service.held).toBeLessThanOrEqual(30);
    expect(service.held).toBeGreaterThanOrEqual(28);
    expect(await metrics.getSingleMetricAsString('edgefleet_capture_rejected_total')).toContain(
      'edgefleet_capture_rejected_total{code="RESOURCE_EXHAUSTED"} 1',
    );
  });

  it('with the local database, counts a new capture twice (its queued copy and its spooled one)', async () => {
    // Free space as given, not measured: the database's own files (its write-ahead log grows and is checkpointed)
    // move by more than the margins here.
    let free = 256 * 1024 * 1024;
    const { service } = start({ free: () => free, durable: true, batchSize: 100, bufferSize: 200 });
    await service.start();
    await s3.stop();
    await service.capture(withAux('spooled'));
    await service.flush();
    expect(service.spoolState()!.batches).toBe(1);
    const oneCapture = CAPTURE_AUX_BYTES + 64;
    // Room above the floor for one and a half copies: its queued copy fits, not both.
    free = FLOOR + Math.floor(1.5 * oneCapture);
    await expect(service.capture(withAux('too-big'))).rejects.toMatchObject({ code: 'RESOURCE_EXHAUSTED' });
    expect(service.held).toBe(0);
    // Room for two and a half: both copies fit.
    free = FLOOR + Math.floor(2.5 * oneCapture);
    await service.capture(withAux('fits'));
    expect(service.held).toBe(1);
  });

  it('checks automatic captures against the free-space floor as CaptureData, and counts those refused', async () => {
    // Free space as given, not measured: the bytes under the disk move while the spool retries its upload (files
    // rewritten, the database's write-ahead log), by more than the 16 bytes this leaves above the floor.
    let free = 256 * 1024 * 1024;
    const { service, metrics } = start({
      free: () => free,
      durable: true,
      autoCapture: [{ model: 'tiny', sampleRate: 1 }],
    });
    await service.start();
    const detach = loaded.registry.observe(service.autoCapture);
    try {
      await s3.stop();
      await service.capture(withAux('spooled'));
      await eventually(() => service.spoolState()!.batches === 1);
      // The floor and a few bytes free: no capture fits.
      free = FLOOR + 16;
      await expect(service.capture(withAux('refused'))).rejects.toMatchObject({ code: 'RESOURCE_EXHAUSTED' });
      await loaded.registry.predict('tiny', [tinyInput(1)]);
      await loaded.registry.predict('tiny', [tinyInput(2)]);
      await eventually(async () =>
        (await metrics.getSingleMetricAsString('edgefleet_capture_auto_skipped_total')).includes(
          'edgefleet_capture_auto_skipped_total{model="tiny",reason="spool-full"} 2',
        ),
      );
      expect(service.held).toBe(0);
      expect(await metrics.getSingleMetricAsString('edgefleet_capture_accepted_total')).not.toContain(
        'source="auto"',
      );
      // Room again: taken.
      free = 256 * 1024 * 1024;
      await loaded.registry.predict('tiny', [tinyInput(3)]);
      await eventually(async () =>
        (await metrics.getSingleMetricAsString('edgefleet_capture_accepted_total')).includes(
          'edgefleet_capture_accepted_total{model="tiny",source="auto"} 1',
        ),
      );
    } finally {
      detach();
    }
  });
});

describe('automatic captures waiting on the free-space check', () => {
  it("count against the buffer's cap while they wait: past it, the next are skipped at once", async () => {
    // A file system slow to answer statfs (an NFS mount, a busy disk): held until the test lets it go.
    let slow = false;
    const waiting: (() => void)[] = [];
    const { service, metrics } = start({
      statfs: async () => {
        if (slow) await new Promise<void>((resolve) => waiting.push(resolve));
        return { bavail: 256 * 1024 * 1024, bsize: 1 };
      },
      durable: false,
      bufferSize: 2,
      autoCapture: [{ model: 'tiny', sampleRate: 1 }],
    });
    await service.start();
    const detach = loaded.registry.observe(service.autoCapture);
    const skipped = async () =>
      (await metrics.getSingleMetricAsString('edgefleet_capture_auto_skipped_total')) ?? '';
    try {
      // The spool in use: automatic captures wait on the floor check.
      await s3.stop();
      await service.capture(withAux('spooled'));
      await eventually(() => service.spoolState()!.batches === 1 && service.held === 0);
      slow = true;
      for (let i = 1; i <= 5; i++) await loaded.registry.predict('tiny', [tinyInput(i)]);
      // Two wait (the buffer holds two); the three after them are skipped at once, while the two still wait.
      await eventually(async () =>
        (await skipped()).includes(
          'edgefleet_capture_auto_skipped_total{model="tiny",reason="buffer-full"} 3',
        ),
      );
      expect(waiting).toHaveLength(2);
      slow = false;
      for (const resolve of waiting.splice(0)) resolve();
      await eventually(async () =>
        (await metrics.getSingleMetricAsString('edgefleet_capture_accepted_total')).includes(
          'edgefleet_capture_accepted_total{model="tiny",source="auto"} 2',
        ),
      );
      expect(await skipped()).toContain(
        'edgefleet_capture_auto_skipped_total{model="tiny",reason="buffer-full"} 3',
      );
    } finally {
      detach();
      for (const resolve of waiting.splice(0)) resolve();
    }
  });
});

describe('a batch set aside just before the agent stopped', () => {
  it('marks its captures FAILURE at the next start saying it was set aside, not that it is gone', async () => {
    const first = start({ free: () => 256 * 1024 * 1024, durable: true });
    await first.service.start();
    await s3.stop();
    await first.service.capture(withAux('aside-1'));
    await eventually(() => first.service.spoolState()!.batches === 1);
    await first.service.close();
    databases.pop()!.close();
    services.pop();
    // What the spool does when it sets a batch aside, cut short before the statuses: the note written, the folder
    // moved; the capture still IN_PROGRESS.
    const spoolDir = join(disk, 'spool');
    const [batchId] = (await readdir(spoolDir)).filter((name) => /^[0-9a-f]{32}$/.test(name));
    await writeFile(
      join(spoolDir, batchId!, 'set-aside.json'),
      JSON.stringify({
        setAsideAt: new Date().toISOString(),
        reason: 'AccessDenied: access denied',
        failures: 10,
        captureIds: ['aside-1'],
      }),
    );
    await mkdir(join(spoolDir, 'set-aside'));
    await rename(join(spoolDir, batchId!), join(spoolDir, 'set-aside', batchId!));

    const { lines, logger } = recordingLogger();
    const second = start({ free: () => 256 * 1024 * 1024, durable: true, logger });
    await second.service.start();
    const status = second.service.status('aside-1');
    expect(status.status).toBe('FAILURE');
    expect(status.detail).toMatch(
      new RegExp(
        `could never be uploaded .*10 failed attempts, the last: AccessDenied: access denied\\); set aside in ${join(spoolDir, 'set-aside', batchId!)} \\(the agent stopped before`,
      ),
    );
    expect(lines.some((l) => l.fields.event === 'capture-spool-set-aside-recovered')).toBe(true);
    expect(await second.metrics.getSingleMetricAsString('edgefleet_capture_dropped_total')).toContain(
      'edgefleet_capture_dropped_total{reason="set-aside"} 1',
    );
  });
});

describe('a torn file in the offline spool', () => {
  it('sends the complete records of a manifest cut short, marks only the torn capture FAILURE, and warns', async () => {
    const store = new S3ObjectStore({
      bucket: s3.bucket,
      region: 'us-east-1',
      endpoint: s3.endpoint,
      credentials: s3.credentials,
      maxAttempts: 1,
    });
    stores.push(store);
    const T = Date.UTC(2026, 11, 7, 5);
    const items = ['t1', 't2', 't3'].map((id, i) => takenAt(captureItem(id, Buffer.alloc(16, i + 1)), T + i));
    const batch = renderBatch('a'.repeat(32), items, plantRendering(store));
    expect(batch.files).toHaveLength(1); // one manifest, the tensors embedded
    const dir = join(work, 'torn-spool');
    const never = { set: () => undefined, clear: () => undefined };
    await s3.stop();
    const first = new CaptureSpool({
      dir,
      quotaBytes: 1024 * 1024,
      store,
      retry: { initialMs: 60_000, maxMs: 60_000 },
      onDelivered: () => undefined,
      onDropped: () => undefined,
      timers: never,
    });
    await first.open();
    await first.add(batch);
    await first.close();
    // A crash or a disk fault cuts the manifest inside its last record.
    const manifest = join(dir, batch.batchId, '0');
    const size = (await readFile(manifest)).byteLength;
    await truncate(manifest, size - 20);

    await s3.restart();
    const delivered: string[] = [];
    const dropped: { ids: readonly string[]; detail: string }[] = [];
    const { lines, logger } = recordingLogger();
    const metrics = new Registry();
    const second = new CaptureSpool({
      dir,
      quotaBytes: 1024 * 1024,
      store,
      retry: { initialMs: 50, maxMs: 50 },
      onDelivered: (ids) => delivered.push(...ids),
      onDropped: (ids, detail) => dropped.push({ ids, detail }),
      logger,
      metrics: captureCounters(metrics),
    });
    try {
      await second.open();
      await eventually(() => delivered.length > 0);
      expect(delivered).toEqual(['t1', 't2']);
      expect(dropped).toEqual([
        {
          ids: ['t3'],
          detail: expect.stringMatching(
            new RegExp(
              `damaged on this device's disk \\(.*\\.jsonl: ${size - 20} bytes, ${size} recorded\\)`,
            ),
          ),
        },
      ]);
      const records = (await s3.records()).map((r) => r.record.eventMetadata.eventId as string);
      expect(records.sort()).toEqual(['t1', 't2']);
      const warning = lines.find((l) => l.fields.event === 'capture-spool-damaged');
      expect(warning?.level).toBe('warn');
      expect(warning?.fields).toMatchObject({ dropped: 1, captures: 2 });
      expect(await metrics.metrics()).toMatch(/edgefleet_capture_dropped_total\{reason="damaged"\} 1/);
      await eventually(async () => (await readdir(dir)).length === 0);
    } finally {
      await second.close();
    }
  });
});
