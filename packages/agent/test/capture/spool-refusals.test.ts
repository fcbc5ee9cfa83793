import { mkdir, mkdtemp, readFile, readdir, rm, stat, utimes, writeFile } from 'node:fs/promises';
import type { IncomingMessage } from 'node:http';
import { createServer as createHttpsServer, request as httpsRequest } from 'node:https';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CaptureSpool, DiskDestination, PeriodicUpload } from '../../src/capture/index.js';
import { MemoryUploadLedger } from '../../src/state/index.js';
import { EdgeFleetObjectStore } from '../../src/capture/edgefleet-store.js';
import type { ObjectStore } from '../../src/capture/object-store.js';
import { renderBatch, type RenderedBatch } from '../../src/capture/records.js';
import {
  enrollDevice,
  operator,
  removeControlPlane,
  startControlPlane,
  until,
  type ControlPlane,
} from '../fleet/support.js';
import { issueMtlsCertificates } from '../support/openssl-mtls.js';
import { captureCounters, captureItem, plantRendering, takenAt } from './helpers.js';

// The offline spool against a real control plane that takes files of at most 1 KiB: a file it refuses for good
// (413 too large, 400 a record naming another device) costs only that file and the records that need it; the
// rest of the batch is delivered.
let plane: ControlPlane;
let store: EdgeFleetObjectStore;
let dir: string;
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- the enrolled agent config, read key by key
let config: any;

beforeAll(async () => {
  plane = await startControlPlane({ config: { captures: { maxFileBytes: 1024 } } });
  dir = await mkdtemp(join(tmpdir(), 'ef-refusals-'));
  await operator(plane, 'POST', '/api/v1/fleets', {
    name: 'plant',
    outputConfig: { s3OutputLocation: 's3://captures/edge' },
  });
  config = JSON.parse(await readFile(await enrollDevice(plane, 'plant', 'cam-1', dir), 'utf8'));
  store = newStore(plane.deviceEndpoint);
}, 60_000);

afterAll(async () => {
  store?.close();
  await removeControlPlane(plane, dir);
});

/** The device's store at `endpoint`, trusting `caFile` (the control plane's CA unless a proxy's). */
function newStore(
  endpoint: string,
  caFile = config.sagemaker_edge_provider_aws_ca_cert_file,
): EdgeFleetObjectStore {
  return new EdgeFleetObjectStore({
    endpoint,
    certFile: config.sagemaker_edge_provider_aws_cert_file,
    keyFile: config.sagemaker_edge_provider_aws_cert_pk_file,
    caFile,
  });
}

/** Where the control plane (local blob folder) writes the fleet's capture `key`; undefined when absent. */
const stored = (key: string) =>
  readFile(join(plane.dataDir, 'blobs', 'fleet-output', 'captures', ...key.split('/')), 'utf8').catch(
    () => undefined,
  );

const HOUR = 3_600_000;
const T = Date.UTC(2026, 11, 6, 5);

/**
 * Captures a (a 2 KiB tensor: a side file over the server's 1 KiB) and b (a 256-byte side file) in one hour,
 * c (embedded) in the next, rendered as the capture service does, with the Model Monitor copy. The server keeps
 * a capture id's first records only: another test passes ids of its own.
 */
function batchOfThree(batchId: string, [a, b, c] = ['a', 'b', 'c']): RenderedBatch {
  const at = (id: string, bytes: number, time: number) =>
    takenAt(captureItem(id, Buffer.alloc(bytes, 1), 'mlp'), time);
  return renderBatch(
    batchId,
    [at(a!, 2048, T), at(b!, 256, T + 1), at(c!, 16, T + HOUR)],
    plantRendering(store, { modelMonitorFormat: true }),
  );
}

/** An answer a proxy gives instead of the control plane. */
interface ProxyAnswer {
  status: number;
  contentType: string;
  body: string;
}

/**
 * A TLS-terminating reverse proxy in front of the control plane's device endpoint, as nginx with a small
 * `client_max_body_size`: a request with a body over `maxBodyBytes` gets nginx's 413 HTML page (no JSON, so no
 * code); the others are sent on with the device's certificate. Its own server certificate is made by OpenSSL.
 */
async function limitingProxy(target: string, maxBodyBytes: number) {
  return answeringProxy(target, (request) =>
    Number(request.headers['content-length'] ?? 0) > maxBodyBytes
      ? {
          status: 413,
          contentType: 'text/html',
          body: '<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n<center><h1>413 Request Entity Too Large</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n',
        }
      : undefined,
  );
}

/**
 * A TLS-terminating reverse proxy in front of the control plane's device endpoint: a request `answer` answers
 * gets that answer (counted in `refused`); the others are sent on with the device's certificate. Its own server
 * certificate is made by OpenSSL.
 */
async function answeringProxy(target: string, answer: (request: IncomingMessage) => ProxyAnswer | undefined) {
  const proxyDir = await mkdtemp(join(tmpdir(), 'ef-proxy-'));
  const { key, cert } = await issueMtlsCertificates(proxyDir, 'proxy-client');
  const upstream = new URL(target);
  const [deviceCert, deviceKey, planeCa] = await Promise.all(
    [
      config.sagemaker_edge_provider_aws_cert_file,
      config.sagemaker_edge_provider_aws_cert_pk_file,
      config.sagemaker_edge_provider_aws_ca_cert_file,
    ].map((f: string) => readFile(f)),
  );
  const state = { refused: 0 };
  const server = createHttpsServer({ key, cert }, (request, response) => {
    const answered = answer(request);
    if (answered !== undefined) {
      state.refused += 1;
      request.resume();
      request.on('end', () => {
        response.writeHead(answered.status, { 'content-type': answered.contentType });
        response.end(answered.body);
      });
      return;
    }
    const forwarded = httpsRequest(
      {
        host: upstream.hostname,
        port: upstream.port,
        method: request.method,
        path: request.url,
        headers: request.headers,
        cert: deviceCert,
        key: deviceKey,
        ca: planeCa,
      },
      (answer) => {
        response.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(response);
      },
    );
    forwarded.on('error', () => response.destroy());
    request.pipe(forwarded);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    get refused() {
      return state.refused;
    },
    endpoint: `https://127.0.0.1:${(server.address() as AddressInfo).port}`,
    caFile: join(proxyDir, 'ca.pem'),
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await rm(proxyDir, { recursive: true, force: true });
    },
  };
}

function logLines() {
  const lines: { level: string; fields: Record<string, unknown>; message: string }[] = [];
  const line = (level: string) => (fields: object, message: string) =>
    lines.push({ level, fields: fields as Record<string, unknown>, message });
  return { lines, logger: { info: line('info'), warn: line('warn'), error: line('error') } };
}

/**
 * A spool in `<dir>/<name>` uploading to `target`, with what it reports collected: statuses, log lines, metrics.
 * Its retries wait for the test (`scheduled`: call one to retry), unless `realTimers` (then after 10-20 ms).
 */
function spoolUnderTest(
  name: string,
  target: ObjectStore,
  options: { realTimers?: boolean; setAsideAfterFailures?: number } = {},
) {
  const { lines, logger } = logLines();
  const registry = new Registry();
  const scheduled: (() => void)[] = [];
  const delivered: string[] = [];
  const dropped: { ids: readonly string[]; detail: string }[] = [];
  const spoolDir = join(dir, name);
  const spool = new CaptureSpool({
    dir: spoolDir,
    quotaBytes: 1024 * 1024,
    store: target,
    retry: { initialMs: 10, maxMs: 20 },
    onDelivered: (ids) => delivered.push(...ids),
    onDropped: (ids, detail) => dropped.push({ ids, detail }),
    metrics: captureCounters(registry),
    logger,
    ...(!options.realTimers && { timers: { set: (run) => scheduled.push(run), clear: () => undefined } }),
    ...(options.setAsideAfterFailures !== undefined && {
      setAsideAfterFailures: options.setAsideAfterFailures,
    }),
  });
  return { spool, spoolDir, lines, registry, scheduled, delivered, dropped };
}

describe('capture spool: files refused for good', () => {
  it('drops a refused side file and the records naming it, delivers the rest, and keeps that across a retry', async () => {
    const batch = batchOfThree('1'.repeat(32));
    const aSide = batch.files.find((f) => f.key.includes('/raw-data/') && f.key.includes('/a-'))!.key;
    const bSide = batch.files.find((f) => f.key.includes('/raw-data/') && f.key.includes('/b-'))!.key;
    const manifests = batch.files.filter((f) => f.key.endsWith('.jsonl')).map((f) => f.key);
    expect(manifests).toHaveLength(4); // two hours, each in both formats

    // The first attempt's manifests meet the server down (an outage after the side files): the refusal must
    // already be recorded in the spool, so that the retry neither sends a's file again nor fails a twice.
    const closed = createServer();
    await new Promise<void>((done) => closed.listen(0, '127.0.0.1', done));
    const port = (closed.address() as AddressInfo).port;
    await new Promise((done) => closed.close(done));
    const down = newStore(`https://127.0.0.1:${port}`);
    const puts: string[] = [];
    let outage = true;
    const counted: ObjectStore = {
      description: store.description,
      urlFor: (key) => store.urlFor(key),
      put: (key, body, contentType) => {
        puts.push(key);
        return (outage && key.endsWith('.jsonl') ? down : store).put(key, body, contentType);
      },
    };
    const { spool, spoolDir, lines, registry, scheduled, delivered, dropped } = spoolUnderTest(
      'spool-side',
      counted,
    );
    try {
      await spool.open();
      await spool.add(batch);
      await until(
        () => lines.find((l) => l.fields.event === 'capture-upload-failed'),
        'the outage is met',
        20_000,
      );
      expect(dropped).toHaveLength(1);
      expect(dropped[0]!.ids).toEqual(['a']);
      expect(dropped[0]!.detail).toMatch(/refused by the EdgeFleet control plane .*413/);
      const spooled = JSON.parse(await readFile(join(spoolDir, batch.batchId, 'batch.json'), 'utf8'));
      expect(spooled.captureIds).toEqual(['b', 'c']);
      expect(spooled.files.map((f: { key: string }) => f.key)).not.toContain(aSide);

      outage = false;
      scheduled.shift()!();
      await until(() => (delivered.length > 0 ? true : undefined), 'the rest is delivered', 20_000);
      expect(delivered).toEqual(['b', 'c']);
      expect(dropped).toHaveLength(1);
      expect(puts.filter((k) => k === aSide)).toHaveLength(1);
      expect(await stored(aSide)).toBeUndefined();
      expect(await stored(bSide)).toBeDefined();
      // Every manifest went; those of a's hour without a's record, and nothing stored names a's file.
      const texts = await Promise.all(manifests.map(stored));
      expect(texts.every((t) => t !== undefined)).toBe(true);
      const all = texts.join('');
      expect(all).not.toContain(store.urlFor(aSide));
      expect(all).toContain(store.urlFor(bSide));
      const ids = texts.flatMap((t) =>
        t!
          .trim()
          .split('\n')
          .map((l) => JSON.parse(l).eventMetadata.eventId),
      );
      expect(ids.sort()).toEqual(['b', 'b', 'c', 'c']);

      const refusedLines = lines.filter((l) => l.fields.event === 'capture-upload-refused');
      expect(refusedLines).toHaveLength(1);
      expect(refusedLines[0]).toMatchObject({
        level: 'warn',
        fields: { refusedKeys: [aSide], captures: 1, failure: 'rejected' },
      });
      expect(await registry.getSingleMetricAsString('edgefleet_capture_dropped_total')).toContain(
        'edgefleet_capture_dropped_total{reason="refused"} 1',
      );
      // The folder goes after the statuses are set (onDelivered), so a busy machine may see it a moment longer.
      await until(
        async () => ((await readdir(spoolDir)).length === 0 ? true : undefined),
        'the batch folder is removed',
        20_000,
      );
    } finally {
      await spool.close();
      down.close();
    }
  });

  it('keeps a manifest the server answers 400 for (a record naming another device, as after a re-enrolment: a setting), delivers nothing of it, sends the other manifest once, and retries it', async () => {
    const record = (id: string, device: string) =>
      JSON.stringify({
        eventVersion: '0',
        eventMetadata: { deviceFleetName: 'plant', deviceId: device, eventId: id, modelName: 'mlp' },
      });
    const key = (name: string) => `edge/plant/mlp/2026/12/06/05/${name}.jsonl`;
    const puts: string[] = [];
    const counted: ObjectStore = {
      description: store.description,
      urlFor: (k) => store.urlFor(k),
      put: (k, body, contentType) => {
        puts.push(k);
        return store.put(k, body, contentType);
      },
    };
    const { spool, spoolDir, lines, registry, scheduled, delivered, dropped } = spoolUnderTest(
      'spool-manifest',
      counted,
    );
    const batchId = '2'.repeat(32);
    try {
      await spool.open();
      await spool.add({
        batchId,
        captureIds: ['x', 'y'],
        oldestReceivedAt: 1,
        files: [
          // The server refuses a record naming another device than the certificate's: 400.
          {
            key: key('x'),
            contentType: 'application/jsonl',
            body: Buffer.from(`${record('x', 'cam-2')}\n`),
            kind: 'manifest',
          },
          {
            key: key('y'),
            contentType: 'application/jsonl',
            body: Buffer.from(`${record('y', 'cam-1')}\n`),
            kind: 'manifest',
          },
        ],
      });
      await until(() => (scheduled.length > 0 ? true : undefined), 'the refusal is met', 20_000);
      // Nothing dropped: the batch stays whole in the spool, to be retried.
      expect(dropped).toEqual([]);
      expect(delivered).toEqual([]);
      expect(await stored(key('y'))).toBeDefined();
      expect(await stored(key('x'))).toBeUndefined();
      const spooled = JSON.parse(await readFile(join(spoolDir, batchId, 'batch.json'), 'utf8'));
      expect(spooled.captureIds).toEqual(['x', 'y']);
      const refused = lines.filter((l) => l.fields.event === 'capture-upload-refused');
      expect(refused).toHaveLength(1);
      expect(refused[0]).toMatchObject({
        level: 'warn',
        fields: { refusedKeys: [key('x')], status: 400, kept: true },
        message: expect.stringContaining('kept in the spool'),
      });
      // Said once, as the refusal: not a second line as an upload failure.
      expect(lines.filter((l) => l.fields.event === 'capture-upload-failed')).toEqual([]);
      expect(await registry.getSingleMetricAsString('edgefleet_capture_refused_files_total')).toContain(
        'edgefleet_capture_refused_files_total{via="spool"} 1',
      );

      // Retried: only x goes again (y was stored), refused again, within the minute: counted, not logged again.
      scheduled.shift()!();
      await until(() => (scheduled.length > 0 ? true : undefined), 'the retry is refused', 20_000);
      expect(puts.filter((k) => k === key('y'))).toHaveLength(1);
      expect(puts.filter((k) => k === key('x'))).toHaveLength(2);
      expect(dropped).toEqual([]);
      expect(lines.filter((l) => l.fields.event === 'capture-upload-refused')).toHaveLength(1);
      expect(await registry.getSingleMetricAsString('edgefleet_capture_refused_files_total')).toContain(
        'edgefleet_capture_refused_files_total{via="spool"} 2',
      );
      expect(spool.batches).toBe(1);
    } finally {
      await spool.close();
    }
  });

  it("takes a side file for a side file whatever its extension: an auxiliary input named 'jsonl' refused drops its capture, not another", async () => {
    // ja's auxiliary input (the client named it "jsonl"), over the server's 1 KiB, holds lines that look like
    // records of jb: it is the application's data, not a manifest.
    const a = {
      ...captureItem('ja', Buffer.alloc(16, 1), 'mlp'),
      inferenceTime: T,
      inputs: [
        {
          contentType: 'jsonl',
          encoding: 'JSON' as const,
          data: Buffer.from('{"eventMetadata":{"eventId":"jb"}}\n'.repeat(64)),
        },
      ],
    };
    const batch = renderBatch(
      '3'.repeat(32),
      [a, { ...captureItem('jb', Buffer.alloc(16, 2), 'mlp'), inferenceTime: T }],
      plantRendering(store),
    );
    const aux = batch.files.find((f) => f.key.endsWith('-aux-input-1.jsonl'))!;
    const manifests = batch.files.filter((f) => f !== aux && f.key.endsWith('.jsonl')).map((f) => f.key);
    expect(manifests).toHaveLength(1);
    const { spool, delivered, dropped } = spoolUnderTest('spool-jsonl-side', store, { realTimers: true });
    try {
      await spool.open();
      await spool.add(batch);
      await until(() => (delivered.length > 0 ? true : undefined), 'the rest is delivered', 20_000);
      expect(dropped.map((d) => d.ids)).toEqual([['ja']]);
      expect(delivered).toEqual(['jb']);
      expect(await stored(aux.key)).toBeUndefined();
      const texts = await Promise.all(manifests.map(stored));
      expect(texts.join('')).not.toContain(store.urlFor(aux.key));
      expect(texts.every((t) => t?.includes('"eventId":"jb"'))).toBe(true);
    } finally {
      await spool.close();
    }
  });

  it('uploads a batch spooled before file kinds were kept, taking them from the keys', async () => {
    const batch = batchOfThree('4'.repeat(32), ['oa', 'ob', 'oc']);
    // Spooled while the store is away, then batch.json rewritten as an older agent wrote it: no kinds.
    const offline: ObjectStore = {
      description: store.description,
      urlFor: (key) => store.urlFor(key),
      put: () => Promise.reject(Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' })),
    };
    // Its retry waits for the test, which never runs it.
    const { spool: first, spoolDir } = spoolUnderTest('spool-old-batch', offline);
    await first.open();
    await first.add(batch);
    await first.close();
    const file = join(spoolDir, batch.batchId, 'batch.json');
    const spooled = JSON.parse(await readFile(file, 'utf8'));
    for (const f of spooled.files) delete f.kind;
    await writeFile(file, JSON.stringify(spooled));

    const { spool, delivered, dropped } = spoolUnderTest('spool-old-batch', store, { realTimers: true });
    try {
      await spool.open();
      await until(() => (delivered.length > 0 ? true : undefined), 'the old batch is delivered', 20_000);
      // oa's side file is refused (over 1 KiB): its records go too, as for a batch that kept its kinds.
      expect(dropped.flatMap((d) => d.ids)).toEqual(['oa']);
      expect(delivered).toEqual(['ob', 'oc']);
      const manifests = batch.files.filter((f) => /\/[0-9a-f]{32}\.jsonl$/.test(f.key));
      expect(manifests).toHaveLength(4);
      const texts = await Promise.all(manifests.map((f) => stored(f.key)));
      expect(texts.every((t) => t !== undefined && !t.includes('/oa-'))).toBe(true);
    } finally {
      await spool.close();
    }
  });
});

describe("capture spool: a proxy's 413", () => {
  it('keeps the files a reverse proxy refuses with 413 (no control-plane code), drops nothing, and once the proxy is out of the way gives up only what the control plane itself refuses', async () => {
    // The proxy's body limit (200 bytes) is under both side files (a: 2 KiB, b: 256 bytes); the control plane
    // takes at most 1 KiB: a setting on the way, then a file the control plane itself will never take.
    const proxy = await limitingProxy(plane.deviceEndpoint, 200);
    const behindProxy = newStore(proxy.endpoint, proxy.caFile);
    const batch = batchOfThree('a'.repeat(32), ['pa', 'pb', 'pc']);
    const sides = batch.files.filter((f) => f.kind === 'side').map((f) => f.key);
    expect(sides).toHaveLength(2);
    let viaProxy = true;
    const switched: ObjectStore = {
      description: store.description,
      urlFor: (key) => store.urlFor(key),
      put: (key, body, contentType) => (viaProxy ? behindProxy : store).put(key, body, contentType),
    };
    const { spool, spoolDir, lines, registry, scheduled, delivered, dropped } = spoolUnderTest(
      'spool-proxy-413',
      switched,
    );
    try {
      await spool.open();
      await spool.add(batch);
      await until(() => (scheduled.length > 0 ? true : undefined), 'the proxy refuses', 20_000);
      expect(proxy.refused).toBe(2);
      // Nothing dropped: every file and capture stays in the spool.
      expect(dropped).toEqual([]);
      const spooled = JSON.parse(await readFile(join(spoolDir, batch.batchId, 'batch.json'), 'utf8'));
      expect(spooled.captureIds).toEqual(['pa', 'pb', 'pc']);
      expect(spooled.files).toHaveLength(batch.files.length);
      const refused = lines.filter((l) => l.fields.event === 'capture-upload-refused');
      expect(refused).toHaveLength(1);
      expect(refused[0]).toMatchObject({ level: 'warn', fields: { status: 413, kept: true } });
      expect((refused[0]!.fields.refusedKeys as string[]).sort()).toEqual([...sides].sort());
      expect(await registry.getSingleMetricAsString('edgefleet_capture_refused_files_total')).toContain(
        'edgefleet_capture_refused_files_total{via="spool"} 2',
      );
      expect(await registry.getSingleMetricAsString('edgefleet_capture_dropped_total')).not.toContain(
        'reason="refused"',
      );

      viaProxy = false;
      scheduled.shift()!();
      await until(() => (delivered.length > 0 ? true : undefined), 'the rest is delivered', 20_000);
      // The control plane's own 413 PayloadTooLarge for a's file: that, and only that, gives a up.
      expect(dropped).toEqual([{ ids: ['pa'], detail: expect.stringMatching(/413/) }]);
      expect(delivered).toEqual(['pb', 'pc']);
    } finally {
      await spool.close();
      behindProxy.close();
      await proxy.close();
    }
  });
});

describe('capture spool: a 409 from the control plane', () => {
  it('never sets aside a batch whose file the control plane answers 409 (an earlier cut upload of it still being written) while it takes the others, and delivers it once that write is over', async () => {
    // The first attempts of the side file meet the control plane's 409: its earlier upload, cut on a lossy link, is
    // still held (until the server sees it end, or its lease runs out). The proxy gives the plane's own answer.
    const at = (id: string, time: number) => takenAt(captureItem(id, Buffer.alloc(256, 5), 'mlp'), time);
    const render = (batchId: string, id: string, time: number) =>
      renderBatch(batchId, [at(id, time)], plantRendering(store));
    const batch = render('c0'.repeat(16), 'held-1', T);
    const side = batch.files.find((f) => f.kind === 'side')!.key;
    let held = 3;
    const proxy = await answeringProxy(plane.deviceEndpoint, (request) => {
      const key = new URL(request.url ?? '/', 'https://plane').searchParams.get('key');
      if (key !== side || held === 0) return undefined;
      held -= 1;
      return {
        status: 409,
        contentType: 'application/json',
        body: JSON.stringify({
          code: 'Conflict',
          message: `capture key ${key} is being written by another upload of this device's now; capture objects are written once; send it again once that upload is answered`,
          details: { key },
        }),
      };
    });
    const behindProxy = newStore(proxy.endpoint, proxy.caFile);
    const { spool, scheduled, delivered, dropped } = spoolUnderTest('spool-409', behindProxy, {
      setAsideAfterFailures: 2,
    });
    try {
      await spool.open();
      await spool.add(batch);
      await until(() => (scheduled.length === 1 ? true : undefined), 'the first 409', 20_000);
      // Between attempts the store takes other batches: a lasting answer would be the batch's own failure.
      for (let round = 1; round <= 4 && !delivered.includes('held-1'); round++) {
        await spool.add(render(`c${round}`.repeat(16), `other-${round}`, T + round));
        await until(
          () => (delivered.includes(`other-${round}`) ? true : undefined),
          'another batch goes',
          20_000,
        );
        scheduled.shift()!();
        await until(
          () =>
            scheduled.length === 1 || spool.setAsideBatches > 0 || delivered.includes('held-1')
              ? true
              : undefined,
          `the held batch tried again (${round})`,
          20_000,
        );
      }
      expect(proxy.refused).toBe(3);
      expect(spool.setAsideBatches).toBe(0);
      expect(dropped).toEqual([]);
      expect(delivered).toContain('held-1');
      expect(await stored(side)).toBeDefined();
    } finally {
      await spool.close();
      behindProxy.close();
      await proxy.close();
    }
  });
});

describe('capture spool: a refused Edge Manager manifest', () => {
  it("given up (the control plane's own 413 PayloadTooLarge), takes its captures' Model Monitor records too, so Model Monitor sees no record of a failed capture", async () => {
    // Eight auxiliary inputs, embedded, go in the Edge Manager record only (Model Monitor's carries the tensor):
    // each Edge Manager manifest is over the server's 1 KiB, each Model Monitor copy under it, and alone would be
    // stored.
    const at = (id: string, time: number) => ({
      ...captureItem(id, Buffer.alloc(16, 3), 'mlp'),
      inputs: Array.from({ length: 8 }, () => ({
        contentType: 'application/octet-stream',
        encoding: 'BASE64' as const,
        data: Buffer.alloc(60, 9),
      })),
      inferenceTime: time,
      receivedAt: time,
    });
    const batch = renderBatch(
      'd0'.repeat(16),
      [at('gx', T), at('gy', T + HOUR)],
      plantRendering(store, { modelMonitorFormat: true }),
    );
    const edge = batch.files.filter((f) => f.kind === 'manifest');
    const monitor = batch.files.filter((f) => f.kind === 'monitor-manifest');
    expect(edge).toHaveLength(2);
    expect(monitor).toHaveLength(2);
    for (const file of edge) expect(file.body.byteLength).toBeGreaterThan(1024);
    for (const file of monitor) expect(file.body.byteLength).toBeLessThanOrEqual(1024);
    const { spool, spoolDir, dropped } = spoolUnderTest('spool-em-given-up', store, { realTimers: true });
    try {
      await spool.open();
      await spool.add(batch);
      await until(
        async () => ((await readdir(spoolDir)).length === 0 ? true : undefined),
        'the batch ends',
        20_000,
      );
      expect(dropped).toEqual([{ ids: ['gx', 'gy'], detail: expect.stringMatching(/^refused by .*413/) }]);
      for (const file of [...edge, ...monitor]) expect(await stored(file.key)).toBeUndefined();
    } finally {
      await spool.close();
    }
  });

  it("refused with 400 (a setting), keeps the batch and sends none of its captures' Model Monitor records meanwhile", async () => {
    // Rendered as another device of the fleet: the server refuses its Edge Manager manifest (400, the record names
    // cam-2, the certificate is cam-1's); Model Monitor's records name no device, and alone would be stored.
    const at = (id: string, time: number) => takenAt(captureItem(id, Buffer.alloc(16, 3), 'mlp'), time);
    const batch = renderBatch(
      '7'.repeat(32),
      [at('mx', T), at('my', T + HOUR)],
      plantRendering(store, { deviceName: 'cam-2', modelMonitorFormat: true }),
    );
    const monitor = batch.files.filter((f) => f.kind === 'monitor-manifest');
    expect(monitor).toHaveLength(2);
    const { spool, scheduled, dropped } = spoolUnderTest('spool-em-refused', store);
    try {
      await spool.open();
      await spool.add(batch);
      await until(() => (scheduled.length > 0 ? true : undefined), 'the refusal is met', 20_000);
      expect(dropped).toEqual([]);
      expect(spool.batches).toBe(1);
      for (const file of monitor) expect(await stored(file.key)).toBeUndefined();
    } finally {
      await spool.close();
    }
  });
});

describe('capture spool: the spooled batch cannot be rewritten', () => {
  it('says so apart from upload failures, logs the refusals met, and counts the dropped captures once', async () => {
    const batch = batchOfThree('6'.repeat(32), ['wa', 'wb', 'wc']);
    const closed = createServer();
    await new Promise<void>((done) => closed.listen(0, '127.0.0.1', done));
    const port = (closed.address() as AddressInfo).port;
    await new Promise((done) => closed.close(done));
    const down = newStore(`https://127.0.0.1:${port}`);
    let outage = true;
    const switched: ObjectStore = {
      description: store.description,
      urlFor: (key) => store.urlFor(key),
      put: (key, body, contentType) => (outage ? down : store).put(key, body, contentType),
    };
    const { spool, spoolDir, lines, registry, scheduled, delivered, dropped } = spoolUnderTest(
      'spool-rewrite',
      switched,
    );
    const batchFile = join(spoolDir, batch.batchId, 'batch.json');
    try {
      await spool.open();
      await spool.add(batch);
      await until(() => (scheduled.length > 0 ? true : undefined), 'the outage is met', 20_000);
      // A real local fault: batch.json cannot be replaced (a folder holding a file stands at its name).
      const saved = await readFile(batchFile);
      await rm(batchFile);
      await mkdir(join(batchFile, 'blocker'), { recursive: true });
      outage = false;
      scheduled.shift()!();
      await until(() => (scheduled.length > 0 ? true : undefined), 'the rewrite fails', 20_000);
      const rewriteLines = lines.filter((l) => l.fields.event === 'capture-spool-rewrite-failed');
      expect(rewriteLines).toHaveLength(1);
      expect(rewriteLines[0]!.message).toMatch(
        new RegExp(`^capture spool: cannot rewrite the spooled batch ${join(spoolDir, batch.batchId)} \\(`),
      );
      // Not an upload failure: the store was reached; the refusal it made is logged.
      expect(lines.filter((l) => l.fields.event === 'capture-upload-failed')).toHaveLength(1);
      expect(lines.filter((l) => l.fields.event === 'capture-upload-refused')).toHaveLength(1);

      await rm(batchFile, { recursive: true });
      await writeFile(batchFile, saved);
      scheduled.shift()!();
      await until(() => (delivered.length > 0 ? true : undefined), 'the rest is delivered', 20_000);
      expect(delivered).toEqual(['wb', 'wc']);
      // Its status set again (the same FAILURE), but counted once.
      expect(dropped.map((d) => d.ids)).toEqual([['wa'], ['wa']]);
      expect(await registry.getSingleMetricAsString('edgefleet_capture_dropped_total')).toContain(
        'edgefleet_capture_dropped_total{reason="refused"} 1',
      );
    } finally {
      await spool.close();
      down.close();
    }
  });
});

describe('capture periodic upload: files refused for good', () => {
  /** Two Disk captures, pa's side file over the server's 1 KiB limit and the oldest file (met first each round). */
  async function diskWithRefusedFile(batchId: string, ids: [string, string]) {
    const root = await mkdtemp(join(tmpdir(), 'ef-periodic-refused-'));
    const disk = new DiskDestination(root);
    const batch = renderBatch(
      batchId,
      [
        takenAt(captureItem(ids[0], Buffer.alloc(2048, 1), 'mlp'), T),
        takenAt(captureItem(ids[1], Buffer.alloc(256, 2), 'mlp'), T + 1),
      ],
      plantRendering(disk),
    );
    await disk.write(batch.files);
    const big = batch.files.find((f) => f.key.includes(`/${ids[0]}-`))!;
    await utimes(disk.pathOf(big.key), new Date(T - HOUR), new Date(T - HOUR));
    const registry = new Registry();
    const metrics = captureCounters(registry);
    return { root, disk, batch, big, registry, metrics };
  }

  it('skips a file the control plane refuses with its own 413 PayloadTooLarge, records the refusal, removes the file, and uploads the files after it', async () => {
    const { root, disk, batch, big, registry, metrics } = await diskWithRefusedFile('5'.repeat(32), [
      'pa',
      'pb',
    ]);
    const { lines, logger } = logLines();
    const upload = new PeriodicUpload({
      root,
      folderPrefix: 'edge',
      store,
      periodMs: 3_600_000,
      keepFiles: false,
      ledger: new MemoryUploadLedger(),
      metrics,
      logger,
    });
    try {
      expect(await upload.runOnce()).toBe(batch.files.length - 1);
      for (const file of batch.files.filter((f) => f !== big)) expect(await stored(file.key)).toBeDefined();
      expect(await stored(big.key)).toBeUndefined();
      // Recorded (logged and counted), then removed: a file the store will never take does not fill the disk.
      const refused = lines.filter((l) => l.fields.event === 'capture-upload-refused');
      expect(refused).toHaveLength(1);
      expect(refused[0]).toMatchObject({
        level: 'warn',
        fields: { key: big.key, path: disk.pathOf(big.key), failure: 'rejected', status: 413, removed: true },
        message: expect.stringContaining(`removed ${disk.pathOf(big.key)}`),
      });
      expect(lines.filter((l) => l.fields.event === 'capture-upload-failed')).toEqual([]);
      expect(await registry.getSingleMetricAsString('edgefleet_capture_refused_files_total')).toContain(
        'edgefleet_capture_refused_files_total{via="periodic"} 1',
      );
      await expect(stat(disk.pathOf(big.key))).rejects.toMatchObject({ code: 'ENOENT' });
      // Everything went, one way or the other: nothing is left under the prefix.
      expect(await readdir(join(root, 'edge'))).toEqual([]);
      expect(await upload.runOnce()).toBe(0);
      expect(lines.filter((l) => l.fields.event === 'capture-upload-refused')).toHaveLength(1);
    } finally {
      await upload.close();
    }
  });

  it('with keep_uploaded_files, keeps the refused file as it keeps uploaded ones, and does not send it again while it is unchanged', async () => {
    const { root, disk, batch, big, registry, metrics } = await diskWithRefusedFile('8'.repeat(32), [
      'ka',
      'kb',
    ]);
    const { lines, logger } = logLines();
    const upload = new PeriodicUpload({
      root,
      folderPrefix: 'edge',
      store,
      periodMs: 3_600_000,
      keepFiles: true,
      ledger: new MemoryUploadLedger(),
      metrics,
      logger,
    });
    try {
      expect(await upload.runOnce()).toBe(batch.files.length - 1);
      expect((await stat(disk.pathOf(big.key))).size).toBe(2048);
      const refused = lines.filter((l) => l.fields.event === 'capture-upload-refused');
      expect(refused).toHaveLength(1);
      expect(refused[0]!.fields).toMatchObject({ key: big.key, removed: false });
      expect(await upload.runOnce()).toBe(0);
      expect(lines.filter((l) => l.fields.event === 'capture-upload-refused')).toHaveLength(1);
      expect(await registry.getSingleMetricAsString('edgefleet_capture_refused_files_total')).toContain(
        'edgefleet_capture_refused_files_total{via="periodic"} 1',
      );
    } finally {
      await upload.close();
    }
  });

  it("keeps every file the store refuses with 403 (a folder prefix outside the fleet's output), removing none, and skips them while unchanged", async () => {
    const root = await mkdtemp(join(tmpdir(), 'ef-periodic-forbidden-'));
    const disk = new DiskDestination(root);
    // Written under a prefix the server does not take for this fleet (its output is s3://captures/edge): a setting
    // the operator can fix, not a fault of the files.
    const batch = renderBatch(
      '6'.repeat(32),
      [takenAt(captureItem('fa', Buffer.alloc(256, 1), 'mlp'), T)],
      plantRendering(disk, { folderPrefix: 'moved' }),
    );
    await disk.write(batch.files);
    const registry = new Registry();
    const metrics = captureCounters(registry);
    const { lines, logger } = logLines();
    const upload = new PeriodicUpload({
      root,
      folderPrefix: 'moved',
      store,
      periodMs: 3_600_000,
      keepFiles: false,
      ledger: new MemoryUploadLedger(),
      metrics,
      logger,
    });
    try {
      expect(batch.files.length).toBeGreaterThan(1);
      expect(await upload.runOnce()).toBe(0);
      for (const file of batch.files) expect((await stat(disk.pathOf(file.key))).isFile()).toBe(true);
      const refused = lines.filter((l) => l.fields.event === 'capture-upload-refused');
      // The first refusal logged, the others within the line limit.
      expect(refused).toHaveLength(1);
      expect(refused[0]).toMatchObject({
        level: 'warn',
        fields: { status: 403, removed: false },
        message: expect.stringContaining('not sent again while it is unchanged'),
      });
      expect(await registry.getSingleMetricAsString('edgefleet_capture_refused_files_total')).toContain(
        `edgefleet_capture_refused_files_total{via="periodic"} ${batch.files.length}`,
      );
      // Skipped while unchanged: not sent, counted or logged again.
      expect(await upload.runOnce()).toBe(0);
      expect(lines.filter((l) => l.fields.event === 'capture-upload-refused')).toHaveLength(1);
      expect(await registry.getSingleMetricAsString('edgefleet_capture_refused_files_total')).toContain(
        `edgefleet_capture_refused_files_total{via="periodic"} ${batch.files.length}`,
      );
      for (const file of batch.files) expect((await stat(disk.pathOf(file.key))).isFile()).toBe(true);
    } finally {
      await upload.close();
      await rm(root, { recursive: true, force: true });
    }
  });

  it("keeps a file a proxy answers 413 without the control plane's code (nginx's body limit), skipping it while unchanged, and uploads the files after it", async () => {
    const { root, disk, batch, big, registry, metrics } = await diskWithRefusedFile('9'.repeat(32), [
      'xa',
      'xb',
    ]);
    const proxy = await limitingProxy(plane.deviceEndpoint, 1024);
    const behindProxy = newStore(proxy.endpoint, proxy.caFile);
    const { lines, logger } = logLines();
    const upload = new PeriodicUpload({
      root,
      folderPrefix: 'edge',
      store: behindProxy,
      periodMs: 3_600_000,
      keepFiles: false,
      ledger: new MemoryUploadLedger(),
      metrics,
      logger,
    });
    try {
      // The small files pass the proxy to the control plane; the large one gets the proxy's page.
      expect(await upload.runOnce()).toBe(batch.files.length - 1);
      for (const file of batch.files.filter((f) => f !== big)) expect(await stored(file.key)).toBeDefined();
      expect(proxy.refused).toBe(1);
      // A setting the operator can fix: the file stays.
      expect((await stat(disk.pathOf(big.key))).size).toBe(2048);
      const refused = lines.filter((l) => l.fields.event === 'capture-upload-refused');
      expect(refused).toHaveLength(1);
      expect(refused[0]).toMatchObject({
        level: 'warn',
        fields: { key: big.key, status: 413, removed: false },
        message: expect.stringContaining('not sent again while it is unchanged'),
      });
      expect(await registry.getSingleMetricAsString('edgefleet_capture_refused_files_total')).toContain(
        'edgefleet_capture_refused_files_total{via="periodic"} 1',
      );
      // Skipped while unchanged: not sent again.
      expect(await upload.runOnce()).toBe(0);
      expect(proxy.refused).toBe(1);
      expect((await stat(disk.pathOf(big.key))).size).toBe(2048);
    } finally {
      await upload.close();
      behindProxy.close();
      await proxy.close();
      await rm(root, { recursive: true, force: true });
    }
  });

  it('keeps a manifest the server answers 400 ValidationError for (a record naming another device, as after a re-enrolment): a setting, not the file, may be at fault', async () => {
    const root = await mkdtemp(join(tmpdir(), 'ef-periodic-invalid-'));
    const disk = new DiskDestination(root);
    const batch = renderBatch(
      '7'.repeat(32),
      [takenAt(captureItem('va', Buffer.alloc(16, 1), 'mlp'), T)],
      plantRendering(disk, { deviceName: 'cam-9' }),
    );
    await disk.write(batch.files);
    const { lines, logger } = logLines();
    const upload = new PeriodicUpload({
      root,
      folderPrefix: 'edge',
      store,
      periodMs: 3_600_000,
      keepFiles: false,
      ledger: new MemoryUploadLedger(),
      logger,
    });
    try {
      // One embedded capture: the manifest alone.
      expect(batch.files).toHaveLength(1);
      expect(await upload.runOnce()).toBe(0);
      const refused = lines.filter((l) => l.fields.event === 'capture-upload-refused');
      expect(refused).toHaveLength(1);
      expect(refused[0]!.fields).toMatchObject({ status: 400, removed: false });
      expect((await stat(disk.pathOf(batch.files[0]!.key))).isFile()).toBe(true);
      // Skipped while unchanged: not sent, logged or removed.
      expect(await upload.runOnce()).toBe(0);
      expect(lines.filter((l) => l.fields.event === 'capture-upload-refused')).toHaveLength(1);
      expect((await stat(disk.pathOf(batch.files[0]!.key))).isFile()).toBe(true);
    } finally {
      await upload.close();
      await rm(root, { recursive: true, force: true });
    }
  });
});
