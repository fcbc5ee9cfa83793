/**
 * Capture claims (capture_objects) are rows a device adds with each new key: they are paid for from its daily
 * quota, never kept for a file that was refused or not written, pruned with the captures' retention and dropped
 * with the device. Through the real device API, database and local blob folder.
 */
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MIN_OBJECT_CHARGE_BYTES } from '../../src/captures/index.js';
import { pruneExpired } from '../../src/heartbeats/index.js';
import { databaseNowMs, processHostId, SERVER_SEEN_RECENT_MS } from '../../src/server/index.js';
import { captureUsageOf } from '../support/capture-usage.js';
import { deviceCall } from '../support/device.js';
import { databaseEngines } from '../support/engines.js';
import { rawQueryOf, startRawUpload, uploadRawFile } from '../../../../test/support/raw-upload.js';
import { enrollDevice, startTestServer, type EnrolledDevice, type TestServer } from '../support/server.js';

const engines = await databaseEngines();
const HOUR = 'mlp/2026/12/07/09';
const QUOTA = 8 * 1024;
const DAY_MS = 86_400_000;

const record = (device: string, id: string) =>
  JSON.stringify({
    eventVersion: '0',
    eventMetadata: { deviceId: device, deviceFleetName: 'plant', eventId: id, modelName: 'mlp' },
    deviceFleetInputs: [],
    deviceFleetOutputs: [],
  });

describe.each(engines)('capture claims on $engine', (fixture) => {
  let t: TestServer;
  let cam1: EnrolledDevice;
  let cam2: EnrolledDevice;
  beforeAll(async () => {
    if (!fixture.available) return;
    t = await startTestServer({
      database: await fixture.createLocation(),
      config: { captures: { largeBodyBytes: 1024, dailyQuotaBytesPerDevice: QUOTA } },
    });
    await t.call('POST', '/api/v1/fleets', {
      token: t.adminToken,
      body: { name: 'plant', outputConfig: { s3OutputLocation: 's3://captures/plant-out' } },
    });
    await t.call('POST', '/api/v1/fleets/plant/devices', {
      token: t.adminToken,
      body: {
        devices: [
          { name: 'cam-1' },
          { name: 'cam-2' },
          { name: 'cam-3' },
          { name: 'cam-4' },
          { name: 'cam-5' },
          { name: 'cam-6' },
        ],
      },
    });
    cam1 = await enrollDevice(t, 'cam-1');
    cam2 = await enrollDevice(t, 'cam-2');
  });
  afterAll(() => t?.stop());

  const raw = (d: EnrolledDevice, key: string, body: Buffer, type = 'application/octet-stream') =>
    uploadRawFile(t.server.deviceUrl, d.tls, key, body, type);
  const json = (d: EnrolledDevice, key: string, body: Buffer, type = 'application/jsonl') =>
    deviceCall(t.server.deviceUrl, d.tls, 'POST', '/api/v1/device/captures/files', {
      body: { key, contentType: type, data: body.toString('base64') },
    });
  const claimsOf = async (device: string) =>
    (
      await t.server.database.db
        .selectFrom('capture_objects')
        .select('object_url')
        .where('device_name', '=', device)
        .execute()
    ).length;

  it.skipIf(!fixture.available)(
    'refuses empty files and manifests (400) and charges each new object at least the least charge, so that a device past its quota adds no claim',
    async () => {
      for (const [send, key, type] of [
        [raw, `plant-out/plant/${HOUR}/empty.bin`, 'application/octet-stream'],
        [json, `plant-out/plant/${HOUR}/empty-json.bin`, 'application/octet-stream'],
        [json, `plant-out/plant/${HOUR}/empty.jsonl`, 'application/jsonl'],
        [raw, `plant-out/plant/${HOUR}/empty-raw.jsonl`, 'application/jsonl'],
      ] as const) {
        const answer = await send(cam2, key, Buffer.alloc(0), type);
        expect(answer.status, key).toBe(400);
        expect(answer.body.message).toMatch(/is empty; expected/);
      }
      const blank = await raw(
        cam2,
        `plant-out/plant/${HOUR}/blank.jsonl`,
        Buffer.from('\n \n'),
        'application/jsonl',
      );
      expect(blank.status).toBe(400);
      expect(blank.body.message).toMatch(/has no records/);
      expect(await claimsOf('cam-2')).toBe(0);
      expect(await captureUsageOf(t, 'cam-2')).toBe(0);

      // A tiny file costs the least charge; the quota then runs out after QUOTA / that many new keys.
      expect((await raw(cam2, `plant-out/plant/${HOUR}/tiny-0.bin`, randomBytes(10))).status).toBe(200);
      expect(await captureUsageOf(t, 'cam-2')).toBe(MIN_OBJECT_CHARGE_BYTES);
      const statuses: number[] = [];
      for (let i = 1; i < 20; i++)
        statuses.push((await raw(cam2, `plant-out/plant/${HOUR}/tiny-${i}.bin`, randomBytes(10))).status);
      const stored = QUOTA / MIN_OBJECT_CHARGE_BYTES;
      expect(statuses.filter((s) => s === 200)).toHaveLength(stored - 1);
      expect(statuses.slice(stored - 1).every((s) => s === 429)).toBe(true);
      expect(await claimsOf('cam-2')).toBe(stored);
      expect(await captureUsageOf(t, 'cam-2')).toBe(QUOTA);
    },
  );

  it.skipIf(!fixture.available)(
    'keeps no claim of a file whose write failed, and takes back its charge',
    async () => {
      const before = await captureUsageOf(t, 'cam-1');
      // The local blob folder cannot hold a key under a stored key (it is a file there): 400, nothing written.
      const base = `plant-out/plant/${HOUR}/folder.bin`;
      expect((await raw(cam1, base, randomBytes(50))).status).toBe(200);
      const claims = await claimsOf('cam-1');
      for (const body of [randomBytes(50), randomBytes(2048)]) {
        const answer = await raw(cam1, `${base}/under-${body.length}.bin`, body);
        expect(answer.status).toBe(400);
      }
      expect(await claimsOf('cam-1')).toBe(claims);
      expect(await captureUsageOf(t, 'cam-1')).toBe(before + MIN_OBJECT_CHARGE_BYTES);
    },
  );

  it.skipIf(!fixture.available)(
    'refuses (400, naming the limit) a key with a segment longer than the local blob folder can hold, before anything is written or claimed',
    async () => {
      const before = await captureUsageOf(t, 'cam-1');
      const claims = await claimsOf('cam-1');
      for (const [send, key, body] of [
        [raw, `plant-out/plant/${HOUR}/x-${'a'.repeat(300)}.bin`, randomBytes(200)],
        [raw, `plant-out/plant/${HOUR}/big-${'a'.repeat(300)}.bin`, randomBytes(2048)],
        [
          json,
          `plant-out/plant/${HOUR}/e-${'a'.repeat(300)}.jsonl`,
          Buffer.from(`${record('cam-1', 'long-1')}\n`),
        ],
      ] as const) {
        const answer = await send(cam1, key, body);
        expect(answer.status, key).toBe(400);
        expect(answer.body.code).toBe('ValidationError');
        expect(answer.body.message).toMatch(/at most 255 characters/);
      }
      // 255 is held.
      const longest = `plant-out/plant/${HOUR}/${'b'.repeat(251)}.bin`;
      expect((await raw(cam1, longest, randomBytes(20))).status).toBe(200);
      expect(await claimsOf('cam-1')).toBe(claims + 1);
      expect(await captureUsageOf(t, 'cam-1')).toBe(before + MIN_OBJECT_CHARGE_BYTES);
    },
  );

  it.skipIf(!fixture.available)(
    'lets one upload at a time write an object: a second of the same key meanwhile is 409, and the digest recorded is of the file written (N4)',
    async () => {
      const key = `plant-out/plant/${HOUR}/raw-data/race.bin`;
      const first = randomBytes(2048);
      const second = randomBytes(2048);
      const writing = startRawUpload(t.server.deviceUrl, cam1.tls, rawQueryOf(key), first, { sent: 512 });
      writing.answer.catch(() => undefined);
      await writing.started;
      // The first holds the write once its claim is in (its body still arriving).
      await expect
        .poll(
          async () =>
            (
              await t.server.database.db
                .selectFrom('capture_objects')
                .select('write_token')
                .where('object_url', '=', `s3://captures/${key}`)
                .executeTakeFirst()
            )?.write_token ?? null,
        )
        .not.toBeNull();
      const meanwhile = await raw(cam1, key, second);
      expect(meanwhile.status).toBe(409);
      expect(meanwhile.body.message).toMatch(/is being written by another upload of this device's now/);
      writing.send();
      expect((await writing.answer).status).toBe(200);
      const row = await t.server.database.db
        .selectFrom('capture_objects')
        .select(['sha256', 'write_token'])
        .where('object_url', '=', `s3://captures/${key}`)
        .executeTakeFirstOrThrow();
      expect(row).toEqual({ sha256: createHash('sha256').update(first).digest('hex'), write_token: null });
      // Now stored: the other content is refused for good, the same file answered as stored.
      expect((await raw(cam1, key, second)).status).toBe(403);
      expect((await raw(cam1, key, first)).status).toBe(200);
    },
  );

  /** Leaves the device's claim of `key` as an upload holding `token` left it: not stored, its write held since now. */
  const leaveHeldWrite = async (device: string, key: string, token: string) => {
    await t.server.database.db
      .insertInto('capture_objects')
      .values({
        object_url: `s3://captures/${key}`,
        device_name: device,
        sha256: null,
        bytes: null,
        claimed_at: Date.now(),
        write_token: token,
        write_started_at: Date.now(),
      })
      .execute();
  };
  const storedDigestOf = async (key: string) =>
    (
      await t.server.database.db
        .selectFrom('capture_objects')
        .select(['sha256', 'write_token'])
        .where('object_url', '=', `s3://captures/${key}`)
        .executeTakeFirstOrThrow()
    ).sha256;

  it.skipIf(!fixture.available)(
    'frees at once a write held by a server process that no longer runs (killed mid-upload), and one of this process whose upload was answered without giving it back (F9)',
    async () => {
      const cam5 = await enrollDevice(t, 'cam-5');
      // A pid above pid_max, which no process can have (an exited child's pid could be reused meanwhile): it stands
      // for a server SIGKILLed mid-upload, its row as fresh as can be.
      const killedPid = Number(await readFile('/proc/sys/kernel/pid_max', 'utf8')) + 1;
      await sql`insert into server_instances (id, host, pid, version, schema_version, started_at, last_seen_at)
        values ('killed-server', ${processHostId()}, ${killedPid}, '0.0.9', 'x', 0, ${databaseNowMs(fixture.engine)})`.execute(
        t.server.database.db,
      );
      const killed = `plant-out/plant/${HOUR}/raw-data/killed.bin`;
      const large = `plant-out/plant/${HOUR}/raw-data/killed-large.bin`;
      await leaveHeldWrite('cam-5', killed, `killed-server.${randomUUID()}`);
      await leaveHeldWrite('cam-5', large, `killed-server.${randomUUID()}`);
      for (const [key, body] of [
        [killed, randomBytes(500)],
        // Streamed (over largeBodyBytes).
        [large, randomBytes(3000)],
      ] as const) {
        const answer = await raw(cam5, key, body);
        expect(answer.status, key).toBe(200);
        expect(await storedDigestOf(key)).toBe(createHash('sha256').update(body).digest('hex'));
      }

      // This process's own write whose upload ended while the database failed (so the claim was not dropped):
      // its token names this server, and no upload of it holds that token now.
      const probe = `plant-out/plant/${HOUR}/raw-data/probe.bin`;
      const writing = startRawUpload(t.server.deviceUrl, cam5.tls, rawQueryOf(probe), randomBytes(2048), {
        sent: 512,
      });
      writing.answer.catch(() => undefined);
      await writing.started;
      let held: string | null = null;
      await expect
        .poll(async () => {
          held =
            (
              await t.server.database.db
                .selectFrom('capture_objects')
                .select('write_token')
                .where('object_url', '=', `s3://captures/${probe}`)
                .executeTakeFirst()
            )?.write_token ?? null;
          return held;
        })
        .not.toBeNull();
      writing.send();
      expect((await writing.answer).status).toBe(200);
      const thisServer = String(held).split('.')[0]!;
      const answered = `plant-out/plant/${HOUR}/raw-data/answered.bin`;
      await leaveHeldWrite('cam-5', answered, `${thisServer}.${randomUUID()}`);
      const body = randomBytes(500);
      expect((await raw(cam5, answered, body)).status).toBe(200);
      expect(await storedDigestOf(answered)).toBe(createHash('sha256').update(body).digest('hex'));
    },
  );

  it.skipIf(!fixture.available)(
    'keeps the lease of a write held on PostgreSQL by a server of another host, even one whose row was not refreshed for over a minute (frozen or partitioned, it may still write), by a server whose row is gone, or by a token of an older build; on SQLite this server is the only one (F9, review GL F1)',
    async () => {
      const cam6 = await enrollDevice(t, 'cam-6');
      const now = databaseNowMs(fixture.engine);
      // Replicas of another host: one seen just now, one last seen past SERVER_SEEN_RECENT_MS (a paused VM, a
      // replica cut off from the database while its store put runs).
      await sql`insert into server_instances (id, host, pid, version, schema_version, started_at, last_seen_at)
        values ('live-replica', 'another-host', 1, '0.0.9', 'x', 0, ${now}),
               ('silent-replica', 'another-host', 1, '0.0.9', 'x', 0, ${now} - ${SERVER_SEEN_RECENT_MS + 1000})`.execute(
        t.server.database.db,
      );
      const replica = `plant-out/plant/${HOUR}/raw-data/replica.bin`;
      const silent = `plant-out/plant/${HOUR}/raw-data/silent-replica.bin`;
      const unregistered = `plant-out/plant/${HOUR}/raw-data/unregistered.bin`;
      const older = `plant-out/plant/${HOUR}/raw-data/older.bin`;
      await leaveHeldWrite('cam-6', replica, `live-replica.${randomUUID()}`);
      await leaveHeldWrite('cam-6', silent, `silent-replica.${randomUUID()}`);
      await leaveHeldWrite('cam-6', unregistered, `${randomUUID()}.${randomUUID()}`);
      await leaveHeldWrite('cam-6', older, randomUUID());
      const expected = fixture.engine === 'sqlite' ? 200 : 409;
      for (const key of [replica, silent, unregistered, older]) {
        const answer = await raw(cam6, key, randomBytes(500));
        expect(answer.status, key).toBe(expected);
        if (expected === 409)
          expect(answer.body.message).toMatch(/is being written by another upload of this device's now/);
      }
    },
  );

  it.skipIf(!fixture.available)(
    'answers a retry of a stored file 200 with its quota nearly used, charging nothing (review F3)',
    async () => {
      const cam4 = await enrollDevice(t, 'cam-4');
      const at = (file: string) => `plant-out/plant/${HOUR}/retry-${file}`;
      // Streamed (over largeBodyBytes), read whole, and a manifest.
      const files = [
        { key: at('large.bin'), body: randomBytes(3000), type: 'application/octet-stream' },
        { key: at('small.bin'), body: randomBytes(500), type: 'application/octet-stream' },
        {
          key: at('batch.jsonl'),
          body: Buffer.from(`${record('cam-4', 'r-1')}\n${record('cam-4', 'r-2')}\n`),
          type: 'application/jsonl',
        },
      ];
      for (const file of files) expect((await raw(cam4, file.key, file.body, file.type)).status).toBe(200);
      // The rest of the day's quota but less than the smallest charge.
      const left = QUOTA - (await captureUsageOf(t, 'cam-4'));
      expect((await raw(cam4, at('fill.bin'), randomBytes(left - 200))).status).toBe(200);
      const used = await captureUsageOf(t, 'cam-4');
      expect(QUOTA - used).toBe(200);
      const claims = await claimsOf('cam-4');

      // The agent's retries after answers it did not get: stored as they were, nothing charged.
      for (const file of files) {
        const answer = await raw(cam4, file.key, file.body, file.type);
        expect(answer.status, file.key).toBe(200);
        expect(answer.body).toMatchObject({ bytes: 0, records: 0 });
      }
      // Other content at a stored key is still refused as such (403), not for the quota.
      const other = await raw(cam4, files[1]!.key, randomBytes(500));
      expect(other.status).toBe(403);
      expect(other.body.message).toMatch(/stored already with other content/);
      expect(await captureUsageOf(t, 'cam-4')).toBe(used);
      expect(await claimsOf('cam-4')).toBe(claims);
      // A new file is refused for the quota.
      expect((await raw(cam4, at('new.bin'), randomBytes(500))).status).toBe(429);
    },
  );

  it.skipIf(!fixture.available)(
    "drops a device's claims and capture ids when it is deregistered, and prunes them past the retention",
    async () => {
      const cam3 = await enrollDevice(t, 'cam-3');
      const key = `plant-out/plant/${HOUR}/cam3.jsonl`;
      expect(
        (await raw(cam3, key, Buffer.from(`${record('cam-3', 'c3-1')}\n`), 'application/jsonl')).status,
      ).toBe(200);
      const rows = async (table: 'capture_objects' | 'device_captures') =>
        (
          await t.server.database.db
            .selectFrom(table)
            .select('device_name')
            .where('device_name', '=', 'cam-3')
            .execute()
        ).length;
      expect([await rows('capture_objects'), await rows('device_captures')]).toEqual([1, 1]);
      expect((await t.call('DELETE', '/api/v1/devices/cam-3', { token: t.adminToken })).status).toBe(204);
      expect([await rows('capture_objects'), await rows('device_captures')]).toEqual([0, 0]);

      // The sweep: rows older than the retention go, newer ones stay.
      const claimsBefore = await claimsOf('cam-1');
      const now = Date.now();
      const kept = await pruneExpired(t.server.database.db, {
        metricsRetentionMs: DAY_MS,
        captureRecordsRetentionMs: DAY_MS,
        now,
      });
      expect(kept.captureRecords).toBe(0);
      expect(await claimsOf('cam-1')).toBe(claimsBefore);
      const pruned = await pruneExpired(t.server.database.db, {
        metricsRetentionMs: DAY_MS,
        captureRecordsRetentionMs: DAY_MS,
        now: now + 2 * DAY_MS,
      });
      expect(pruned.captureRecords).toBeGreaterThan(0);
      expect(await claimsOf('cam-1')).toBe(0);
      expect(await claimsOf('cam-2')).toBe(0);
    },
  );
});
