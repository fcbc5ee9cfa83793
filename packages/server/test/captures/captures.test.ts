import { randomBytes } from 'node:crypto';
import { readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Writable } from 'node:stream';
import {
  CreateBucketCommand,
  DeleteBucketCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  S3Client,
} from '@aws-sdk/client-s3';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { deviceCall } from '../support/device.js';
import { rawQueryOf, startRawUpload, uploadRawFile } from '../../../../test/support/raw-upload.js';
import { databaseEngines } from '../support/engines.js';
import { FLEET_OUTPUT_SPARE_SOCKETS } from '../../src/captures/fleet-output.js';
import { readSnapshot } from '../../src/console/change-feed.js';
import { captureUsageOf } from '../support/capture-usage.js';
import { startTestS3, type TestS3 } from '../support/s3.js';
import { enrollDevice, startTestServer, type EnrolledDevice, type TestServer } from '../support/server.js';
import { uploadSlotsHeld } from '../../../../test/support/upload-slots.js';

const engines = await databaseEngines();

/** One Edge Manager capture record line for `captureId`, of cam-1 in plant unless `by` says otherwise. */
const record = (captureId: string, by = { device: 'cam-1', fleet: 'plant' }) =>
  JSON.stringify({
    eventVersion: '0',
    eventMetadata: { deviceFleetName: by.fleet, deviceId: by.device, eventId: captureId, modelName: 'mlp' },
    deviceFleetInputs: [],
    deviceFleetOutputs: [],
  });
const manifest = (...ids: string[]) => Buffer.from(`${ids.map((id) => record(id)).join('\n')}\n`);
const manifestOf = (by: { device: string; fleet: string }, ...ids: string[]) =>
  Buffer.from(`${ids.map((id) => record(id, by)).join('\n')}\n`);
const HOUR = 'mlp/2026/12/06/05';

/** Fleets plant (cam-1) and doors (door-1); with S3 blobs both outputs must be buckets that exist. */
async function setUp(
  t: TestServer,
  output: string,
  doorsOutput = 's3://other-bucket/doors',
): Promise<{ cam1: EnrolledDevice; door: EnrolledDevice }> {
  for (const [fleet, device, location] of [
    ['plant', 'cam-1', output],
    ['doors', 'door-1', doorsOutput],
  ] as const) {
    const created = await t.call('POST', '/api/v1/fleets', {
      token: t.adminToken,
      body: { name: fleet, outputConfig: { s3OutputLocation: location } },
    });
    expect(created.status).toBe(201);
    await t.call('POST', `/api/v1/fleets/${fleet}/devices`, {
      token: t.adminToken,
      body: { devices: [{ name: device }] },
    });
  }
  return { cam1: await enrollDevice(t, 'cam-1'), door: await enrollDevice(t, 'door-1') };
}

describe.each(engines)('captures through the control plane on $engine', (fixture) => {
  let t: TestServer;
  let cam1: EnrolledDevice;
  let door: EnrolledDevice;
  beforeAll(async () => {
    if (!fixture.available) return;
    t = await startTestServer({
      database: await fixture.createLocation(),
      config: { captures: { maxFileBytes: 4096, dailyQuotaBytesPerDevice: 20_000 } },
    });
    ({ cam1, door } = await setUp(t, 's3://captures/edge'));
  });
  afterAll(() => t?.stop());

  const upload = (device: EnrolledDevice, key: string, body: Buffer, contentType = 'application/jsonl') =>
    deviceCall(t.server.deviceUrl, device.tls, 'POST', '/api/v1/device/captures/files', {
      body: { key, contentType, data: body.toString('base64') },
    });
  const stored = (key: string) =>
    readFile(path.join(t.dataDir, 'blobs', 'fleet-output', 'captures', key), 'utf8');

  it.skipIf(!fixture.available)(
    'hands an enrolled device its signing root and its fleet output (the enrollment set-up)',
    async () => {
      const settings = await deviceCall(t.server.deviceUrl, cam1.tls, 'GET', '/api/v1/device/agent-settings');
      expect(settings.status).toBe(200);
      const root = await t.call('GET', '/api/v1/signing/root-certificate', { token: t.readToken });
      expect(settings.body).toEqual({
        deviceName: 'cam-1',
        fleetName: 'plant',
        packageSigningRoot: root.body,
        captureOutputLocation: 's3://captures/edge',
        captureBucket: 'captures',
        captureFolderPrefix: 'edge',
        heartbeatIntervalSeconds: 30,
      });
    },
  );

  it.skipIf(!fixture.available)(
    'writes a manifest under the fleet output once per capture id, whatever the retries',
    async () => {
      const first = `edge/plant/${HOUR}/aaaa.jsonl`;
      const answer = await upload(cam1, first, manifest('c-1', 'c-2'));
      expect(answer).toMatchObject({ status: 200, body: { records: 2, duplicates: 0 } });
      expect(answer.body.location).toMatch(/fleet-output\/captures\/edge\/plant\/mlp\/.*\/aaaa\.jsonl$/);
      expect(await stored(first)).toBe(manifest('c-1', 'c-2').toString());

      // The agent's retry of the same file (at-least-once): answered as stored, nothing written or recorded.
      expect((await upload(cam1, first, manifest('c-1', 'c-2'))).body).toMatchObject({
        records: 0,
        duplicates: 0,
      });
      expect(await stored(first)).toBe(manifest('c-1', 'c-2').toString());

      // The same captures in another manifest (a batch made again after a crash): only c-3 is new.
      const second = `edge/plant/${HOUR}/bbbb.jsonl`;
      expect((await upload(cam1, second, manifest('c-1', 'c-3'))).body).toMatchObject({
        records: 1,
        duplicates: 1,
      });
      expect(await stored(second)).toBe(manifest('c-3').toString());
      // All duplicates: nothing written.
      const third = `edge/plant/${HOUR}/cccc.jsonl`;
      expect((await upload(cam1, third, manifest('c-2', 'c-3'))).body).toEqual(
        expect.objectContaining({ records: 0, duplicates: 2, bytes: 0 }),
      );
      await expect(stored(third)).rejects.toThrow(/ENOENT/);

      // Side files are stored as they come (written once, as manifests: device-claims.test.ts).
      const side = `edge/plant/${HOUR}/raw-data/c-1-input-1.bin`;
      expect((await upload(cam1, side, Buffer.from([1, 2, 3]), 'application/octet-stream')).status).toBe(200);
      expect(await stored(side)).toBe('\x01\x02\x03');
      // Another device's capture ids are its own.
      const doorKey = `doors/doors/${HOUR}/dddd.jsonl`;
      expect(
        (await upload(door, doorKey, manifestOf({ device: 'door-1', fleet: 'doors' }, 'c-1'))).body,
      ).toMatchObject({ records: 1 });
    },
  );

  it.skipIf(!fixture.available)(
    'charges the quota only for files stored: failed writes cost nothing',
    async () => {
      const side = `edge/plant/${HOUR}/raw-data/blocked.bin`;
      // A file where the blob folder's temporary folder must be: every write fails (a fault of the server's
      // storage, not of the upload).
      const temp = path.join(t.dataDir, 'blobs', '.tmp');
      await rm(temp, { recursive: true, force: true });
      await writeFile(temp, 'in the way');
      for (let i = 0; i < 6; i++) {
        expect((await upload(cam1, side, Buffer.alloc(4000), 'application/octet-stream')).status).toBe(500);
      }
      await rm(temp);
      expect((await upload(cam1, side, Buffer.alloc(4000), 'application/octet-stream')).status).toBe(200);
    },
  );

  it.skipIf(!fixture.available)(
    "refuses keys outside the device's fleet output, oversized files, bad records, and past the quota",
    async () => {
      const outside = await upload(cam1, `edge/doors/${HOUR}/x.jsonl`, manifest('x-1'));
      expect(outside).toMatchObject({ status: 403, body: { code: 'Forbidden' } });
      expect(outside.body.message).toMatch(/expected keys under edge\/plant\//);
      expect((await upload(cam1, `other/plant/${HOUR}/x.jsonl`, manifest('x-1'))).status).toBe(403);
      expect((await upload(cam1, `edge/plant/../doors/x.jsonl`, manifest('x-1'))).status).toBe(400);

      const big = await upload(cam1, `edge/plant/${HOUR}/raw-data/big.bin`, Buffer.alloc(5000));
      expect(big).toMatchObject({ status: 413, body: { code: 'PayloadTooLarge' } });
      expect(big.body.message).toMatch(/at most 4096 per file/);

      const junk = await upload(cam1, `edge/plant/${HOUR}/junk.jsonl`, Buffer.from('{"no":"id"}\n'));
      expect(junk).toMatchObject({ status: 400, body: { code: 'ValidationError' } });
      expect(junk.body.message).toMatch(/line 1 has no eventMetadata\.eventId/);

      // 20 000 bytes a day: 4 000-byte side files fill it; the next is refused with what was used.
      let refused;
      for (let i = 0; i < 10 && refused === undefined; i++) {
        const answer = await upload(cam1, `edge/plant/${HOUR}/raw-data/q-${i}.bin`, Buffer.alloc(4000));
        if (answer.status !== 200) refused = answer;
      }
      expect(refused).toMatchObject({ status: 429, body: { code: 'LimitExceeded' } });
      expect(refused!.body.message).toMatch(/daily quota of 20000/);
      // The quota is per device.
      expect((await upload(door, `doors/doors/${HOUR}/raw-data/d.bin`, Buffer.alloc(4000))).status).toBe(200);

      // Concurrent uploads cannot all pass one read of the usage: at most 5 of 4 000 bytes fit in 20 000.
      const burst = await Promise.all(
        Array.from({ length: 12 }, (_, i) =>
          upload(door, `doors/doors/${HOUR}/raw-data/burst-${i}.bin`, Buffer.alloc(4000)),
        ),
      );
      expect(burst.filter((answer) => answer.status === 200).length).toBeLessThanOrEqual(4);
      expect(burst.filter((answer) => answer.status === 429).length).toBeGreaterThanOrEqual(8);
    },
  );
});

describe('captures through the control plane, with S3 blobs', () => {
  let s3: TestS3;
  let t: TestServer;
  let cam1: EnrolledDevice;
  beforeAll(async () => {
    s3 = await startTestS3();
    t = await startTestServer({
      blob: `s3://${s3.bucket}/server`,
      config: { s3: { endpoint: s3.endpoint, ...s3.credentials } },
    });
    ({ cam1 } = await setUp(t, `s3://${s3.bucket}/plant-captures`, `s3://${s3.bucket}/doors`));
  });
  afterAll(async () => {
    await t?.stop();
    await s3?.stop();
  });

  it("writes into the fleet's own bucket at the capture key, where the records' data-refs point", async () => {
    const key = `plant-captures/plant/${HOUR}/eeee.jsonl`;
    const answer = await deviceCall(t.server.deviceUrl, cam1.tls, 'POST', '/api/v1/device/captures/files', {
      body: { key, contentType: 'application/jsonl', data: manifest('s-1').toString('base64') },
    });
    expect(answer).toMatchObject({ status: 200, body: { location: `s3://${s3.bucket}/${key}`, records: 1 } });
    const client = new S3Client({
      endpoint: s3.endpoint,
      region: 'us-east-1',
      forcePathStyle: true,
      credentials: s3.credentials,
    });
    const object = await client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: key }));
    expect(await object.Body!.transformToString()).toBe(manifest('s-1').toString());
    client.destroy();
  });

  it('streams a raw side file into the bucket byte for byte, with its media type', async () => {
    const key = `plant-captures/plant/${HOUR}/raw-data/ffff.bin`;
    const file = randomBytes(3 * 1024 * 1024 + 5);
    const { status } = await uploadRawFile(t.server.deviceUrl, cam1.tls, key, file, 'image/png');
    expect(status).toBe(200);
    const client = new S3Client({
      endpoint: s3.endpoint,
      region: 'us-east-1',
      forcePathStyle: true,
      credentials: s3.credentials,
    });
    const object = await client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: key }));
    expect(object.ContentType).toBe('image/png');
    expect(Buffer.from(await object.Body!.transformToByteArray()).equals(file)).toBe(true);
    client.destroy();
  });

  it("keeps a fleet with an output of a bare bucket to its own fleet's keys, off the server's blobs", async () => {
    await t.call('POST', '/api/v1/fleets', {
      token: t.adminToken,
      body: { name: 'lobby', outputConfig: { s3OutputLocation: `s3://${s3.bucket}` } },
    });
    await t.call('POST', '/api/v1/fleets/lobby/devices', {
      token: t.adminToken,
      body: { devices: [{ name: 'lobby-1' }] },
    });
    const lobby = await enrollDevice(t, 'lobby-1');
    const upload = (key: string) =>
      deviceCall(t.server.deviceUrl, lobby.tls, 'POST', '/api/v1/device/captures/files', {
        body: {
          key,
          contentType: 'application/jsonl',
          data: manifestOf({ device: 'lobby-1', fleet: 'lobby' }, 'l-1').toString('base64'),
        },
      });
    // The server's own blobs live under server/ in this bucket; another fleet's captures under plant/.
    for (const key of [`server/models/x.jsonl`, `plant/${HOUR}/ffff.jsonl`]) {
      const refused = await upload(key);
      expect(refused).toMatchObject({ status: 403, body: { code: 'Forbidden' } });
      expect(refused.body.message).toMatch(/expected keys under lobby\//);
    }
    expect(await upload(`lobby/${HOUR}/gggg.jsonl`)).toMatchObject({ status: 200, body: { records: 1 } });
  });

  it("refuses captures into the server's own blob prefix, whatever the fleet is called", async () => {
    // A fleet named like the server's blob folders, its output at the server's blob location.
    await t.call('POST', '/api/v1/fleets', {
      token: t.adminToken,
      body: { name: 'models', outputConfig: { s3OutputLocation: `s3://${s3.bucket}/server` } },
    });
    await t.call('POST', '/api/v1/fleets/models/devices', {
      token: t.adminToken,
      body: { devices: [{ name: 'models-1' }] },
    });
    const device = await enrollDevice(t, 'models-1');
    const refused = await deviceCall(
      t.server.deviceUrl,
      device.tls,
      'POST',
      '/api/v1/device/captures/files',
      {
        body: {
          key: 'server/models/tiny/1/x.jsonl',
          contentType: 'application/jsonl',
          data: manifest('m-1').toString('base64'),
        },
      },
    );
    expect(refused).toMatchObject({ status: 409, body: { code: 'Conflict' } });
    expect(refused.body.message).toMatch(/overlaps the server's own blob store/);
  });
});

describe('a fleet output bucket that does not exist, with S3 blobs', () => {
  let s3: TestS3;
  let t: TestServer;
  let cam1: EnrolledDevice;
  let client: S3Client;
  const logLines: string[] = [];
  beforeAll(async () => {
    s3 = await startTestS3();
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        logLines.push(...chunk.toString('utf8').split('\n').filter(Boolean));
        done();
      },
    });
    t = await startTestServer({
      logger: pino({ level: 'info' }, sink),
      blob: `s3://${s3.bucket}/server`,
      config: { s3: { endpoint: s3.endpoint, ...s3.credentials } },
    });
    client = new S3Client({
      endpoint: s3.endpoint,
      region: 'us-east-1',
      forcePathStyle: true,
      credentials: s3.credentials,
    });
    await client.send(new CreateBucketCommand({ Bucket: 'plant-output' }));
    ({ cam1 } = await setUp(t, 's3://plant-output/edge', `s3://${s3.bucket}/doors`));
  });
  afterAll(async () => {
    client?.destroy();
    await t?.stop();
    await s3?.stop();
  });

  it('refuses a fleet whose output bucket does not exist (create and update), naming the bucket', async () => {
    const created = await t.call('POST', '/api/v1/fleets', {
      token: t.adminToken,
      body: { name: 'typo', outputConfig: { s3OutputLocation: 's3://captures/typo' } },
    });
    expect(created).toMatchObject({ status: 400, body: { code: 'ValidationError' } });
    expect(created.body.message).toMatch(
      /^the output location s3:\/\/captures\/typo cannot be used: bucket captures does not exist \(404\); create it, or name an existing bucket \(the server writes captures there through http:\/\/127\.0\.0\.1:\d+/,
    );
    expect((await t.call('GET', '/api/v1/fleets/typo', { token: t.adminToken })).status).toBe(404);

    const moved = await t.call('PATCH', '/api/v1/fleets/plant', {
      token: t.adminToken,
      body: { outputConfig: { s3OutputLocation: 's3://captures/plant' } },
    });
    expect(moved).toMatchObject({ status: 400, body: { code: 'ValidationError' } });
    expect(moved.body.message).toMatch(/bucket captures does not exist/);
    const plant = await t.call('GET', '/api/v1/fleets/plant', { token: t.adminToken });
    expect(plant.body.outputConfig.s3OutputLocation).toBe('s3://plant-output/edge');
  });

  it('answers an upload to a bucket gone since with 503 and Retry-After, logs it once, and takes it once the bucket is back', async () => {
    await client.send(new DeleteBucketCommand({ Bucket: 'plant-output' }));
    const key = `edge/plant/${HOUR}/gone.jsonl`;
    const viaJson = await deviceCall(t.server.deviceUrl, cam1.tls, 'POST', '/api/v1/device/captures/files', {
      body: { key, contentType: 'application/jsonl', data: manifest('g-1').toString('base64') },
    });
    expect(viaJson).toMatchObject({
      status: 503,
      body: {
        code: 'DependencyUnavailable',
        details: { fleet: 'plant', outputLocation: 's3://plant-output/edge', problem: 'missing-bucket' },
      },
    });
    expect(viaJson.body.message).toMatch(
      /^fleet plant's output location s3:\/\/plant-output\/edge cannot be written now: its bucket does not exist \(missing-bucket\); keep the capture and send it again later/,
    );
    // The raw form, as the agent sends it: the 503's Retry-After makes the agent hold the capture and wait.
    const raw = await uploadRawFile(t.server.deviceUrl, cam1.tls, key, manifest('g-1'), 'application/jsonl');
    expect(raw.status).toBe(503);
    expect(raw.headers['retry-after']).toBe('60');
    expect(raw.body.code).toBe('DependencyUnavailable');

    const unavailable = () =>
      logLines.filter((line) => JSON.parse(line).event === 'fleet_output_unavailable');
    expect(unavailable()).toHaveLength(1);
    expect(JSON.parse(unavailable()[0]!).msg).toMatch(
      /captures of fleet plant cannot be written to s3:\/\/plant-output\/edge/,
    );
    // No stack per upload at error level: the outage is logged once, above.
    expect(logLines.filter((line) => JSON.parse(line).level >= 50)).toEqual([]);

    await client.send(new CreateBucketCommand({ Bucket: 'plant-output' }));
    const delivered = await uploadRawFile(
      t.server.deviceUrl,
      cam1.tls,
      key,
      manifest('g-1'),
      'application/jsonl',
    );
    expect(delivered).toMatchObject({ status: 200, body: { records: 1 } });
    expect(logLines.filter((line) => JSON.parse(line).event === 'fleet_output_available')).toHaveLength(1);
  });

  it('shows the outage in the fleet report (and to the console) until an upload lands, without the endpoint or credentials', async () => {
    const report = async () =>
      (await t.call('GET', '/api/v1/fleets/plant/report', { token: t.readToken })).body as {
        outputOutage?: {
          since: string;
          lastFailure: string;
          problem: string;
          reason: string;
          message: string;
        };
      };
    const fleetsFingerprint = async () => (await readSnapshot(t.server.database.db, 0)).fleets;
    const deleteBucket = async () => {
      const listed = await client.send(new ListObjectsV2Command({ Bucket: 'plant-output' }));
      for (const { Key } of listed.Contents ?? [])
        await client.send(new DeleteObjectCommand({ Bucket: 'plant-output', Key }));
      await client.send(new DeleteBucketCommand({ Bucket: 'plant-output' }));
    };
    expect((await report()).outputOutage).toBeUndefined();
    const before = await fleetsFingerprint();

    await deleteBucket();
    // A file once stored is not written again (a retry of it is answered as stored): after the upload that
    // lands, a new file.
    const upload = (name = 'outage', id = 'o-1') =>
      uploadRawFile(
        t.server.deviceUrl,
        cam1.tls,
        `edge/plant/${HOUR}/${name}.jsonl`,
        manifest(id),
        'application/jsonl',
      );
    expect((await upload()).status).toBe(503);
    const outage = (await report()).outputOutage;
    expect(outage).toMatchObject({
      outputLocation: 's3://plant-output/edge',
      problem: 'missing-bucket',
      reason: 'bucket plant-output does not exist (404); create it, or name an existing bucket',
    });
    expect(outage!.lastFailure).toBe(outage!.since);
    expect(outage!.message).toBe(
      `output location s3://plant-output/edge missing bucket since ${outage!.since} (last failed upload ` +
        `${outage!.lastFailure}): bucket plant-output does not exist (404); create it, or name an existing ` +
        'bucket; devices keep their captures and retry',
    );
    const shown = JSON.stringify(await report());
    for (const secret of [
      s3.endpoint,
      '127.0.0.1',
      s3.credentials.accessKeyId,
      s3.credentials.secretAccessKey,
    ])
      expect(shown).not.toContain(secret);
    const during = await fleetsFingerprint();
    expect(during).not.toBe(before);
    // Another failure is the same outage: its start stays, and the console sees no change.
    expect((await upload()).status).toBe(503);
    expect((await report()).outputOutage?.since).toBe(outage!.since);
    expect(await fleetsFingerprint()).toBe(during);
    // Failures go on after the recorded last one is stale (here: set an hour back): the next one moves it on,
    // once, and the console hears of it; the outage's start stays.
    const hourBefore = Date.parse(outage!.since) - 3_600_000;
    await t.server.database.db
      .updateTable('fleets')
      .set({ output_outage_since: hourBefore, output_outage_last_failure_at: hourBefore })
      .where('name', '=', 'plant')
      .execute();
    const stale = await fleetsFingerprint();
    expect((await upload()).status).toBe(503);
    const goingOn = (await report()).outputOutage!;
    expect(goingOn.since).toBe(new Date(hourBefore).toISOString());
    expect(Date.parse(goingOn.lastFailure)).toBeGreaterThanOrEqual(Date.parse(outage!.since));
    expect(goingOn.message).toContain(`(last failed upload ${goingOn.lastFailure})`);
    const movedOn = await fleetsFingerprint();
    expect(movedOn).not.toBe(stale);
    expect((await upload()).status).toBe(503);
    expect((await report()).outputOutage?.lastFailure).toBe(goingOn.lastFailure);
    expect(await fleetsFingerprint()).toBe(movedOn);

    await client.send(new CreateBucketCommand({ Bucket: 'plant-output' }));
    expect((await upload()).status).toBe(200);
    expect((await report()).outputOutage).toBeUndefined();
    expect(await fleetsFingerprint()).not.toBe(movedOn);

    // An outage ends with the location it was of: the fleet moved elsewhere has none.
    await deleteBucket();
    expect((await upload('outage-2', 'o-2')).status).toBe(503);
    expect((await report()).outputOutage?.problem).toBe('missing-bucket');
    const moved = await t.call('PATCH', '/api/v1/fleets/plant', {
      token: t.adminToken,
      body: { outputConfig: { s3OutputLocation: `s3://${s3.bucket}/plant` } },
    });
    expect(moved.status).toBe(200);
    expect((await report()).outputOutage).toBeUndefined();
  });
});

describe('a fleet output with S3 blobs and no S3 credentials', () => {
  let s3: TestS3;
  let t: TestServer;
  // The S3 SDK's default chain, emptied for this in-process server: no key, profile, metadata or container.
  const noCredentials: Record<string, string> = {
    AWS_ACCESS_KEY_ID: '',
    AWS_SECRET_ACCESS_KEY: '',
    AWS_SESSION_TOKEN: '',
    AWS_PROFILE: '',
    AWS_SHARED_CREDENTIALS_FILE: '/nonexistent/edgefleet-no-credentials',
    AWS_CONFIG_FILE: '/nonexistent/edgefleet-no-config',
    AWS_EC2_METADATA_DISABLED: 'true',
    AWS_CONTAINER_CREDENTIALS_RELATIVE_URI: '',
    AWS_CONTAINER_CREDENTIALS_FULL_URI: '',
    AWS_WEB_IDENTITY_TOKEN_FILE: '',
  };
  const saved = new Map<string, string | undefined>();
  beforeAll(async () => {
    for (const [name, value] of Object.entries(noCredentials)) {
      saved.set(name, process.env[name]);
      process.env[name] = value;
    }
    s3 = await startTestS3();
    t = await startTestServer({
      blob: `s3://${s3.bucket}/server`,
      config: { s3: { endpoint: s3.endpoint } },
    });
  });
  afterAll(async () => {
    await t?.stop();
    await s3?.stop();
    for (const [name, value] of saved) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
  });

  it('refuses a fleet output the server has no credentials for with a 400 naming the settings, not a 503', async () => {
    const created = await t.call('POST', '/api/v1/fleets', {
      token: t.adminToken,
      body: { name: 'plant', outputConfig: { s3OutputLocation: `s3://${s3.bucket}/plant` } },
    });
    expect(created).toMatchObject({
      status: 400,
      body: { code: 'ValidationError', details: { problem: 'credentials' } },
    });
    expect(created.headers.get('retry-after')).toBeNull();
    expect(created.body.message).toMatch(
      /^the output location s3:\/\/edgefleet-test\/plant cannot be used: the server has no S3 credentials .*s3\.accessKeyId and s3\.secretAccessKey in its config file, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY/,
    );
    expect((await t.call('GET', '/api/v1/fleets/plant', { token: t.adminToken })).status).toBe(404);
  });
});

describe('raw captures cut off mid-body, with S3 blobs', () => {
  let s3: TestS3;
  let t: TestServer;
  let cam1: EnrolledDevice;
  beforeAll(async () => {
    s3 = await startTestS3();
    // One upload slot in the whole server: a cut-off upload that still held it would refuse the next.
    t = await startTestServer({
      blob: `s3://${s3.bucket}/server`,
      config: {
        s3: { endpoint: s3.endpoint, ...s3.credentials },
        captures: { largeBodyBytes: 1024, maxConcurrentUploads: 1, maxConcurrentUploadsPerDevice: 1 },
      },
    });
    ({ cam1 } = await setUp(t, `s3://${s3.bucket}/plant-captures`, `s3://${s3.bucket}/doors`));
  });
  afterAll(async () => {
    await t?.stop();
    await s3?.stop();
  });

  const usage = () => captureUsageOf(t, 'cam-1');

  it('aborts the S3 write: the charge is taken back and the slot and the bucket client are free for the next', async () => {
    const file = randomBytes(1024 * 1024);
    // Several in a row: each would otherwise hold one of the bucket client's sockets (s3rver never gives up on a
    // short body, and the fleet-output client's idle timeout is far longer than this test's).
    for (let i = 0; i < 3; i++) {
      const key = `plant-captures/plant/${HOUR}/raw-data/cut-${i}.bin`;
      const cut = startRawUpload(t.server.deviceUrl, cam1.tls, rawQueryOf(key), file, { sent: 200 * 1024 });
      cut.answer.catch(() => undefined);
      // Charged: the server has begun writing it to S3. (A charge that must come: bounded far above what a
      // loaded machine takes for a TLS handshake, 200 KiB and two database writes.)
      await vi.waitFor(async () => expect(await usage()).toBe(file.length), {
        timeout: 30_000,
        interval: 20,
      });
      cut.abort();
      // The write failed at once and its charge came back (a write still open would keep it charged).
      await vi.waitFor(async () => expect(await usage()).toBe(0), { timeout: 15_000, interval: 50 });
    }
    const key = `plant-captures/plant/${HOUR}/raw-data/whole.bin`;
    // The slots were given back when the cut connections closed: the next upload is taken.
    await uploadSlotsHeld(t.url, t.readToken, 0);
    const whole = await uploadRawFile(t.server.deviceUrl, cam1.tls, key, file);
    expect(whole.status).toBe(200);
    expect(whole.body).toMatchObject({ bytes: file.length });
    expect(await usage()).toBe(file.length);
    const client = new S3Client({
      endpoint: s3.endpoint,
      region: 'us-east-1',
      forcePathStyle: true,
      credentials: s3.credentials,
    });
    const object = await client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: key }));
    expect(Buffer.from(await object.Body!.transformToByteArray()).equals(file)).toBe(true);
    client.destroy();
  }, 60_000);
});

describe("one device's slow raw uploads and a bucket other fleets share, with S3 blobs", () => {
  const SLOTS = 60;
  let s3: TestS3;
  let t: TestServer;
  let cam1: EnrolledDevice;
  let door: EnrolledDevice;
  const logLines: string[] = [];
  beforeAll(async () => {
    s3 = await startTestS3();
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        logLines.push(...chunk.toString('utf8').split('\n').filter(Boolean));
        done();
      },
    });
    // More upload slots than the S3 SDK's default 50 sockets, all of them cam-1's to take.
    t = await startTestServer({
      logger: pino({ level: 'debug' }, sink),
      blob: `s3://${s3.bucket}/server`,
      config: {
        s3: { endpoint: s3.endpoint, ...s3.credentials },
        captures: {
          largeBodyBytes: 1024,
          maxConcurrentUploads: SLOTS,
          maxConcurrentUploadsPerDevice: SLOTS,
        },
      },
    });
    // Both fleets write to the one bucket, so through one S3 client.
    ({ cam1, door } = await setUp(t, `s3://${s3.bucket}/plant-captures`, `s3://${s3.bucket}/doors`));
    const moved = await t.call('PATCH', '/api/v1/fleets/doors', {
      token: t.adminToken,
      body: { outputConfig: { s3OutputLocation: `s3://${s3.bucket}/door-captures` } },
    });
    expect(moved.status).toBe(200);
  });
  afterAll(async () => {
    await t?.stop();
    await s3?.stop();
  });

  const client = () =>
    new S3Client({
      endpoint: s3.endpoint,
      region: 'us-east-1',
      forcePathStyle: true,
      credentials: s3.credentials,
    });
  const stored = async (key: string) => {
    const s3Client = client();
    try {
      const object = await s3Client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: key }));
      return Buffer.from(await object.Body!.transformToByteArray());
    } finally {
      s3Client.destroy();
    }
  };
  /** Starts `count` raw uploads of cam-1 that send `sent` bytes of `size` and wait; resolves once all are sent. */
  const holdUploads = async (name: string, count: number, size: number, sent: number) => {
    const held = Array.from({ length: count }, (_, i) => {
      const key = `plant-captures/plant/${HOUR}/raw-data/${name}-${i}.bin`;
      const body = Buffer.alloc(size, i);
      const upload = startRawUpload(t.server.deviceUrl, cam1.tls, rawQueryOf(key), body, { sent });
      upload.answer.catch(() => undefined);
      return { key, body, upload };
    });
    await Promise.all(held.map((h) => h.upload.started));
    const answered = new Set<number>();
    held.forEach((h, i) =>
      h.upload.answer.then(
        () => answered.add(i),
        () => answered.add(i),
      ),
    );
    return { held, answered };
  };
  /** door-1's (fleet doors) upload of a 10-byte file to the shared bucket. */
  const doorUpload = async (name: string) => {
    const key = `door-captures/doors/${HOUR}/raw-data/${name}.bin`;
    const answer = await uploadRawFile(t.server.deviceUrl, door.tls, key, Buffer.from('0123456789'));
    return { key, answer };
  };

  it("stores another fleet's file while the device trickles more small files (no slot each) than the bucket client has sockets", async () => {
    // More than the client's sockets: the slots' and the spare ones.
    const count = SLOTS + FLEET_OUTPUT_SPARE_SOCKETS + 10;
    const { held, answered } = await holdUploads('small', count, 1000, 100);
    const { key, answer } = await doorUpload('during-small');
    // Before the fix the small files' PUTs, opened before their bodies came, took every socket: this was a 500.
    expect(answer.status).toBe(200);
    expect((await stored(key)).toString()).toBe('0123456789');
    // cam-1 still held every one of its uploads meanwhile, and charged nothing for bodies not yet in.
    expect(answered.size).toBe(0);
    expect(await captureUsageOf(t, 'cam-1')).toBe(0);
    // Its files, once whole, are stored: read whole, they lose nothing.
    for (const h of held) h.upload.send();
    const answers = await Promise.all(held.map((h) => h.upload.answer));
    expect(answers.map((a) => a.status)).toEqual(held.map(() => 200));
    expect((await stored(held[count - 1]!.key)).equals(held[count - 1]!.body)).toBe(true);
    // Each charged at least MIN_OBJECT_CHARGE_BYTES (1 KiB).
    expect(await captureUsageOf(t, 'cam-1')).toBe(count * 1024);
  }, 60_000);

  it("stores another fleet's file while the device holds every upload slot with large files streamed slowly", async () => {
    const before = await captureUsageOf(t, 'cam-1');
    const { held, answered } = await holdUploads('large', SLOTS, 4096, 1024);
    // Charged: every one of them is streaming to S3, a socket each.
    await vi.waitFor(async () => expect(await captureUsageOf(t, 'cam-1')).toBe(before + SLOTS * 4096), {
      timeout: 15_000,
      interval: 50,
    });
    const { key, answer } = await doorUpload('during-large');
    // The bucket's client has a socket per slot and spare ones: else this waited for a socket and failed (500).
    expect(answer.status).toBe(200);
    expect((await stored(key)).toString()).toBe('0123456789');
    expect(answered.size).toBe(0);
    const consoleWarn = vi.spyOn(console, 'warn');
    for (const h of held) h.upload.abort();
    // Cut off, the uploads are not paid for.
    await vi.waitFor(async () => expect(await captureUsageOf(t, 'cam-1')).toBe(before), {
      timeout: 15_000,
      interval: 50,
    });
    // The S3 SDK's warning for each failed streamed PUT, which a device causes at will, is in the server's log
    // at debug, not on stderr.
    const warnings = logLines
      .map((line) => JSON.parse(line) as { level: number; component?: string; msg?: string })
      .filter((entry) => entry.component === 'fleet-output-s3');
    expect(warnings.length).toBeGreaterThan(0);
    expect(warnings.every((entry) => entry.level === 20 && /streaming request/.test(entry.msg ?? ''))).toBe(
      true,
    );
    expect(consoleWarn).not.toHaveBeenCalled();
    consoleWarn.mockRestore();
  }, 60_000);
});
