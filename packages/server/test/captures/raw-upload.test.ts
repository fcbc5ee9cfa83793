/**
 * Capture files sent as the raw body (`POST /api/v1/device/captures/files/raw`, application/octet-stream, the key
 * and media type in the query): streamed to the fleet's output through the same limits as the JSON form, which
 * older agents still send. Through the real device API (mutual TLS), database and blob folder.
 */
import { randomBytes } from 'node:crypto';
import { readFile, readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { assertValidBlobKey } from '../../src/blobs/index.js';
import { rawCaptureFileQuerySchema } from '../../src/captures/index.js';
import { secondsToNextUtcDay } from '../../src/captures/capture-ingest.js';
import { deviceCall } from '../support/device.js';
import { databaseEngines } from '../support/engines.js';
import { captureUsageOf } from '../support/capture-usage.js';
import {
  rawQueryOf,
  startRawUpload,
  uploadRawFile,
  type RawAnswer,
} from '../../../../test/support/raw-upload.js';
import { enrollDevice, startTestServer, type EnrolledDevice, type TestServer } from '../support/server.js';
import { uploadSlotsHeld } from '../../../../test/support/upload-slots.js';

const engines = await databaseEngines();
const HOUR = 'mlp/2026/12/06/05';
const RAW_PATH = '/api/v1/device/captures/files/raw';
const utcDayOf = (ms: number) => Math.floor(ms / 86_400_000);
const key = (file: string) => `edge/plant/${HOUR}/raw-data/${file}`;

/** One whole request of the device to `urlPath` with these headers and body. */
function deviceRequest(
  t: TestServer,
  device: EnrolledDevice,
  urlPath: string,
  headers: Record<string, string>,
  body: Buffer,
): Promise<RawAnswer> {
  const [pathOnly, query = ''] = urlPath.split('?');
  const started = startRawUpload(t.server.deviceUrl, device.tls, query, body, {
    urlPath: pathOnly!,
    onlyHeaders: headers,
  });
  started.send();
  return started.answer;
}

/** One Edge Manager capture record line of cam-1 for `captureId`. */
const record = (captureId: string) =>
  JSON.stringify({
    eventVersion: '0',
    eventMetadata: { deviceFleetName: 'plant', deviceId: 'cam-1', eventId: captureId, modelName: 'mlp' },
  });

const MAX_FILE_BYTES = 8 * 1024 * 1024;

async function setUpFleet(t: TestServer, names: string[]): Promise<Record<string, EnrolledDevice>> {
  await t.call('POST', '/api/v1/fleets', {
    token: t.adminToken,
    body: { name: 'plant', outputConfig: { s3OutputLocation: 's3://captures/edge' } },
  });
  await t.call('POST', '/api/v1/fleets/plant/devices', {
    token: t.adminToken,
    body: { devices: names.map((name) => ({ name })) },
  });
  const devices: Record<string, EnrolledDevice> = {};
  for (const name of names) devices[name] = await enrollDevice(t, name);
  return devices;
}

describe.each(engines)('raw capture uploads on $engine', (fixture) => {
  let t: TestServer;
  let devices: Record<string, EnrolledDevice>;
  beforeAll(async () => {
    if (!fixture.available) return;
    t = await startTestServer({
      database: await fixture.createLocation(),
      config: {
        captures: {
          maxFileBytes: MAX_FILE_BYTES,
          dailyQuotaBytesPerDevice: 2 * MAX_FILE_BYTES,
          largeBodyBytes: 1024,
          maxConcurrentUploads: 4,
          maxConcurrentUploadsPerDevice: 1,
        },
      },
    });
    devices = await setUpFleet(t, ['cam-1', 'cam-2', 'cam-3', 'cam-q']);
  });
  afterAll(() => t?.stop());

  const storedPath = (fileKey: string) => path.join(t.dataDir, 'blobs', 'fleet-output', 'captures', fileKey);
  const exists = (fileKey: string) =>
    stat(storedPath(fileKey)).then(
      () => true,
      () => false,
    );

  it.skipIf(!fixture.available)(
    "refuses a key that is a stored key's folder, or lies under a stored key, with a 400 naming it, storing nothing and charging nothing",
    async () => {
      const cam = devices['cam-3']!;
      const usageOf = () => captureUsageOf(t, 'cam-3');
      const jsonUpload = (fileKey: string, body: Buffer) =>
        deviceCall(t.server.deviceUrl, cam.tls, 'POST', '/api/v1/device/captures/files', {
          body: { key: fileKey, contentType: 'application/octet-stream', data: body.toString('base64') },
        });
      expect((await uploadRawFile(t.server.deviceUrl, cam.tls, key('nest/x'), Buffer.from('x'))).status).toBe(
        200,
      );
      expect(
        (await uploadRawFile(t.server.deviceUrl, cam.tls, key('tree/a/b'), Buffer.from('b'))).status,
      ).toBe(200);
      const charged = await usageOf();
      // Under a stored key (its file is where a folder is needed), then a stored key's folder; raw and JSON.
      for (const [fileKey, conflicting] of [
        [key('nest/x/y'), key('nest/x')],
        [key('tree/a'), key('tree/a')],
      ] as const) {
        for (const answer of [
          await uploadRawFile(t.server.deviceUrl, cam.tls, fileKey, Buffer.alloc(3000, 1)),
          await jsonUpload(fileKey, Buffer.alloc(300, 1)),
        ]) {
          expect(answer).toMatchObject({
            status: 400,
            body: { code: 'ValidationError', details: { conflictingKey: conflicting } },
          });
          expect(answer.body.message).toContain(`the capture key ${fileKey} cannot be stored`);
          expect(answer.body.message).toMatch(/cannot hold a key that is also a folder of other keys/);
        }
      }
      expect(await usageOf()).toBe(charged);
      expect(await readFile(storedPath(key('nest/x')), 'utf8')).toBe('x');
      expect(await readFile(storedPath(key('tree/a/b')), 'utf8')).toBe('b');
      expect(await readdir(path.join(t.dataDir, 'blobs', '.tmp'))).toEqual([]);
    },
  );

  it.skipIf(!fixture.available)(
    'reads a small file (within captures.largeBodyBytes, no upload slot) whole before it opens a temp file for it',
    async () => {
      const body = Buffer.alloc(1000, 7);
      const held = startRawUpload(
        t.server.deviceUrl,
        devices['cam-2']!.tls,
        rawQueryOf(key('slow-small.bin')),
        body,
        {
          sent: 100,
        },
      );
      held.answer.catch(() => undefined);
      await held.started;
      // Another device's upload, sent after it, is stored meanwhile.
      const other = await uploadRawFile(
        t.server.deviceUrl,
        devices['cam-1']!.tls,
        key('beside.bin'),
        Buffer.from('b'),
      );
      expect(other.status).toBe(200);
      // No temp file waits for the small file's body (else each slow small upload held a descriptor).
      expect(await readdir(path.join(t.dataDir, 'blobs', '.tmp'))).toEqual([]);
      held.send();
      expect((await held.answer).status).toBe(200);
      expect((await readFile(storedPath(key('slow-small.bin')))).equals(body)).toBe(true);
    },
  );

  it.skipIf(!fixture.available)('stores a multi-MiB file sent raw byte for byte', async () => {
    const file = randomBytes(6 * 1024 * 1024 + 17);
    const answer = await uploadRawFile(
      t.server.deviceUrl,
      devices['cam-1']!.tls,
      key('big.bin'),
      file,
      'image/png',
    );
    expect(answer.status).toBe(200);
    expect(answer.body).toEqual({
      location: expect.stringMatching(/fleet-output\/captures\/edge\/plant\/.*\/big\.bin$/),
      records: 0,
      duplicates: 0,
      bytes: file.length,
    });
    expect((await readFile(storedPath(key('big.bin')))).equals(file)).toBe(true);
    // An empty file is refused (the agent never writes one; each claim is a row to pay for).
    const empty = await uploadRawFile(
      t.server.deviceUrl,
      devices['cam-1']!.tls,
      key('empty.bin'),
      Buffer.alloc(0),
    );
    expect(empty).toMatchObject({ status: 400, body: { code: 'ValidationError' } });
    await expect(readFile(storedPath(key('empty.bin')))).rejects.toThrow(/ENOENT/);
    // Sent again (the agent's retry): the same file, the same answer.
    expect(
      (await uploadRawFile(t.server.deviceUrl, devices['cam-1']!.tls, key('big.bin'), file)).status,
    ).toBe(200);
    expect((await readFile(storedPath(key('big.bin')))).equals(file)).toBe(true);
  });

  it.skipIf(!fixture.available)(
    'stores a raw manifest once per capture id, and takes the JSON form of older agents alike',
    async () => {
      const manifestKey = (n: number) => `edge/plant/${HOUR}/m${n}.jsonl`;
      const first = await uploadRawFile(
        t.server.deviceUrl,
        devices['cam-1']!.tls,
        manifestKey(1),
        Buffer.from(`${record('r-a')}\n${record('r-b')}\n`),
        'application/jsonl',
      );
      expect(first.body).toMatchObject({ records: 2, duplicates: 0 });
      // The JSON form: r-b was stored from another manifest, so it is left out.
      const jsonBody = Buffer.from(
        JSON.stringify({
          key: manifestKey(2),
          contentType: 'application/jsonl',
          data: Buffer.from(`${record('r-b')}\n${record('r-c')}\n`).toString('base64'),
        }),
      );
      const json = await deviceRequest(
        t,
        devices['cam-1']!,
        '/api/v1/device/captures/files',
        { 'content-type': 'application/json', 'content-length': String(jsonBody.length) },
        jsonBody,
      );
      expect(json.status).toBe(200);
      expect(json.body).toMatchObject({ records: 1, duplicates: 1 });
      expect(await readFile(storedPath(manifestKey(2)), 'utf8')).toBe(`${record('r-c')}\n`);
      // Raw again, with r-c stored from the JSON one.
      const third = await uploadRawFile(
        t.server.deviceUrl,
        devices['cam-1']!.tls,
        manifestKey(3),
        Buffer.from(`${record('r-c')}\n${record('r-d')}\n`),
        'application/jsonl',
      );
      expect(third.body).toMatchObject({ records: 1, duplicates: 1 });
      expect(await readFile(storedPath(manifestKey(3)), 'utf8')).toBe(`${record('r-d')}\n`);
    },
  );

  it.skipIf(!fixture.available)(
    'refuses an oversize raw body with 413 before reading it, and stores nothing',
    async () => {
      const body = Buffer.alloc(MAX_FILE_BYTES + 1, 1);
      // Not one byte of the body is sent: the answer must come without it.
      const upload = startRawUpload(
        t.server.deviceUrl,
        devices['cam-2']!.tls,
        rawQueryOf(key('huge.bin')),
        body,
      );
      const answer = await upload.answer;
      upload.abort();
      expect(answer.status).toBe(413);
      expect(answer.headers.connection).toBe('close');
      expect(answer.body).toMatchObject({
        code: 'PayloadTooLarge',
        details: { maxFileBytes: MAX_FILE_BYTES },
      });
      expect(answer.body.message).toMatch(
        new RegExp(
          `is ${MAX_FILE_BYTES + 1} bytes; the server accepts at most ${MAX_FILE_BYTES} .*captures\\.maxFileBytes`,
        ),
      );
      expect(await exists(key('huge.bin'))).toBe(false);
      // It took no slot (cam-2 has one): a large upload goes through at once.
      expect(
        (
          await uploadRawFile(
            t.server.deviceUrl,
            devices['cam-2']!.tls,
            key('fits.bin'),
            Buffer.alloc(4096, 2),
          )
        ).status,
      ).toBe(200);
    },
  );

  it.skipIf(!fixture.available)(
    'refuses a raw body of another media type (415) or of unknown length (411)',
    async () => {
      const other = startRawUpload(
        t.server.deviceUrl,
        devices['cam-2']!.tls,
        rawQueryOf(key('typed.bin')),
        Buffer.alloc(10),
        {
          headers: { 'content-type': 'application/json' },
        },
      );
      other.send();
      const typed = await other.answer;
      expect(typed.status).toBe(415);
      expect(typed.body.message).toMatch(/Content-Type application\/octet-stream; got "application\/json"/);

      const chunked = await deviceRequest(
        t,
        devices['cam-2']!,
        `${RAW_PATH}?${rawQueryOf(key('chunked.bin'))}`,
        { 'content-type': 'application/octet-stream', 'transfer-encoding': 'chunked' },
        Buffer.alloc(10),
      );
      expect(chunked.status).toBe(411);
      // And the JSON route takes no raw body.
      const toJson = await deviceRequest(
        t,
        devices['cam-2']!,
        '/api/v1/device/captures/files',
        { 'content-type': 'application/octet-stream', 'content-length': '10' },
        Buffer.alloc(10),
      );
      expect(toJson.status).toBe(415);
      expect(toJson.body.message).toMatch(/takes JSON; send a raw application\/octet-stream body to .*\/raw/);
      expect(chunked.body.message).toMatch(/needs a Content-Length header/);
      expect(await exists(key('typed.bin'))).toBe(false);
      expect(await exists(key('chunked.bin'))).toBe(false);
    },
  );

  it.skipIf(!fixture.available)(
    'tells a device that is over its quota and out of upload slots when the quota renews, not to retry in seconds',
    async (context) => {
      const dayAtStart = utcDayOf(Date.now());
      const cam = devices['cam-q']!;
      // Leaves 5000 bytes of today's quota (two files of at most captures.maxFileBytes).
      for (const [i, bytes] of [MAX_FILE_BYTES, MAX_FILE_BYTES - 5000].entries()) {
        expect(
          (await uploadRawFile(t.server.deviceUrl, cam.tls, key(`q${i}.bin`), Buffer.alloc(bytes, 3))).status,
        ).toBe(200);
      }
      // cam-q's one slot is held by a body that fits the quota; its bytes are charged before it streams.
      const held = startRawUpload(
        t.server.deviceUrl,
        cam.tls,
        rawQueryOf(key('held.bin')),
        Buffer.alloc(2000, 4),
        { sent: 10 },
      );
      // (A TLS handshake, the device's authentication and two database writes: a bound far above what a loaded
      // machine takes, for a charge that must come.)
      await vi.waitFor(
        async () => {
          expect(await captureUsageOf(t, 'cam-q')).toBe(2 * MAX_FILE_BYTES - 3000);
        },
        { timeout: 30_000, interval: 20 },
      );
      // Fits the quota: only the slot is missing, and it frees in seconds.
      const busy = await uploadRawFile(t.server.deviceUrl, cam.tls, key('busy.bin'), Buffer.alloc(2500, 5));
      expect(busy.status).toBe(429);
      expect(busy.headers['retry-after']).toBe('5');
      expect(busy.body.details).toMatchObject({ limit: 'perDevice' });
      // Does not fit: the quota's Retry-After.
      const before = Date.now();
      const over = await uploadRawFile(t.server.deviceUrl, cam.tls, key('over.bin'), Buffer.alloc(6000, 5));
      const after = Date.now();
      // The quota is per UTC day: a test that ran across midnight saw it renew, and proves nothing either way.
      if (utcDayOf(after) !== dayAtStart) context.skip();
      expect(over.status).toBe(429);
      expect(over.body).toMatchObject({ code: 'LimitExceeded', details: { remainingBytes: 3000 } });
      expect(over.body.message).toMatch(/captures\.dailyQuotaBytesPerDevice/);
      // The server's clock read between the two of the test.
      expect(Number(over.headers['retry-after'])).toBeGreaterThanOrEqual(secondsToNextUtcDay(after));
      expect(Number(over.headers['retry-after'])).toBeLessThanOrEqual(secondsToNextUtcDay(before));
      held.send();
      expect((await held.answer).status).toBe(200);
      expect(await exists(key('over.bin'))).toBe(false);
    },
  );

  it.skipIf(!fixture.available)(
    'answers any query with the file stored at its key, or a 400/403 that names the problem and stores nothing',
    async () => {
      const body = Buffer.from('side file');
      const suffix = fc.oneof(
        fc.string({ unit: 'binary', maxLength: 40 }),
        fc.stringMatching(/^[A-Za-z0-9._/-]{1,40}$/),
        fc.constantFrom('..', '../x', 'a/../b', 'x.jsonl', 'a//b', '%00', 'a\u0000b', ' ', '#x', '?x', 'é'),
      );
      const contentType = fc.oneof(
        fc.constantFrom('application/octet-stream', 'image/jpeg', 'text/plain; charset=utf-8'),
        fc.string({ unit: 'binary', maxLength: 30 }),
      );
      // Each run's accepted file in a folder of its own, so that no run's file is another's folder.
      const prefix = fc.constantFrom(
        (n: number) => `edge/plant/fuzz/${n}/`,
        () => 'edge/doors/',
        () => '',
      );
      let n = 0;
      await fc.assert(
        fc.asyncProperty(prefix, suffix, contentType, fc.boolean(), async (pre, rest, type, extra) => {
          n += 1;
          const fileKey = `${pre(n)}${rest}`;
          const params = new URLSearchParams({ key: fileKey, contentType: type });
          if (extra) params.append('unexpected', '1');
          const upload = startRawUpload(t.server.deviceUrl, devices['cam-3']!.tls, params.toString(), body);
          upload.send();
          const answer = await upload.answer;
          const query = rawCaptureFileQuerySchema.safeParse({ key: fileKey, contentType: type });
          let validKey = true;
          try {
            assertValidBlobKey(fileKey);
          } catch {
            validKey = false;
          }
          const nul = fileKey.includes('\u0000') || type.includes('\u0000');
          const ours = fileKey.startsWith('edge/plant/') || /^edge\/plant($|\/)/.test(fileKey);
          const accepted = query.success && !extra && !nul && validKey && ours && !fileKey.endsWith('.jsonl');
          if (accepted) {
            expect(answer.status, `${n}: ${JSON.stringify(answer.body)}`).toBe(200);
            expect(await readFile(storedPath(fileKey), 'utf8')).toBe('side file');
            return;
          }
          expect([400, 403], `${n}: ${fileKey} ${type}: ${JSON.stringify(answer.body)}`).toContain(
            answer.status,
          );
          expect(answer.body.code).toMatch(/^(ValidationError|Forbidden)$/);
          if (!query.success || extra)
            // Says which part of the query was wrong.
            expect(answer.body.message).toMatch(/key|contentType|unexpected|Unrecognized/);
          if (validKey) expect(await exists(fileKey)).toBe(false);
        }),
        { numRuns: 60 },
      );
    },
  );
});

describe('a raw capture body not sent in time', () => {
  let t: TestServer;
  let devices: Record<string, EnrolledDevice>;
  beforeAll(async () => {
    const [sqlite] = engines;
    t = await startTestServer({
      database: await sqlite!.createLocation(),
      config: {
        captures: {
          maxFileBytes: 1024 * 1024,
          largeBodyBytes: 1024,
          maxConcurrentUploads: 1,
          maxConcurrentUploadsPerDevice: 1,
        },
      },
      // The device listener's deadline for a whole request, body included.
      start: { listenerLimits: { device: { requestTimeoutMs: 1500 } } },
    });
    devices = await setUpFleet(t, ['cam-1', 'cam-2']);
  });
  afterAll(() => t?.stop());

  it('is cut off at the deadline: nothing stored, its quota charge and its upload slot given back', async () => {
    const stalled = startRawUpload(
      t.server.deviceUrl,
      devices['cam-1']!.tls,
      rawQueryOf(key('stalled.bin')),
      Buffer.alloc(256 * 1024, 9),
      {
        sent: 64 * 1024,
      },
    );
    // The server answers 408 on the socket and closes it (or the client sees the connection cut).
    const ended = await stalled.answer.then(
      (answer) => answer.status,
      (error: Error) => error.message,
    );
    expect([408, 'socket hang up', 'read ECONNRESET']).toContain(ended);
    expect(
      await stat(path.join(t.dataDir, 'blobs', 'fleet-output', 'captures', key('stalled.bin'))).catch(
        () => undefined,
      ),
    ).toBeUndefined();
    // The server's one slot is free again (given back when the connection closed, which the client may see
    // first): another device's large upload is taken.
    await uploadSlotsHeld(t.url, t.readToken, 0);
    const file = randomBytes(200 * 1024);
    expect(
      (await uploadRawFile(t.server.deviceUrl, devices['cam-2']!.tls, key('next.bin'), file)).status,
    ).toBe(200);
    // The stalled device paid nothing for the bytes that never landed: its charge is taken back once the failed
    // write is cleaned up, after the connection closed and independently of the answers above.
    await vi.waitFor(async () => expect(await captureUsageOf(t, 'cam-1')).toBe(0), {
      timeout: 30_000,
      interval: 20,
    });
    expect(await captureUsageOf(t, 'cam-2')).toBe(file.length);
  });
});
