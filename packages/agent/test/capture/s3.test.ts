import { mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { AgentDataType, AgentEncoding } from '@edgefleet/core';
import { Registry } from 'prom-client';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createServer, type AddressInfo } from 'node:net';
import {
  CaptureService,
  MemoryCaptureQueue,
  ObjectStoreDestination,
  PeriodicUpload,
  S3ObjectStore,
  startCaptureService,
  type ObjectStore,
  type RunningCapture,
} from '../../src/capture/index.js';
import { AgentDatabase, agentDatabasePath, MemoryUploadLedger } from '../../src/state/index.js';
import {
  captureInput,
  floatTensor,
  listFiles,
  startS3,
  testSettings,
  type TestS3,
  useModelRegistry,
} from './helpers.js';

const loaded = useModelRegistry('edgefleet-capture-s3-', { 'image-identity': 'resnet' });

let work: string;
let s3: TestS3;
let running: RunningCapture[] = [];
beforeEach(async () => {
  work = await mkdtemp(join(loaded.root, 'case-'));
  s3 = await startS3(join(work, 's3'));
});
afterEach(async () => {
  for (const r of running) await r.close();
  running = [];
  await s3.close();
});

function cloudSettings(overrides: Parameters<typeof testSettings>[1] = {}) {
  return testSettings(work, {
    destination: 'Cloud',
    cloud: { bucket: s3.bucket, region: 'us-east-1', endpoint: s3.endpoint, credentials: s3.credentials },
    ...overrides,
  });
}

async function start(
  settings: ReturnType<typeof testSettings>,
  extra: Partial<Parameters<typeof startCaptureService>[0]> = {},
) {
  const capture = await startCaptureService({ settings, models: loaded.registry, ...extra });
  running.push(capture);
  return capture;
}

/** Polls (real time) until the check passes. */
async function eventually(check: () => boolean | Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > until) throw new Error('condition not met in time');
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

const image = () => floatTensor('input', [1, 3, 224, 224], 0.25);

describe('Cloud destination (s3rver over real HTTP)', () => {
  it('puts records under <prefix>/<fleet>/<model>/YYYY/MM/DD/HH/<32 hex>.jsonl with raw-data side files, checked field by field', async () => {
    const settings = cloudSettings({ batchSize: 2, modelMonitorFormat: true });
    const { service } = await start(settings);
    const ts = { seconds: 1685563524, nanos: 0 };
    await service.capture(
      captureInput('abc-1685563523430', {
        modelHandle: 'resnet',
        inferenceTimestamp: ts,
        inputTensors: [image()],
        outputTensors: [
          {
            tensorMetadata: { name: Buffer.from('score'), dataType: AgentDataType.FLOAT32, shape: [1, 2] },
            byteData: Buffer.from(new Float32Array([0.1, 0.9]).buffer),
            data: 'byteData',
          },
        ],
        inputs: [
          { name: 'jpg', encoding: AgentEncoding.NONE, byteData: Buffer.alloc(4000, 0xff), data: 'byteData' },
        ],
        outputs: [
          {
            name: 'json',
            encoding: AgentEncoding.BASE64,
            byteData: Buffer.from('{"label":"cat"}'),
            data: 'byteData',
          },
        ],
      }),
    );
    await service.capture(
      captureInput('capture1685563525', { modelHandle: 'resnet', inferenceTimestamp: ts }),
    );
    await service.whenIdle();
    expect(service.status('abc-1685563523430').status).toBe('SUCCESS');

    const hour = 'sme-capture/fleet-a/resnet/2023/05/31/20';
    const keys = await s3.keys();
    // Sorted as the store lists them: '_' sorts before letters, hex names before "raw-data".
    expect(keys).toEqual([
      expect.stringMatching(
        /^sme-capture\/_model-monitor\/resnet\/fleet-a\/2023\/05\/31\/20\/[0-9a-f]{32}\.jsonl$/,
      ),
      expect.stringMatching(new RegExp(`^${hour}/[0-9a-f]{32}\\.jsonl$`)),
      expect.stringMatching(/raw-data\/[0-9a-f]{32}\/abc-1685563523430-aux-input-1\.jpg$/),
      expect.stringMatching(/raw-data\/[0-9a-f]{32}\/abc-1685563523430-input-1\.bin$/),
    ]);
    // Side files sit in a folder named as the batch's manifest.
    const name = keys[1]!.slice(hour.length + 1, -'.jsonl'.length);
    const side = `${hour}/raw-data/${name}`;
    const [first, second] = await s3.records();
    expect(first!.record).toEqual({
      eventVersion: '0',
      eventMetadata: {
        deviceFleetName: 'fleet-a',
        deviceId: 'device-1',
        eventId: 'abc-1685563523430',
        inferenceTime: '2023-05-31T20:05:24',
        modelName: 'resnet',
        modelVersion: '1.0',
      },
      deviceFleetInputs: [
        {
          name: 'input',
          observedContentType: 'Tensor[FLOAT32; 1, 3, 224, 224]',
          encoding: 'BASE64',
          mode: 'Input',
          'data-ref': `s3://capture-bucket/${side}/abc-1685563523430-input-1.bin`,
        },
      ],
      deviceFleetOutputs: [
        {
          name: 'score',
          observedContentType: 'Tensor[FLOAT32; 1, 2]',
          encoding: 'BASE64',
          mode: 'Output',
          data: Buffer.from(new Float32Array([0.1, 0.9]).buffer).toString('base64'),
        },
      ],
      deviceFleetAuxiliaryInputs: [
        {
          name: 'Input-1',
          observedContentType: 'jpg',
          encoding: 'NONE',
          mode: 'Input',
          'data-ref': `s3://capture-bucket/${side}/abc-1685563523430-aux-input-1.jpg`,
        },
      ],
      deviceFleetAuxiliaryOutputs: [
        {
          name: 'Output-1',
          observedContentType: 'json',
          encoding: 'BASE64',
          mode: 'Output',
          data: 'eyJsYWJlbCI6ImNhdCJ9',
        },
      ],
    });
    expect(second!.record.eventMetadata.eventId).toBe('capture1685563525');
    const raw = await s3.get(`${side}/abc-1685563523430-input-1.bin`);
    expect(raw.equals(Buffer.from(new Float32Array(3 * 224 * 224).fill(0.25).buffer))).toBe(true);
    const monitorKey = keys.find((k) => k.includes('_model-monitor'))!;
    const monitor = JSON.parse((await s3.get(monitorKey)).toString().split('\n')[1]!);
    expect(monitor.eventMetadata).toEqual({
      eventId: 'capture1685563525',
      inferenceId: 'capture1685563525',
      inferenceTime: '2023-05-31T20:05:24Z',
    });
    expect(JSON.parse(monitor.captureData.endpointInput.data).inputs[0]).toMatchObject({
      name: 'x',
      datatype: 'FP32',
      shape: [1, 16],
    });
  });

  it('spools while the store is down, keeps accepting captures, and delivers every one once it is back', async () => {
    const metrics = new Registry();
    const settings = cloudSettings({ batchSize: 3, bufferSize: 6 });
    const { service } = await start(settings, { metricsRegistry: metrics });
    await s3.stop();
    const ids = Array.from({ length: 30 }, (_, i) => `offline-${i}`);
    for (const id of ids) {
      // The buffer holds 6; the spool takes batches off it, so captures keep flowing.
      await eventually(() => service.held < settings.bufferSize);
      await service.capture(captureInput(id, { modelHandle: 'resnet' }));
    }
    await service.flush();
    expect(service.spoolState()).toMatchObject({ batches: 10, unreachable: true });
    expect(ids.every((id) => service.status(id).status === 'IN_PROGRESS')).toBe(true);
    expect(await listFiles(settings.spool.dir)).toHaveLength(10 * 2); // a manifest and batch.json each

    await s3.restart();
    await eventually(() => ids.every((id) => service.status(id).status === 'SUCCESS'), 30_000);
    const delivered = (await s3.records()).map((r) => r.record.eventMetadata.eventId);
    expect(delivered.sort()).toEqual([...ids].sort());
    expect(service.spoolState()).toEqual({ batches: 0, bytes: 0, unreachable: false });
    expect(await listFiles(settings.spool.dir)).toEqual([]);
    const text = await metrics.metrics();
    expect(text).toMatch(/edgefleet_capture_uploaded_total\{via="spool"\} 30/);
    expect(text).toMatch(/edgefleet_capture_spool_bytes 0/);
  });

  it('drops the oldest spooled batches past the quota when the store never returns, counted and marked FAILURE', async () => {
    const metrics = new Registry();
    // Each batch of two small captures is about 2.5 KB; the quota holds three or four.
    // One batch written at a time: batches received within the same millisecond are equally old, and
    // this makes their order the order they were formed in.
    const settings = cloudSettings({
      batchSize: 2,
      writeConcurrency: 1,
      spool: { dir: join(work, 'spool'), quotaBytes: 10_000, retryInitialMs: 50, retryMaxMs: 200 },
    });
    const { service } = await start(settings, { metricsRegistry: metrics });
    await s3.stop();
    const ids = Array.from({ length: 20 }, (_, i) => `q-${String(i).padStart(2, '0')}`);
    for (const id of ids) {
      await eventually(() => service.held < settings.bufferSize);
      await service.capture(captureInput(id, { modelHandle: 'resnet' }));
    }
    await service.flush();
    const state = service.spoolState()!;
    expect(state.bytes).toBeLessThanOrEqual(10_000);
    expect(state.batches).toBeGreaterThan(0);
    const statuses = ids.map((id) => service.status(id));
    const failed = ids.filter((_, i) => statuses[i]!.status === 'FAILURE');
    const waiting = ids.filter((_, i) => statuses[i]!.status === 'IN_PROGRESS');
    expect(failed.length + waiting.length).toBe(ids.length);
    expect(waiting).toHaveLength(state.batches * 2);
    // The oldest went first.
    expect(failed).toEqual(ids.slice(0, failed.length));
    expect(service.status(failed[0]!).detail).toMatch(
      /dropped from the offline spool: .* over its quota of 10000 bytes/,
    );
    expect(await metrics.metrics()).toMatch(
      new RegExp(`edgefleet_capture_dropped_total\\{reason="spool-quota"\\} ${failed.length}`),
    );
  });

  it('with the local database, spooled captures and their statuses survive a restart and are delivered after it', async () => {
    const settings = cloudSettings({ batchSize: 2 });
    let database = AgentDatabase.open({ path: agentDatabasePath(join(work, 'data')), synchronous: 'NORMAL' });
    const first = await startCaptureService({ settings, models: loaded.registry, database });
    await s3.stop();
    for (const id of ['r1', 'r2', 'r3'])
      await first.service.capture(captureInput(id, { modelHandle: 'resnet' }));
    await first.close();
    database.close();

    database = AgentDatabase.open({ path: agentDatabasePath(join(work, 'data')), synchronous: 'NORMAL' });
    const second = await start(settings, { database });
    expect(['r1', 'r2', 'r3'].map((id) => second.service.status(id).status)).toEqual([
      'IN_PROGRESS',
      'IN_PROGRESS',
      'IN_PROGRESS',
    ]);
    await s3.restart();
    await eventually(
      () => ['r1', 'r2', 'r3'].every((id) => second.service.status(id).status === 'SUCCESS'),
      30_000,
    );
    expect((await s3.records()).map((r) => r.record.eventMetadata.eventId).sort()).toEqual([
      'r1',
      'r2',
      'r3',
    ]);
    await second.close();
    running = running.filter((r) => r !== second);
    database.close();
  });
});

describe('periodic upload of Disk captures', () => {
  it('logs rounds failing in an outage as the first, then one line a minute with a count, and the recovery', async () => {
    const root = join(work, 'disk');
    await mkdir(join(root, 'edge', 'f'), { recursive: true });
    await writeFile(join(root, 'edge', 'f', 'a.bin'), Buffer.alloc(8, 1));
    const store = new S3ObjectStore({
      bucket: s3.bucket,
      region: 'us-east-1',
      endpoint: s3.endpoint,
      credentials: s3.credentials,
      maxAttempts: 1,
    });
    const lines: { level: string; fields: Record<string, unknown>; message: string }[] = [];
    const line = (level: string) => (fields: object, message: string) =>
      lines.push({ level, fields: fields as Record<string, unknown>, message });
    let now = 1_000_000;
    const upload = new PeriodicUpload({
      root,
      folderPrefix: 'edge',
      store,
      periodMs: 3_600_000,
      keepFiles: false,
      ledger: new MemoryUploadLedger(),
      logger: { info: line('info'), warn: line('warn'), error: line('error') },
      now: () => now,
    });
    const failed = () => lines.filter((l) => l.fields.event === 'capture-upload-failed');
    try {
      await s3.stop();
      for (let i = 0; i < 3; i++) {
        expect(await upload.runOnce()).toBe(0);
        now += 10_000;
      }
      expect(failed()).toHaveLength(1);
      expect(failed()[0]!.message).toMatch(/repeats logged at most once a minute/);
      now += 30_000;
      expect(await upload.runOnce()).toBe(0);
      expect(failed()).toHaveLength(2);
      expect(failed()[1]!.fields).toMatchObject({ failures: 4, failuresNotLogged: 2 });
      await s3.restart();
      expect(await upload.runOnce()).toBe(1);
      expect(failed()).toHaveLength(2);
      expect(lines.find((l) => l.fields.event === 'capture-upload-resumed')).toMatchObject({
        level: 'info',
        fields: { failures: 4 },
      });
    } finally {
      await upload.close();
      store.close();
    }
  });

  it('copies the disk tree to the bucket under the same keys, data-refs rewritten to s3://, then removes the files', async () => {
    const settings = testSettings(work, {
      batchSize: 1,
      base64EmbedLimit: 16,
      periodicUpload: true,
      periodicUploadPeriodSeconds: 3600,
      cloud: { bucket: s3.bucket, region: 'us-east-1', endpoint: s3.endpoint, credentials: s3.credentials },
    });
    const { service } = await start(settings);
    await service.capture(captureInput('p1', { modelHandle: 'resnet' }));
    await service.whenIdle();
    const onDisk = await listFiles(settings.diskPath);
    expect(onDisk).toHaveLength(3); // manifest, input and output side files

    await s3.stop();
    expect(await service.uploadNow()).toBe(0);
    expect(await listFiles(settings.diskPath)).toEqual(onDisk);
    await s3.restart();
    expect(await service.uploadNow()).toBe(3);
    expect(await s3.keys()).toEqual(onDisk);
    expect(await listFiles(settings.diskPath)).toEqual([]);
    const { record } = (await s3.records())[0]!;
    const ref = record.deviceFleetInputs[0]['data-ref'];
    expect(ref).toBe(`s3://capture-bucket/${onDisk.find((k) => k.endsWith('input-1.bin'))}`);
    expect(await service.uploadNow()).toBe(0);
  });

  it('keeps files when asked, and uploads each only once (ledger in the local database)', async () => {
    const settings = testSettings(work, {
      batchSize: 1,
      periodicUpload: true,
      periodicUploadPeriodSeconds: 3600,
      keepUploadedFiles: true,
      cloud: { bucket: s3.bucket, region: 'us-east-1', endpoint: s3.endpoint, credentials: s3.credentials },
    });
    const database = AgentDatabase.open({
      path: agentDatabasePath(join(work, 'data')),
      synchronous: 'NORMAL',
    });
    const capture = await startCaptureService({ settings, models: loaded.registry, database });
    await capture.service.capture(captureInput('k1', { modelHandle: 'resnet' }));
    await capture.service.whenIdle();
    expect(await capture.service.uploadNow()).toBe(1);
    expect(await capture.service.uploadNow()).toBe(0);
    await capture.service.capture(captureInput('k2', { modelHandle: 'resnet' }));
    await capture.service.whenIdle();
    expect(await capture.service.uploadNow()).toBe(1);
    expect(await listFiles(settings.diskPath)).toHaveLength(2);
    expect(await s3.keys()).toEqual(await listFiles(settings.diskPath));
    await capture.close();
    database.close();
  });
});

describe('direct writes failing into the offline spool', () => {
  it('are logged as the first, then at most one a minute with a count, while the spool has not yet failed itself', async () => {
    // A port nothing listens on: the bucket is away for direct writes.
    const closed = createServer();
    await new Promise<void>((done) => closed.listen(0, '127.0.0.1', done));
    const deadPort = (closed.address() as AddressInfo).port;
    await new Promise((done) => closed.close(done));
    const storeAt = (endpoint: string) =>
      new S3ObjectStore({
        bucket: s3.bucket,
        region: 'us-east-1',
        endpoint,
        credentials: s3.credentials,
        maxAttempts: 1,
      });
    const up = storeAt(s3.endpoint);
    const down = storeAt(`http://127.0.0.1:${deadPort}`);
    // A key's first put (the direct write) meets the outage; a second (the spool's) waits for `release`, so the
    // spool's attempt neither fails nor ends while the batches are formed: each batch tries a direct write.
    const seen = new Set<string>();
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    const store: ObjectStore = {
      description: up.description,
      urlFor: (key) => up.urlFor(key),
      put: async (key, body, contentType) => {
        if (!seen.has(key)) {
          seen.add(key);
          return down.put(key, body, contentType);
        }
        await released;
        return up.put(key, body, contentType);
      },
    };
    const warnings: { fields: Record<string, unknown>; message: string }[] = [];
    const settings = cloudSettings({ batchSize: 1 });
    const service = new CaptureService({
      settings,
      models: loaded.registry,
      queue: new MemoryCaptureQueue(),
      destination: new ObjectStoreDestination(store),
      store,
      logger: {
        info: () => undefined,
        warn: (fields, message) => warnings.push({ fields, message }),
        error: () => undefined,
      },
    });
    await service.start();
    try {
      for (const id of ['d1', 'd2', 'd3']) {
        await service.capture(captureInput(id, { modelHandle: 'resnet' }));
        await service.whenIdle();
      }
      const spooled = warnings.filter((w) => /keeping the batch in the offline spool/.test(w.message));
      expect(spooled).toHaveLength(1);
      expect(spooled[0]!.fields).toMatchObject({ event: 'capture-write-spooled' });
      expect(spooled[0]!.fields.err).toBeUndefined();
      expect(spooled[0]!.message).toMatch(/ECONNREFUSED.*repeats logged at most once a minute/);
      release();
      await eventually(() => ['d1', 'd2', 'd3'].every((id) => service.status(id).status === 'SUCCESS'));
    } finally {
      release();
      await service.close();
      up.close();
      down.close();
    }
  });
});
