import { mkdir, mkdtemp, readFile, rm, statfs, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  CAPTURE_FOLDER,
  CaptureService,
  DiskDestination,
  DiskQuota,
  MemoryCaptureQueue,
  startCaptureService,
  type CaptureLogger,
  type CaptureSettings,
} from '../../src/capture/index.js';
import { FolderInUseError } from '../../src/state/index.js';
import { agentErrorOf } from '../support/agent-error.js';
import {
  captureInput,
  diskRecords,
  floatTensor,
  listFiles,
  testSettings,
  useModelRegistry,
} from './helpers.js';

const loaded = useModelRegistry('edgefleet-disk-quota-', { tiny: 'tiny' });

let work: string;
let services: CaptureService[] = [];
beforeEach(async () => {
  work = await mkdtemp(join(loaded.root, 'case-'));
});
afterEach(async () => {
  for (const service of services) await service.close();
  services = [];
});

interface Logged {
  level: 'info' | 'warn' | 'error';
  message: string;
}

/** A real CaptureService writing real files through a DiskDestination with a quota; the quota's clock is `clock.now`. */
async function start(
  settings: CaptureSettings,
  quota: { quotaBytes: number; minFreeBytes?: number; rescanIntervalMs?: number },
  metrics?: Registry,
) {
  const clock = { now: 1_000_000 };
  const logged: Logged[] = [];
  const logger: CaptureLogger = {
    info: (_, message) => logged.push({ level: 'info', message }),
    warn: (_, message) => logged.push({ level: 'warn', message }),
    error: (_, message) => logged.push({ level: 'error', message }),
  };
  const destination = new DiskDestination(settings.diskPath, {
    quota: new DiskQuota({
      root: settings.diskPath,
      quotaBytes: quota.quotaBytes,
      minFreeBytes: quota.minFreeBytes ?? 0,
      rescanIntervalMs: quota.rescanIntervalMs ?? 5000,
      now: () => clock.now,
    }),
  });
  const service = new CaptureService({
    settings,
    models: loaded.registry,
    queue: new MemoryCaptureQueue(),
    destination,
    logger,
    now: () => clock.now,
    ...(metrics && { metricsRegistry: metrics }),
  });
  await service.start();
  services.push(service);
  return { service, clock, logged };
}

/** What the user already has in the capture folder: a file of `bytes` bytes. */
async function userFile(settings: CaptureSettings, bytes: number): Promise<string> {
  await mkdir(settings.diskPath, { recursive: true });
  const path = join(settings.diskPath, 'collected-earlier.bin');
  await writeFile(path, Buffer.alloc(bytes, 7));
  return path;
}

/** A capture whose files take more than 4 KB (an 8000-byte tensor, written as a side file). */
function large(captureId: string) {
  return captureInput(captureId, { inputTensors: [floatTensor('x', [1, 2000], 1)] });
}

describe('Disk capture quota (edgefleet_capture_disk_quota_bytes)', () => {
  it('does not write a batch that would pass the quota: FAILURE naming the key, nothing already there removed', async () => {
    const settings = testSettings(work, { batchSize: 1 });
    const kept = await userFile(settings, 60_000);
    const { service, logged } = await start(settings, { quotaBytes: 64_000 });

    // Fits: a small capture's files are a few KiB.
    await service.capture(captureInput('fits'));
    await service.flush();
    expect(service.status('fits').status).toBe('SUCCESS');
    const before = await listFiles(settings.diskPath);
    const manifestsBefore = await diskRecords(settings.diskPath);

    // The next ones pass the quota (counted: the user's file at start, then the first batch).
    // Both taken before the first write finds the folder full (taking one awaits no I/O; writing does).
    await service.capture(large('over-1'));
    await service.capture(large('over-2'));
    await service.flush();
    expect(service.status('over-2').status).toBe('FAILURE');
    const failed = service.status('over-1');
    expect(failed.status).toBe('FAILURE');
    expect(failed.detail).toMatch(/edgefleet_capture_disk_quota_bytes/);
    expect(failed.detail).toMatch(/quota of 64000 bytes/);
    expect(await listFiles(settings.diskPath)).toEqual(before);
    expect(await diskRecords(settings.diskPath)).toEqual(manifestsBefore);
    expect((await readFile(kept)).length).toBe(60_000);

    // One warning for the refused batches (rate-limited), not one per batch.
    const warnings = logged.filter((l) => l.level === 'warn' && /not written/.test(l.message));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]!.message).toMatch(/edgefleet_capture_disk_quota_bytes/);
  });

  it('refuses CaptureData at once (RESOURCE_EXHAUSTED) while the destination is known full', async () => {
    const settings = testSettings(work, { batchSize: 1 });
    await userFile(settings, 64_000);
    const { service } = await start(settings, { quotaBytes: 64_000 });
    await service.capture(captureInput('first'));
    await service.flush();
    expect(service.status('first').status).toBe('FAILURE');
    const error = await agentErrorOf(service.capture(captureInput('second')));
    expect(error.code).toBe('RESOURCE_EXHAUSTED');
    expect(error.message).toMatch(/edgefleet_capture_disk_quota_bytes/);
    expect(() => service.status('second')).toThrow(/no capture with capture_id "second"/);
  });

  it('skips automatic captures while the destination is known full, as CaptureData is refused, and counts them', async () => {
    const settings = testSettings(work, { batchSize: 1, autoCapture: [{ model: 'tiny', sampleRate: 1 }] });
    await userFile(settings, 64_000);
    const metrics = new Registry();
    const { service } = await start(settings, { quotaBytes: 64_000 }, metrics);
    const detach = loaded.registry.observe(service.autoCapture);
    try {
      await service.capture(captureInput('first'));
      await service.flush();
      expect(service.status('first').status).toBe('FAILURE');
      const input = {
        name: Buffer.from('x'),
        dataType: 'FLOAT32' as const,
        shape: [1, 16],
        data: new Uint8Array(new Float32Array(16).fill(1).buffer),
      };
      await loaded.registry.predict('tiny', [input]);
      await loaded.registry.predict('tiny', [input]);
      const skipped = 'edgefleet_capture_auto_skipped_total{model="tiny",reason="destination-full"} 2';
      for (let i = 0; i < 500 && !(await metrics.metrics()).includes(skipped); i++)
        await new Promise((resolve) => setTimeout(resolve, 10));
      expect(await metrics.metrics()).toContain(skipped);
      expect(service.held).toBe(0);
      expect(await metrics.metrics()).not.toMatch(/edgefleet_capture_accepted_total\{[^}]*source="auto"/);
    } finally {
      detach();
    }
  });

  it('gives the room back once the user removes files: the folder is walked again before refusing', async () => {
    const settings = testSettings(work, { batchSize: 1 });
    const collected = await userFile(settings, 64_000);
    const { service, clock } = await start(settings, { quotaBytes: 64_000 });
    await service.capture(captureInput('full'));
    await service.flush();
    expect(service.status('full').status).toBe('FAILURE');

    await rm(collected);
    // Not walked again sooner than the interval: still refused.
    expect((await agentErrorOf(service.capture(captureInput('too-soon')))).code).toBe('RESOURCE_EXHAUSTED');
    clock.now += 5000;
    await service.capture(captureInput('after-collecting'));
    await service.flush();
    expect(service.status('after-collecting').status).toBe('SUCCESS');
    expect((await diskRecords(settings.diskPath)).map((r) => r.record.eventMetadata.eventId)).toEqual([
      'after-collecting',
    ]);
  });

  it('counts what is under the folder at start (files of an earlier run)', async () => {
    const settings = testSettings(work, { batchSize: 1 });
    const first = await start(settings, { quotaBytes: 1024 ** 2 });
    await first.service.capture(captureInput('earlier'));
    await first.service.flush();
    await first.service.close();
    const written = (await listFiles(settings.diskPath)).length;
    expect(written).toBeGreaterThan(0);

    // A quota just below what the earlier run left: the next start knows it is full.
    const quota = new DiskQuota({ root: settings.diskPath, quotaBytes: 1, minFreeBytes: 0 });
    await quota.rescan();
    expect(quota.usedBytes).toBeGreaterThan(0);
    const second = await start(settings, { quotaBytes: quota.usedBytes });
    await second.service.capture(captureInput('later'));
    await second.service.flush();
    expect(second.service.status('later').status).toBe('FAILURE');
    expect((await listFiles(settings.diskPath)).length).toBe(written);
  });
});

describe('startCaptureService', () => {
  it("gives the Disk destination the settings' quota and floor", async () => {
    const quotaOf = async (settings: CaptureSettings, id: string) => {
      const capture = await startCaptureService({ settings, models: loaded.registry });
      try {
        await capture.service.capture(captureInput(id));
        await capture.service.flush();
        return capture.service.status(id);
      } finally {
        await capture.close();
      }
    };
    const full = testSettings(work, { batchSize: 1, diskQuotaBytes: 100_000 });
    await userFile(full, 100_000);
    expect((await quotaOf(full, 'over-quota')).detail).toMatch(/edgefleet_capture_disk_quota_bytes/);
    const fs = await statfs(work);
    const floor = testSettings(join(work, 'floor'), {
      batchSize: 1,
      diskMinFreeBytes: fs.bavail * fs.bsize + 1024 ** 3,
    });
    expect((await quotaOf(floor, 'below-floor')).detail).toMatch(/edgefleet_capture_min_free_bytes/);
    // The defaults leave room for a small capture.
    expect((await quotaOf(testSettings(join(work, 'defaults'), { batchSize: 1 }), 'fits')).status).toBe(
      'SUCCESS',
    );
  });

  it('holds the Disk folder until close: a second capture service on it is refused, naming it, and nothing of the first is touched', async () => {
    const settings = testSettings(work, { batchSize: 1 });
    const first = await startCaptureService({ settings, models: loaded.registry });
    try {
      await first.service.capture(captureInput('first'));
      await first.service.flush();
      // A temporary file of a writer that is gone: the second service's start-up sweep would remove it.
      const leftover = join(settings.diskPath, `.tmp-x-2147483646-${'0'.repeat(8)}`);
      await writeFile(leftover, 'left');
      const refused = await startCaptureService({ settings, models: loaded.registry }).then(
        () => undefined,
        (error: unknown) => error,
      );
      expect(refused).toBeInstanceOf(FolderInUseError);
      expect(refused).toMatchObject({ kind: CAPTURE_FOLDER, folder: settings.diskPath });
      expect((refused as Error).message).toContain(
        `the Disk capture folder ${settings.diskPath} (sagemaker_edge_core_capture_data_disk_path) is in use`,
      );
      expect(await readFile(leftover, 'utf8')).toBe('left');
    } finally {
      await first.close();
    }
    const next = await startCaptureService({ settings, models: loaded.registry });
    await next.close();
  });
});

describe('Disk capture free-space floor (edgefleet_capture_min_free_bytes)', () => {
  it('does not write a batch that would leave less free than the floor: FAILURE naming the key', async () => {
    const settings = testSettings(work, { batchSize: 1 });
    const fs = await statfs(work);
    const { service } = await start(settings, {
      quotaBytes: 1024 ** 4,
      // Above the real free space, to force it.
      minFreeBytes: fs.bavail * fs.bsize + 1024 ** 3,
    });
    await service.capture(captureInput('no-room'));
    await service.flush();
    const failed = service.status('no-room');
    expect(failed.status).toBe('FAILURE');
    expect(failed.detail).toMatch(/edgefleet_capture_min_free_bytes/);
    expect(await diskRecords(settings.diskPath)).toEqual([]);
    expect((await agentErrorOf(service.capture(captureInput('refused')))).code).toBe('RESOURCE_EXHAUSTED');
  });
});
