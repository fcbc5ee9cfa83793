/**
 * Where a fleet's captures go on a server with a local blob folder: to the fleet's bucket when the server has S3
 * settings (the facade set-up: packaging jobs write through them too), with the fleet's KMS key applied; to the
 * local folder only on a server with no S3 at all, which the fleet's create answer and the log say.
 */
import { access, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { Writable } from 'node:stream';
import { GetObjectCommand, S3Client } from '@aws-sdk/client-s3';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { uploadRawFile } from '../../../../test/support/raw-upload.js';
import { deviceCall } from '../support/device.js';
import { startRecordingProxy, type RecordingProxy } from '../support/recording-proxy.js';
import { startTestS3, type TestS3 } from '../support/s3.js';
import { enrollDevice, startTestServer, type EnrolledDevice, type TestServer } from '../support/server.js';

const HOUR = 'mlp/2026/12/06/05';
const KMS_KEY = 'arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab';

const manifestOf = (device: string, fleet: string, captureId: string) =>
  Buffer.from(
    `${JSON.stringify({
      eventVersion: '0',
      eventMetadata: { deviceFleetName: fleet, deviceId: device, eventId: captureId, modelName: 'mlp' },
      deviceFleetInputs: [],
      deviceFleetOutputs: [],
    })}\n`,
  );

/** `device`'s upload of `manifest` at capture key `key` to `t`'s device API (the JSON form). */
const uploadManifest = (t: TestServer, device: EnrolledDevice, key: string, manifest: Buffer) =>
  deviceCall(t.server.deviceUrl, device.tls, 'POST', '/api/v1/device/captures/files', {
    body: { key, contentType: 'application/jsonl', data: manifest.toString('base64') },
  });

function logSink(lines: string[]): Writable {
  return new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(...chunk.toString('utf8').split('\n').filter(Boolean));
      done();
    },
  });
}

async function createFleet(t: TestServer, name: string, location: string, kmsKeyId?: string) {
  const created = await t.call('POST', '/api/v1/fleets', {
    token: t.adminToken,
    body: { name, outputConfig: { s3OutputLocation: location, ...(kmsKeyId !== undefined && { kmsKeyId }) } },
  });
  expect(created.status).toBe(201);
  return created.body as { warnings?: string[] };
}

async function registerAndEnroll(t: TestServer, fleet: string, device: string): Promise<EnrolledDevice> {
  await t.call('POST', `/api/v1/fleets/${fleet}/devices`, {
    token: t.adminToken,
    body: { devices: [{ name: device }] },
  });
  return enrollDevice(t, device);
}

describe('captures on a server with a local blob folder and S3 settings', () => {
  let s3: TestS3;
  let proxy: RecordingProxy;
  let t: TestServer;
  let cam1: EnrolledDevice;
  let door1: EnrolledDevice;
  let client: S3Client;
  const created: { warnings?: string[] }[] = [];
  beforeAll(async () => {
    s3 = await startTestS3();
    proxy = await startRecordingProxy(s3.port);
    // No blob: the default local folder, as in the facade guide's set-up. A side file over largeBodyBytes (the
    // schema's least) is streamed to the store: its own put path.
    t = await startTestServer({
      config: { s3: { endpoint: proxy.endpoint, ...s3.credentials }, captures: { largeBodyBytes: 1024 } },
    });
    created.push(await createFleet(t, 'plant', `s3://${s3.bucket}/plant-captures`, KMS_KEY));
    created.push(await createFleet(t, 'doors', `s3://${s3.bucket}/doors`));
    cam1 = await registerAndEnroll(t, 'plant', 'cam-1');
    door1 = await registerAndEnroll(t, 'doors', 'door-1');
    client = new S3Client({
      endpoint: s3.endpoint,
      region: 'us-east-1',
      forcePathStyle: true,
      credentials: s3.credentials,
    });
  });
  afterAll(async () => {
    client?.destroy();
    await t?.stop();
    await proxy?.stop();
    await s3?.stop();
  });

  /** The PutObject requests the server sent for `key` (path-style: /<bucket>/<key>). */
  const putsOf = (key: string) =>
    proxy.requests.filter(
      (request) => request.method === 'PUT' && request.url.split('?')[0] === `/${s3.bucket}/${key}`,
    );

  it("writes a capture into the fleet's bucket, where its records' data-refs point, not into the local folder", async () => {
    expect(created.map((answer) => answer.warnings)).toEqual([undefined, undefined]);
    const key = `plant-captures/plant/${HOUR}/aaaa.jsonl`;
    const answer = await uploadManifest(t, cam1, key, manifestOf('cam-1', 'plant', 'c-1'));
    expect(answer).toMatchObject({ status: 200, body: { location: `s3://${s3.bucket}/${key}`, records: 1 } });
    const object = await client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: key }));
    expect(await object.Body!.transformToString()).toBe(manifestOf('cam-1', 'plant', 'c-1').toString());
    await expect(access(path.join(t.dataDir, 'blobs', 'fleet-output'))).rejects.toThrow(/ENOENT/);
  });

  it("writes every object of a fleet with a KMS key with SSE-KMS under that key, and others' without", async () => {
    const manifestKey = `plant-captures/plant/${HOUR}/bbbb.jsonl`;
    const json = await uploadManifest(t, cam1, manifestKey, manifestOf('cam-1', 'plant', 'c-2'));
    expect(json.status).toBe(200);
    // The raw form, over largeBodyBytes: streamed to the store (another put path).
    const sideKey = `plant-captures/plant/${HOUR}/raw-data/c-2-input-1.bin`;
    expect((await uploadRawFile(t.server.deviceUrl, cam1.tls, sideKey, Buffer.alloc(70_000, 7))).status).toBe(
      200,
    );
    const doorKey = `doors/doors/${HOUR}/dddd.jsonl`;
    const door = await uploadManifest(t, door1, doorKey, manifestOf('door-1', 'doors', 'd-1'));
    expect(door.status).toBe(200);

    for (const key of [manifestKey, sideKey]) {
      const puts = putsOf(key);
      expect(puts.length).toBeGreaterThan(0);
      for (const put of puts) {
        expect(put.headers['x-amz-server-side-encryption']).toBe('aws:kms');
        expect(put.headers['x-amz-server-side-encryption-aws-kms-key-id']).toBe(KMS_KEY);
      }
    }
    const doorPuts = putsOf(doorKey);
    expect(doorPuts.length).toBeGreaterThan(0);
    for (const put of doorPuts) {
      expect(put.headers['x-amz-server-side-encryption']).toBeUndefined();
      expect(put.headers['x-amz-server-side-encryption-aws-kms-key-id']).toBeUndefined();
    }
  });
});

/** An S3 error document as AWS (and S3-compatible stores) answer a request with it. */
const s3Error = (code: string, message: string) =>
  `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${message}</Message><RequestId>4442587FB7D0A2F9</RequestId><HostId>h</HostId></Error>`;

// Review G1: a KMS key the store cannot use failed every upload of the fleet with a bare 500, which the agent
// retries at once, with no outage in the fleet report and nothing in the log.
describe('captures of a fleet whose KMS key the store cannot use', () => {
  let s3: TestS3;
  let proxy: RecordingProxy;
  let t: TestServer;
  const logLines: string[] = [];
  /** How the "store" answers a PutObject with SSE-KMS, by the fleet's prefix (the key's first segment). */
  const answers: Record<string, { status: number; code: string; message: string }> = {
    // AWS: a key that does not exist (or is in another account or region).
    'aws-captures': {
      status: 400,
      code: 'KMS.NotFoundException',
      message: `Invalid keyId '${KMS_KEY}'`,
    },
    // MinIO with no KMS configured.
    'minio-captures': {
      status: 501,
      code: 'NotImplemented',
      message: 'Server side encryption specified but KMS is not configured',
    },
    // AWS: credentials without kms:GenerateDataKey on the key.
    'denied-captures': {
      status: 403,
      code: 'AccessDenied',
      message: 'User is not authorized to perform: kms:GenerateDataKey',
    },
  };
  beforeAll(async () => {
    s3 = await startTestS3();
    proxy = await startRecordingProxy(s3.port, (request) => {
      if (request.method !== 'PUT' || request.headers['x-amz-server-side-encryption'] === undefined)
        return undefined;
      const answer = answers[request.url.split('/')[2] ?? ''];
      return answer && { status: answer.status, body: s3Error(answer.code, answer.message) };
    });
    t = await startTestServer({
      // Side files over 1024 bytes take the streamed put.
      config: { s3: { endpoint: proxy.endpoint, ...s3.credentials }, captures: { largeBodyBytes: 1024 } },
      logger: pino({ level: 'info' }, logSink(logLines)),
    });
  });
  afterAll(async () => {
    await t?.stop();
    await proxy?.stop();
    await s3?.stop();
  });

  const report = async (fleet: string) =>
    (await t.call('GET', `/api/v1/fleets/${fleet}/report`, { token: t.readToken })).body as {
      outputOutage?: { problem: string; reason: string; message: string };
    };

  it.each([
    ['aws', 'aws-captures', '400 KMS.NotFoundException'],
    ['minio', 'minio-captures', '501 NotImplemented'],
  ])(
    'answers every upload (%s) with 503 and Retry-After, records the outage naming the key, and logs it once',
    async (fleet, prefix, answer) => {
      await createFleet(t, fleet, `s3://${s3.bucket}/${prefix}`, KMS_KEY);
      const device = await registerAndEnroll(t, fleet, `${fleet}-cam`);
      const key = `${prefix}/${fleet}/${HOUR}/aaaa.jsonl`;
      const json = await uploadManifest(t, device, key, manifestOf(`${fleet}-cam`, fleet, 'k-1'));
      expect(json).toMatchObject({
        status: 503,
        body: {
          code: 'DependencyUnavailable',
          details: { fleet, outputLocation: `s3://${s3.bucket}/${prefix}`, problem: 'forbidden' },
        },
      });
      const raw = await uploadRawFile(
        t.server.deviceUrl,
        device.tls,
        key,
        manifestOf(`${fleet}-cam`, fleet, 'k-1'),
        'application/jsonl',
      );
      expect(raw.status).toBe(503);
      expect(raw.headers['retry-after']).toBe('60');
      const streamed = await uploadRawFile(
        t.server.deviceUrl,
        device.tls,
        `${prefix}/${fleet}/${HOUR}/raw-data/k-1-input-1.bin`,
        Buffer.alloc(4096, 7),
      );
      expect(streamed.status).toBe(503);
      expect(streamed.headers['retry-after']).toBe('60');

      const reason =
        `bucket ${s3.bucket} refused to encrypt with the fleet's KMS key ${KMS_KEY} (KmsKeyId) (${answer}); ` +
        "the key must exist, be enabled and be in the bucket's region, the server's S3 credentials need " +
        'kms:GenerateDataKey on it, and an S3-compatible store must have KMS configured (SSE-KMS); or clear ' +
        "the fleet's KmsKeyId";
      expect((await report(fleet)).outputOutage).toMatchObject({ problem: 'forbidden', reason });
      const logged = logLines
        .map((line) => JSON.parse(line) as { event?: string; fleet?: string; msg?: string })
        .filter((line) => line.event === 'fleet_output_unavailable' && line.fleet === fleet);
      expect(logged).toHaveLength(1);
      expect(logged[0]!.msg).toContain(reason);
    },
  );

  it("names the fleet's KMS key in a 403's reason: AWS answers a key the credentials may not use so", async () => {
    await createFleet(t, 'denied', `s3://${s3.bucket}/denied-captures`, KMS_KEY);
    const device = await registerAndEnroll(t, 'denied', 'denied-cam');
    const answer = await uploadManifest(
      t,
      device,
      `denied-captures/denied/${HOUR}/aaaa.jsonl`,
      manifestOf('denied-cam', 'denied', 'k-1'),
    );
    expect(answer).toMatchObject({ status: 503, body: { details: { problem: 'forbidden' } } });
    expect((await report('denied')).outputOutage?.reason).toBe(
      `access to bucket ${s3.bucket} denied (403 AccessDenied); check the credentials and that they may read and write the bucket, and use the fleet's KMS key ${KMS_KEY} (KmsKeyId): kms:GenerateDataKey on it`,
    );
  });
});

// Review N1: captures kept locally before the upgrade stay in the folder, where no data-ref points.
describe('a server given S3 settings with captures left in its local folder', () => {
  let s3: TestS3;
  let t: TestServer | undefined;
  let dataDir: string;
  beforeAll(async () => {
    s3 = await startTestS3();
    dataDir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-server-'));
  });
  afterAll(async () => {
    await t?.stop();
    await s3?.stop();
    if (dataDir !== undefined) await rm(dataDir, { recursive: true, force: true });
  });

  it('warns at start, naming the folder, the buckets and the copy to make', async () => {
    const blobRoot = path.join(dataDir, 'blobs');
    for (const bucket of ['captures', 'plant-output']) {
      const folder = path.join(blobRoot, 'fleet-output', bucket, 'edge', 'plant', HOUR);
      await mkdir(folder, { recursive: true });
      await writeFile(path.join(folder, 'aaaa.jsonl'), manifestOf('cam-1', 'plant', 'c-1'));
    }
    const logLines: string[] = [];
    const leftLines = () =>
      logLines
        .map((line) => JSON.parse(line) as { event?: string; msg?: string; buckets?: string[] })
        .filter((line) => line.event === 'fleet_output_local_left');
    // With no S3, the folder is where its captures belong: nothing to copy, nothing said.
    t = await startTestServer({
      dataDir,
      config: { allowEmptyDatabase: true },
      logger: pino({ level: 'info' }, logSink(logLines)),
    });
    await t.stop();
    t = undefined;
    expect(leftLines()).toEqual([]);

    t = await startTestServer({
      dataDir,
      config: { s3: { endpoint: s3.endpoint, ...s3.credentials } },
      logger: pino({ level: 'info' }, logSink(logLines)),
    });
    const folder = path.join(blobRoot, 'fleet-output');
    expect(leftLines()).toEqual([
      expect.objectContaining({
        buckets: ['captures', 'plant-output'],
        msg:
          `captures kept in ${folder} before the server had S3 settings are still there (buckets captures, ` +
          "plant-output): the server now writes captures to the fleets' buckets, and their records' data-refs point " +
          `there; copy each with "aws s3 sync ${folder}/<bucket>/ s3://<bucket>/" (adding --sse aws:kms ` +
          '--sse-kms-key-id <key> for a fleet with a KMS key, --endpoint-url for an S3-compatible store) once ' +
          'every replica runs this version, then remove the folder',
      }),
    ]);
  });
});

describe('captures on a server with no S3 at all', () => {
  let t: TestServer;
  const logLines: string[] = [];
  beforeAll(async () => {
    t = await startTestServer({ logger: pino({ level: 'info' }, logSink(logLines)) });
  });
  afterAll(() => t?.stop());

  it('keeps them in the local folder and says so, naming the folder, in the answer and the log', async () => {
    const folder = `${pathToFileURL(path.join(t.dataDir, 'blobs')).toString()}/fleet-output/captures/edge`;
    const answer = await createFleet(t, 'plant', 's3://captures/edge', KMS_KEY);
    expect(answer.warnings).toEqual([
      `captures for s3://captures/edge will be kept on the server in ${folder}, not in bucket captures: the server has no S3 (no --blob s3://…, s3.endpoint, s3.region or s3.accessKeyId); give it its S3 settings and restart it to have captures written to the bucket (the KMS key ${KMS_KEY} is not applied to that folder)`,
    ]);
    const logged = logLines
      .map((line) => JSON.parse(line) as { event?: string; msg?: string; outputLocation?: string })
      .filter((line) => line.event === 'fleet_output_local');
    expect(logged).toEqual([
      expect.objectContaining({ outputLocation: 's3://captures/edge', msg: answer.warnings![0] }),
    ]);

    const cam1 = await registerAndEnroll(t, 'plant', 'cam-1');
    const key = `edge/plant/${HOUR}/aaaa.jsonl`;
    const stored = await uploadManifest(t, cam1, key, manifestOf('cam-1', 'plant', 'c-1'));
    expect(stored.status).toBe(200);
    expect(stored.body.location).toBe(`${folder}/plant/${HOUR}/aaaa.jsonl`);
  });
});
