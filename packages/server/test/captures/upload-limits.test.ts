/**
 * Capture uploads cannot exhaust the server's memory (security audit s8, finding 1): large bodies are read
 * only with an upload slot (server-wide and per device), and a body that would pass the device's daily quota
 * by its Content-Length is refused before it is read. Through the real device API (mutual TLS) and database.
 */
import https from 'node:https';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { databaseEngines } from '../support/engines.js';
import type { DatabaseLocation } from '../../src/storage/index.js';
import { enrollDevice, startTestServer, type EnrolledDevice, type TestServer } from '../support/server.js';
import { uploadSlotsHeld } from '../../../../test/support/upload-slots.js';

const engines = await databaseEngines();
const HOUR = 'mlp/2026/12/06/05';
const URL_PATH = '/api/v1/device/captures/files';

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- tests assert on bodies field by field
  body: any;
}

/** The JSON body of a capture upload of `bytes` bytes. */
const captureBody = (key: string, bytes: number) =>
  Buffer.from(
    JSON.stringify({
      key,
      contentType: 'application/octet-stream',
      data: Buffer.alloc(bytes, 7).toString('base64'),
    }),
  );

/**
 * An upload whose headers (Content-Length of the whole body) go at once, and whose body goes only when
 * `send` is called: `sent` bytes of it are written now. `answer` settles when the server answers.
 */
function startUpload(t: TestServer, device: EnrolledDevice, body: Buffer, sent: number) {
  const request = https.request(`${t.server.deviceUrl}${URL_PATH}`, {
    method: 'POST',
    ...device.tls,
    agent: false,
    headers: { 'content-type': 'application/json', 'content-length': String(body.length) },
  });
  const answer = new Promise<Answer>((resolve, reject) => {
    request.on('response', (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        resolve({
          status: response.statusCode ?? 0,
          headers: response.headers,
          body: text === '' ? undefined : JSON.parse(text),
        });
      });
    });
    request.on('error', reject);
  });
  // Headers go out with the first write (or at once when nothing is written yet).
  if (sent > 0) request.write(body.subarray(0, sent));
  else request.flushHeaders();
  return {
    answer,
    send: () => request.end(body.subarray(sent)),
    abort: () => request.destroy(),
  };
}

const upload = (t: TestServer, device: EnrolledDevice, body: Buffer) => {
  const started = startUpload(t, device, body, 0);
  started.send();
  return started.answer;
};

/** Waits until the server holds `count` upload slots (its /metrics gauge). */
const slotsHeld = (t: TestServer, count: number) => uploadSlotsHeld(t.url, t.readToken, count);

describe.each(engines)('capture upload limits on $engine', (fixture) => {
  let t: TestServer;
  const devices: Record<string, EnrolledDevice> = {};
  let database: DatabaseLocation;
  beforeAll(async () => {
    if (!fixture.available) return;
    database = await fixture.createLocation();
    t = await startTestServer({
      database,
      config: {
        captures: {
          maxFileBytes: 8192,
          dailyQuotaBytesPerDevice: 20_000,
          largeBodyBytes: 1024,
          maxConcurrentUploads: 2,
          maxConcurrentUploadsPerDevice: 1,
        },
      },
    });
    await t.call('POST', '/api/v1/fleets', {
      token: t.adminToken,
      body: { name: 'plant', outputConfig: { s3OutputLocation: 's3://captures/edge' } },
    });
    const names = ['cam-1', 'cam-2', 'cam-3', 'cam-4', 'cam-5'];
    await t.call('POST', '/api/v1/fleets/plant/devices', {
      token: t.adminToken,
      body: { devices: names.map((name) => ({ name })) },
    });
    for (const name of names) devices[name] = await enrollDevice(t, name);
  });
  afterAll(() => t?.stop());

  const key = (file: string) => `edge/plant/${HOUR}/raw-data/${file}`;

  it.skipIf(!fixture.available)(
    'reads large bodies only with a free slot, per device and server-wide; 429 with Retry-After for the rest',
    async () => {
      const cam1 = devices['cam-1']!;
      const cam2 = devices['cam-2']!;
      const cam3 = devices['cam-3']!;
      // cam-1 holds a slot: its body is only partly sent.
      const held = startUpload(t, cam1, captureBody(key('held.bin'), 4000), 100);
      await slotsHeld(t, 1);

      const busyDevice = await upload(t, cam1, captureBody(key('second.bin'), 3000));
      expect(busyDevice.status).toBe(429);
      expect(busyDevice.body).toMatchObject({ code: 'LimitExceeded', details: { limit: 'perDevice' } });
      expect(busyDevice.body.message).toMatch(/captures\.maxConcurrentUploadsPerDevice/);
      expect(busyDevice.headers['retry-after']).toBe('5');
      expect(busyDevice.headers.connection).toBe('close');
      // A small body needs no slot.
      expect((await upload(t, cam1, captureBody(key('small.bin'), 100))).status).toBe(200);

      // cam-2 takes the server's other slot: now a third device is refused too.
      const held2 = startUpload(t, cam2, captureBody(key('held2.bin'), 4000), 100);
      await slotsHeld(t, 2);
      const busyServer = await upload(t, cam3, captureBody(key('third.bin'), 3000));
      expect(busyServer.status).toBe(429);
      expect(busyServer.body).toMatchObject({ code: 'LimitExceeded', details: { limit: 'server' } });
      expect(busyServer.body.message).toMatch(/captures\.maxConcurrentUploads\b/);
      expect(busyServer.headers['retry-after']).toBe('5');

      // The held uploads lose nothing: finished, the first is stored; a slot comes back with its answer.
      held.send();
      expect((await held.answer).status).toBe(200);
      await slotsHeld(t, 1);
      expect((await upload(t, cam3, captureBody(key('third.bin'), 3000))).body).toMatchObject({
        bytes: 3000,
      });
      // A client that goes away gives its slot back as well.
      held2.abort();
      await held2.answer.catch(() => undefined);
      await slotsHeld(t, 0);
      expect((await upload(t, cam2, captureBody(key('after-abort.bin'), 3000))).status).toBe(200);
      expect((await upload(t, cam1, captureBody(key('second.bin'), 3000))).status).toBe(200);
    },
  );

  it.skipIf(!fixture.available)(
    "refuses, before reading it, a body longer than the device's remaining daily quota",
    async () => {
      const cam4 = devices['cam-4']!;
      for (const file of ['q1.bin', 'q2.bin'])
        expect((await upload(t, cam4, captureBody(key(file), 8000))).status).toBe(200);
      // 4 000 bytes are left today. Not one byte of this body is sent: the answer must come without it.
      const over = startUpload(t, cam4, captureBody(key('q3.bin'), 8000), 0);
      const answer = await over.answer;
      over.abort();
      expect(answer.status).toBe(429);
      expect(answer.body).toMatchObject({ code: 'LimitExceeded', details: { remainingBytes: 4000 } });
      expect(answer.body.message).toMatch(/captures\.dailyQuotaBytesPerDevice/);
      const retryAfter = Number(answer.headers['retry-after']);
      // The seconds until the quota renews at the next UTC midnight.
      expect(retryAfter).toBeGreaterThan(0);
      expect(retryAfter).toBeLessThanOrEqual(86_400);
      // What fits is still taken, and the quota refusal after parsing says when to retry too.
      expect((await upload(t, cam4, captureBody(key('q4.bin'), 3000))).status).toBe(200);
      const late = await upload(t, cam4, captureBody(key('q5.bin'), 1500));
      expect(late.status).toBe(429);
      expect(Number(late.headers['retry-after'])).toBeGreaterThan(0);
    },
  );

  // Review s8 #1: a device that goes away while the server awaits the database before reading its body must not
  // keep its upload slot. PostgreSQL makes the wait real: another session locks the table the await reads.
  for (const [during, table] of [
    ['its authentication', 'device_certificates'],
    ['the quota read', 'device_capture_usage'],
  ] as const) {
    it.skipIf(!fixture.available || fixture.engine !== 'postgres')(
      `gives the slot back when the device goes away during ${during}`,
      async () => {
        if (database.engine !== 'postgres') throw new Error('PostgreSQL only');
        const cam5 = devices['cam-5']!;
        const locker = new pg.Client({ connectionString: database.url });
        await locker.connect();
        try {
          await locker.query('BEGIN');
          await locker.query(`LOCK TABLE ${table} IN ACCESS EXCLUSIVE MODE`);
          const gone = startUpload(t, cam5, captureBody(key(`gone-${table}.bin`), 4000), 0);
          const failed = gone.answer.catch(() => undefined);
          // The server's read of the table is waiting for the lock.
          await vi.waitFor(
            async () => {
              // Statistics are read once per transaction unless cleared, and the locker is inside one.
              await locker.query('SELECT pg_stat_clear_snapshot()');
              const waiting = await locker.query<{ count: string }>(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query ILIKE $1",
                [`%${table}%`],
              );
              expect(Number(waiting.rows[0]!.count)).toBeGreaterThan(0);
            },
            { timeout: 10_000, interval: 20 },
          );
          gone.abort();
          await failed;
          // Round trips through the server's event loop, so that it has seen the connection close.
          for (let i = 0; i < 3; i += 1) {
            expect((await t.call('GET', '/api/v1/fleets', { token: t.adminToken })).status).toBe(200);
          }
        } finally {
          await locker.query('COMMIT');
          await locker.end();
        }
        // cam-5 may hold one slot (captures.maxConcurrentUploadsPerDevice = 1): it is free again.
        await slotsHeld(t, 0);
        expect((await upload(t, cam5, captureBody(key(`after-${table}.bin`), 4000))).status).toBe(200);
      },
    );
  }
});
