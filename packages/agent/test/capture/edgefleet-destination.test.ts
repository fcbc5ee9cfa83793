import { randomBytes, X509Certificate } from 'node:crypto';
import { mkdtemp, readFile, readdir } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CaptureSpool } from '../../src/capture/index.js';
import { EdgeFleetObjectStore } from '../../src/capture/edgefleet-store.js';
import { RetryLaterError, type ObjectStore } from '../../src/capture/object-store.js';
import {
  enrollDevice,
  operator,
  reenroll,
  removeControlPlane,
  startControlPlane,
  until,
  type ControlPlane,
} from '../fleet/support.js';
import { rawQueryOf, startRawUpload } from '../../../../test/support/raw-upload.js';
import { uploadSlotsHeld } from '../../../../test/support/upload-slots.js';

// The EdgeFleet destination against a real control plane: a file the server refuses for good (here a key
// outside the fleet's output prefix, 403) fails its captures at once and does not hold back later batches; files
// go as raw bodies; a 429's Retry-After is honoured.
let plane: ControlPlane;
let store: EdgeFleetObjectStore;
let dir: string;
let certFile: string;
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- the enrolled agent config, read key by key
let config: any;

beforeAll(async () => {
  // Bodies over 1 KiB need an upload slot, one per device: a test holds cam-1's to be told 429, Retry-After 5.
  plane = await startControlPlane({
    config: { captures: { largeBodyBytes: 1024, maxConcurrentUploads: 2, maxConcurrentUploadsPerDevice: 1 } },
  });
  dir = await mkdtemp(join(tmpdir(), 'ef-dest-'));
  await operator(plane, 'POST', '/api/v1/fleets', {
    name: 'plant',
    outputConfig: { s3OutputLocation: 's3://captures/edge' },
  });
  config = JSON.parse(await readFile(await enrollDevice(plane, 'plant', 'cam-1', dir), 'utf8'));
  certFile = config.sagemaker_edge_provider_aws_cert_file;
  store = new EdgeFleetObjectStore({
    endpoint: plane.deviceEndpoint,
    certFile: config.sagemaker_edge_provider_aws_cert_file,
    keyFile: config.sagemaker_edge_provider_aws_cert_pk_file,
    caFile: config.sagemaker_edge_provider_aws_ca_cert_file,
  });
});

afterAll(async () => {
  store?.close();
  await removeControlPlane(plane, dir);
});

/** Where the control plane (local blob folder) writes the fleet's capture `key`. */
const storedPath = (key: string) =>
  join(plane.dataDir, 'blobs', 'fleet-output', 'captures', ...key.split('/'));
const sideKey = (name: string) => `edge/plant/mlp/2026/12/06/05/raw-data/${name}`;

/**
 * A raw upload of cam-1 of 2 KiB (over the 1 KiB that needs a slot) under `key` whose first `sent` bytes go now,
 * the rest on `finish` (resolving to the answer's status).
 */
async function rawUpload(key: string, sent: number): Promise<{ finish(): Promise<number> }> {
  const tls = {
    cert: await readFile(config.sagemaker_edge_provider_aws_cert_file, 'utf8'),
    key: await readFile(config.sagemaker_edge_provider_aws_cert_pk_file, 'utf8'),
    ca: await readFile(config.sagemaker_edge_provider_aws_ca_cert_file, 'utf8'),
  };
  const upload = startRawUpload(plane.deviceEndpoint, tls, rawQueryOf(key), Buffer.alloc(2048, 1), { sent });
  upload.answer.catch(() => undefined);
  return {
    finish: async () => {
      upload.send();
      return (await upload.answer).status;
    },
  };
}

/**
 * Holds cam-1's one upload slot until `finish`: resolves once the server holds it (its /metrics gauge) and another
 * large upload of cam-1 is refused (429). Waits on the slot, not on probes retried until a deadline: a probe
 * that got in first took the slot itself, and the held upload was refused instead (a CI flake under load).
 */
async function holdSlot(name: string): Promise<{ finish(): Promise<number> }> {
  // An earlier upload's slot is given back once its connection closes, which its client may see later.
  await uploadSlotsHeld(plane.operatorUrl, plane.adminToken, 0);
  const held = await rawUpload(sideKey(name), 10);
  await uploadSlotsHeld(plane.operatorUrl, plane.adminToken, 1);
  expect(await (await rawUpload(`elsewhere/plant/probe-${name}`, 0)).finish()).toBe(429);
  return held;
}

/** A manifest of one cam-1 record (the server refuses records naming another device or fleet). */
const manifest = (id: string) =>
  Buffer.from(
    `${JSON.stringify({ eventVersion: '0', eventMetadata: { deviceFleetName: 'plant', deviceId: 'cam-1', eventId: id, modelName: 'mlp' } })}\n`,
  );

describe('EdgeFleet capture destination', () => {
  it("keeps a batch the server refuses with 403 (a key outside the fleet's output: a setting), delivers the next one, and sets the refused one aside once it keeps failing while others go", async () => {
    await expect(store.put('elsewhere/x.jsonl', manifest('x'), 'application/jsonl')).rejects.toMatchObject({
      name: 'RefusedByStoreError',
      status: 403,
      aboutTheFile: false,
    });

    const delivered: string[] = [];
    const dropped: { ids: readonly string[]; detail: string }[] = [];
    const spoolDir = join(dir, 'spool');
    const spool = new CaptureSpool({
      dir: spoolDir,
      quotaBytes: 1024 * 1024,
      store,
      retry: { initialMs: 50, maxMs: 100 },
      onDelivered: (ids) => delivered.push(...ids),
      onDropped: (ids, detail) => dropped.push({ ids, detail }),
      setAsideAfterFailures: 1,
    });
    await spool.open();
    const batch = (id: string, key: string, createdAt: number) => ({
      batchId: id.padEnd(32, '0'),
      captureIds: [id],
      oldestReceivedAt: createdAt,
      files: [{ key, contentType: 'application/jsonl', body: manifest(id), kind: 'manifest' as const }],
    });
    await spool.add(batch('aaaa', 'elsewhere/plant/mlp/a.jsonl', 1));
    await spool.add(batch('bbbb', 'edge/plant/mlp/2026/12/06/05/b.jsonl', 2));
    await until(() => (delivered.length > 0 ? true : undefined), 'the second batch is delivered', 20_000);
    expect(delivered).toEqual(['bbbb']);
    // Not dropped for a 403: retried; once it fails again after the store took another batch, set aside (the
    // bound here is 1), its file kept there for the operator.
    await until(() => (dropped.length > 0 ? true : undefined), 'the refused batch is set aside', 20_000);
    expect(dropped).toHaveLength(1);
    expect(dropped[0]!.ids).toEqual(['aaaa']);
    expect(dropped[0]!.detail).toMatch(
      /could never be uploaded .*outside fleet plant's output.*set aside in/,
    );
    expect(await readdir(join(spoolDir, 'set-aside', 'aaaa'.padEnd(32, '0')))).toEqual(
      expect.arrayContaining(['batch.json', 'set-aside.json', '0']),
    );
    expect(await readdir(spoolDir)).toEqual(['set-aside']);
    await spool.close();
  });

  it('uploads with the certificate in the files now, after a renewal or re-enrollment revoked the old one', async () => {
    const serialOf = async () => new X509Certificate(await readFile(certFile, 'utf8')).serialNumber;
    const key = (name: string) => `edge/plant/mlp/2026/12/06/05/${name}.jsonl`;
    await store.put(key('before'), manifest('before'), 'application/jsonl');
    const oldSerial = await serialOf();
    await reenroll(plane, 'cam-1', dir);
    expect(await serialOf()).not.toBe(oldSerial);
    await operator(plane, 'POST', '/api/v1/devices/cam-1/certificates/revoke', { serial: oldSerial });
    await store.put(key('after'), manifest('after'), 'application/jsonl');
  });

  it('sends a multi-MiB file as the raw body; it arrives byte for byte', async () => {
    const file = randomBytes(5 * 1024 * 1024 + 3);
    await store.put(sideKey('big.bin'), file, 'image/png');
    expect((await readFile(storedPath(sideKey('big.bin')))).equals(file)).toBe(true);
  });

  it("makes no request before the server's Retry-After has passed (429 for a busy upload slot)", async () => {
    let now = 1_000_000;
    const waiting = new EdgeFleetObjectStore({
      endpoint: plane.deviceEndpoint,
      certFile: config.sagemaker_edge_provider_aws_cert_file,
      keyFile: config.sagemaker_edge_provider_aws_cert_pk_file,
      caFile: config.sagemaker_edge_provider_aws_ca_cert_file,
      now: () => now,
    });
    try {
      const held = await holdSlot('held-1.bin');
      const file = Buffer.alloc(4096, 7);
      const refused = await waiting
        .put(sideKey('gated.bin'), file, 'application/octet-stream')
        .catch((e) => e);
      expect(refused).toBeInstanceOf(RetryLaterError);
      expect(refused.retryAfterMs).toBe(5000);
      expect(refused.message).toMatch(/HTTP 429 LimitExceeded: device cam-1 is already uploading/);
      // The slot is free again, so a request now would be taken: the store must not make one yet.
      expect(await held.finish()).toBe(200);
      now += 4000;
      const early = await waiting.put(sideKey('gated.bin'), file, 'application/octet-stream').catch((e) => e);
      expect(early).toBeInstanceOf(RetryLaterError);
      expect(early.retryAfterMs).toBe(1000);
      await expect(readFile(storedPath(sideKey('gated.bin')))).rejects.toThrow(/ENOENT/);
      now += 1000;
      await waiting.put(sideKey('gated.bin'), file, 'application/octet-stream');
      expect((await readFile(storedPath(sideKey('gated.bin')))).equals(file)).toBe(true);
    } finally {
      waiting.close();
    }
  });

  it("waits the server's Retry-After before the spool's next attempt, not its own shorter backoff, then delivers", async () => {
    const held = await holdSlot('held-2.bin');
    let now = 5_000_000;
    const gated = new EdgeFleetObjectStore({
      endpoint: plane.deviceEndpoint,
      certFile: config.sagemaker_edge_provider_aws_cert_file,
      keyFile: config.sagemaker_edge_provider_aws_cert_pk_file,
      caFile: config.sagemaker_edge_provider_aws_ca_cert_file,
      now: () => now,
    });
    // The real store, its puts counted.
    let attempts = 0;
    const counted: ObjectStore = {
      description: gated.description,
      urlFor: (key) => gated.urlFor(key),
      put: (key, body, contentType) => {
        attempts += 1;
        return gated.put(key, body, contentType);
      },
    };
    // The spool's next attempt runs when the test says, after moving the store's clock by the delay.
    const scheduled: { run: () => void; ms: number }[] = [];
    const warnings: { fields: Record<string, unknown>; message: string }[] = [];
    const delivered: string[] = [];
    const spool = new CaptureSpool({
      dir: join(dir, 'spool-retry-after'),
      quotaBytes: 1024 * 1024,
      store: counted,
      // Its own backoff would retry within 20 ms.
      retry: { initialMs: 10, maxMs: 20 },
      onDelivered: (ids) => delivered.push(...ids),
      onDropped: () => undefined,
      logger: {
        info: () => undefined,
        warn: (fields: object, message: string) =>
          warnings.push({ fields: fields as Record<string, unknown>, message }),
        error: () => undefined,
      },
      timers: {
        set: (run, ms) => {
          const timer = { run, ms };
          scheduled.push(timer);
          return timer;
        },
        clear: (timer) => scheduled.splice(scheduled.indexOf(timer as (typeof scheduled)[number]), 1),
      },
    });
    const file = Buffer.alloc(4096, 3);
    try {
      await spool.open();
      await spool.add({
        batchId: 'cccc'.padEnd(32, '0'),
        captureIds: ['cccc'],
        oldestReceivedAt: 1,
        files: [{ key: sideKey('c.bin'), contentType: 'application/octet-stream', body: file, kind: 'side' }],
      });
      const told = await until(
        () => warnings.find((w) => w.fields.retryAfterMs !== undefined),
        'the spool is told to wait',
        20_000,
      );
      expect(told.fields.retryAfterMs).toBe(5000);
      expect(told.message).toMatch(/asked to wait 5 s \(Retry-After\); retrying in [56] s/);
      expect(JSON.stringify(told)).not.toMatch(/PRIVATE KEY|BEGIN CERTIFICATE/);
      // One attempt, and the next one not before the wait.
      expect(attempts).toBe(1);
      expect(scheduled).toHaveLength(1);
      expect(scheduled[0]!.ms).toBeGreaterThanOrEqual(5000);
      expect(delivered).toEqual([]);

      expect(await held.finish()).toBe(200);
      const next = scheduled.shift()!;
      now += next.ms;
      next.run();
      await until(() => (delivered.length > 0 ? true : undefined), 'the batch is delivered', 20_000);
      expect(delivered).toEqual(['cccc']);
      expect(attempts).toBe(2);
      expect((await readFile(storedPath(sideKey('c.bin')))).equals(file)).toBe(true);
    } finally {
      await spool.close();
      gated.close();
      await held.finish().catch(() => undefined);
    }
  });
  it('logs an unreachable server as one event line with one clean reason and no stack, and the recovery', async () => {
    // A port nothing listens on: the device API is down.
    const closed = createServer();
    await new Promise<void>((done) => closed.listen(0, '127.0.0.1', done));
    const port = (closed.address() as AddressInfo).port;
    await new Promise((done) => closed.close(done));
    const down = new EdgeFleetObjectStore({
      endpoint: `https://127.0.0.1:${port}`,
      certFile: config.sagemaker_edge_provider_aws_cert_file,
      keyFile: config.sagemaker_edge_provider_aws_cert_pk_file,
      caFile: config.sagemaker_edge_provider_aws_ca_cert_file,
    });
    // The first attempt meets the server down, the next the real one (the outage ended).
    let attempts = 0;
    const recovering: ObjectStore = {
      description: store.description,
      urlFor: (key) => store.urlFor(key),
      put: (key, body, contentType) => {
        attempts += 1;
        return (attempts === 1 ? down : store).put(key, body, contentType);
      },
    };
    const lines: { level: string; fields: Record<string, unknown>; message: string }[] = [];
    const line = (level: string) => (fields: object, message: string) =>
      lines.push({ level, fields: fields as Record<string, unknown>, message });
    const scheduled: (() => void)[] = [];
    const delivered: string[] = [];
    const spool = new CaptureSpool({
      dir: join(dir, 'spool-unreachable'),
      quotaBytes: 1024 * 1024,
      store: recovering,
      retry: { initialMs: 10, maxMs: 20 },
      onDelivered: (ids) => delivered.push(...ids),
      onDropped: () => undefined,
      logger: { info: line('info'), warn: line('warn'), error: line('error') },
      timers: { set: (run) => scheduled.push(run), clear: () => undefined },
    });
    try {
      await spool.open();
      await spool.add({
        batchId: 'dddd'.padEnd(32, '0'),
        captureIds: ['dddd'],
        oldestReceivedAt: 1,
        files: [
          {
            key: sideKey('d.bin'),
            contentType: 'application/octet-stream',
            body: Buffer.alloc(16, 4),
            kind: 'side',
          },
        ],
      });
      const failed = await until(
        () => lines.find((l) => l.fields.event === 'capture-upload-failed'),
        'the failure is logged',
        20_000,
      );
      expect(failed.level).toBe('warn');
      expect(failed.fields).toMatchObject({ failure: 'unreachable', failures: 1 });
      expect(failed.fields.err).toBeUndefined();
      const text = JSON.stringify(failed);
      expect(text.split('ECONNREFUSED')).toHaveLength(2);
      expect(failed.message).toMatch(
        new RegExp(
          `cannot upload to .*\\(${sideKey('d.bin')}: connect ECONNREFUSED 127\\.0\\.0\\.1:${port}\\); retrying in`,
        ),
      );

      scheduled.shift()!();
      await until(() => (delivered.length > 0 ? true : undefined), 'the batch is delivered', 20_000);
      expect(lines.find((l) => l.fields.event === 'capture-upload-resumed')).toMatchObject({
        level: 'info',
        fields: { failures: 1 },
      });
    } finally {
      await spool.close();
      down.close();
    }
  });

  it('logs an outage of many retries as its first failure, then one line a minute with a count, and the recovery', async () => {
    const closed = createServer();
    await new Promise<void>((done) => closed.listen(0, '127.0.0.1', done));
    const port = (closed.address() as AddressInfo).port;
    await new Promise((done) => closed.close(done));
    const down = new EdgeFleetObjectStore({
      endpoint: `https://127.0.0.1:${port}`,
      certFile: config.sagemaker_edge_provider_aws_cert_file,
      keyFile: config.sagemaker_edge_provider_aws_cert_pk_file,
      caFile: config.sagemaker_edge_provider_aws_ca_cert_file,
    });
    let outage = true;
    let attempts = 0;
    const recovering: ObjectStore = {
      description: store.description,
      urlFor: (key) => store.urlFor(key),
      put: (key, body, contentType) => {
        attempts += 1;
        return (outage ? down : store).put(key, body, contentType);
      },
    };
    const lines: { level: string; fields: Record<string, unknown>; message: string }[] = [];
    const line = (level: string) => (fields: object, message: string) =>
      lines.push({ level, fields: fields as Record<string, unknown>, message });
    const scheduled: (() => void)[] = [];
    const delivered: string[] = [];
    let now = 1_000_000;
    const spool = new CaptureSpool({
      dir: join(dir, 'spool-outage'),
      quotaBytes: 1024 * 1024,
      store: recovering,
      retry: { initialMs: 10, maxMs: 20 },
      onDelivered: (ids) => delivered.push(...ids),
      onDropped: () => undefined,
      logger: { info: line('info'), warn: line('warn'), error: line('error') },
      timers: { set: (run) => scheduled.push(run), clear: () => undefined },
      now: () => now,
    });
    const failedLines = () => lines.filter((l) => l.fields.event === 'capture-upload-failed');
    /** Runs the next retry and waits until it has failed. */
    const retry = async () => {
      const before = attempts;
      scheduled.shift()!();
      await until(
        () => (attempts > before && scheduled.length > 0 ? true : undefined),
        'the retry fails',
        20_000,
      );
    };
    try {
      await spool.open();
      await spool.add({
        batchId: 'eeee'.padEnd(32, '0'),
        captureIds: ['eeee'],
        oldestReceivedAt: 1,
        files: [
          {
            key: sideKey('e.bin'),
            contentType: 'application/octet-stream',
            body: Buffer.alloc(16, 5),
            kind: 'side',
          },
        ],
      });
      await until(() => (scheduled.length > 0 ? true : undefined), 'the first attempt fails', 20_000);
      expect(failedLines()).toHaveLength(1);
      expect(failedLines()[0]!.message).toMatch(/repeats logged at most once a minute/);
      // Nine more failures within the minute: no line for any of them.
      for (let i = 0; i < 9; i++) {
        now += 5_000;
        await retry();
      }
      expect(failedLines()).toHaveLength(1);
      // A minute after the first line: one line, with the failures left out since.
      now += 15_000;
      await retry();
      expect(failedLines()).toHaveLength(2);
      expect(failedLines()[1]!.fields).toMatchObject({ failures: 11, failuresNotLogged: 9 });
      expect(failedLines()[1]!.message).toMatch(/9 more failed attempt\(s\) since the last line, not logged/);
      // One more, left out; then the outage ends.
      now += 1_000;
      await retry();
      outage = false;
      scheduled.shift()!();
      await until(() => (delivered.length > 0 ? true : undefined), 'the batch is delivered', 20_000);
      expect(failedLines()).toHaveLength(2);
      expect(lines.find((l) => l.fields.event === 'capture-upload-resumed')).toMatchObject({
        level: 'info',
        fields: { failures: 12, failuresNotLogged: 1 },
      });
    } finally {
      await spool.close();
      down.close();
    }
  });
});
