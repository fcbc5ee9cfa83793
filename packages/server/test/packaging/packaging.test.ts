import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { request as httpRequest } from 'node:http';
import { Readable } from 'node:stream';
import {
  createModelPackage,
  extractPackageArchive,
  getTestModel,
  packModelPackage,
  verifyPackage,
  writeTestModel,
} from '@edgefleet/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deviceCall } from '../support/device.js';
import { databaseEngines } from '../support/engines.js';
import { startTestS3, type TestS3 } from '../support/s3.js';
import { enrollDevice, startTestServer, type TestServer } from '../support/server.js';

const engines = await databaseEngines();
const sqlite = engines.find((e) => e.engine === 'sqlite')!;
const postgres = engines.find((e) => e.engine === 'postgres')!;

let work: string;
let onnx: { tiny: string; mlp: string; external: string };
let s3: TestS3;
beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-packaging-'));
  onnx = {
    tiny: await writeTestModel('tiny', path.join(work, 'tiny')),
    mlp: await writeTestModel('mlp', path.join(work, 'mlp')),
    external: await writeTestModel('external-data', path.join(work, 'external')),
  };
  s3 = await startTestS3('edgefleet-blobs');
});
afterAll(async () => {
  await s3?.stop();
  await rm(work, { recursive: true, force: true });
});

const setups = [
  { name: 'SQLite + local folder', fixture: sqlite, blob: () => undefined },
  { name: 'PostgreSQL + S3', fixture: postgres, blob: () => `s3://${s3.bucket}/server` },
];

describe.each(setups)('models and packaging on $name', ({ fixture, blob }) => {
  let t: TestServer;
  beforeAll(async () => {
    if (!fixture.available) return;
    const blobLocation = blob();
    t = await startTestServer({
      database: await fixture.createLocation(),
      ...(blobLocation ? { blob: blobLocation } : {}),
      config: {
        uploads: { maxModelBytes: 64 * 1024 },
        packaging: { pollIntervalMs: 50 },
        ...(blobLocation
          ? {
              s3: {
                endpoint: s3.endpoint,
                accessKeyId: s3.credentials.accessKeyId,
                secretAccessKey: s3.credentials.secretAccessKey,
              },
            }
          : {}),
      },
    });
  });
  afterAll(() => t?.stop());

  const upload = (
    model: string,
    version: string,
    body: Buffer,
    type = 'application/octet-stream',
    token?: string,
  ) =>
    fetch(`${t.url}/api/v1/models/${model}/versions/${encodeURIComponent(version)}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token ?? t.adminToken}`, 'content-type': type },
      body,
    }).then(async (r) => ({ status: r.status, body: await r.json() }));

  const waitForJob = async (name: string) => {
    for (let attempt = 0; attempt < 600; attempt++) {
      const job = await t.call('GET', `/api/v1/packaging-jobs/${name}`, { token: t.readToken });
      if (job.body.status === 'COMPLETED' || job.body.status === 'FAILED') return job.body;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    throw new Error(`packaging job ${name} did not finish`);
  };

  it.skipIf(!fixture.available)(
    'uploads an ONNX model and lists its versions with tensor metadata',
    async () => {
      const uploaded = await upload('tiny', '1.0', await readFile(onnx.tiny));
      expect(uploaded.status).toBe(201);
      const expected = getTestModel('tiny');
      expect(uploaded.body).toMatchObject({
        modelName: 'tiny',
        version: '1.0',
        sourceKind: 'onnx',
        inputs: expected.inputs,
        outputs: expected.outputs,
      });
      await upload('tiny', '1.1', await readFile(onnx.tiny));
      const versions = await t.call('GET', '/api/v1/models/tiny/versions', { token: t.readToken });
      expect(versions.body.versions.map((v: { version: string }) => v.version)).toEqual(['1.0', '1.1']);
      expect(versions.body.versions[0].inputs).toEqual(expected.inputs);
      expect(await t.call('GET', '/api/v1/models/tiny', { token: t.readToken })).toMatchObject({
        status: 200,
        body: { name: 'tiny', versionCount: 2, latestVersion: '1.1' },
      });
      expect(
        (await t.call('GET', '/api/v1/models', { token: t.readToken })).body.models.map(
          (m: { name: string }) => m.name,
        ),
      ).toContain('tiny');
      expect(await t.call('GET', '/api/v1/models/tiny/versions/9.9', { token: t.readToken })).toMatchObject({
        status: 404,
      });
    },
  );

  it.skipIf(!fixture.available)(
    'refuses duplicates, other content, oversized and unauthorised uploads',
    async () => {
      const bytes = await readFile(onnx.tiny);
      expect(await upload('tiny', '1.0', bytes)).toMatchObject({ status: 409, body: { code: 'Conflict' } });
      // A duplicate whose body is still coming: the store refuses before reading it; the rest is read (an
      // admin's, within the limit) before the 409, so the answer keeps the connection instead of cutting it
      // under a client still sending (which then saw EPIPE, not the answer). The second part is held back until
      // after the first is sent, so the body cannot be complete when a refusal that did not wait is written.
      const answer = await new Promise<{ status: number; connection: string | undefined }>(
        (resolve, reject) => {
          const request = httpRequest(`${t.url}/api/v1/models/tiny/versions/1.0`, {
            method: 'POST',
            headers: {
              authorization: `Bearer ${t.adminToken}`,
              'content-type': 'application/octet-stream',
              'content-length': String(48 * 1024),
            },
          });
          request.on('error', reject);
          request.on('response', (response) => {
            response.resume();
            resolve({ status: response.statusCode ?? 0, connection: response.headers.connection });
          });
          request.write(Buffer.alloc(16 * 1024, 1), () =>
            setTimeout(() => request.end(Buffer.alloc(32 * 1024, 1)), 300),
          );
        },
      );
      expect(answer).toEqual({ status: 409, connection: 'keep-alive' });
      const junk = await upload('junk', '1', Buffer.from('not a model'));
      expect(junk).toMatchObject({ status: 400, body: { code: 'ValidationError' } });
      // The message is about the upload, never the server's scratch file.
      const { message } = junk.body as { message: string };
      expect(message).toMatch(/^the upload /);
      expect(message).not.toMatch(/upload-[0-9a-f]+|\//);
      expect(await upload('ext', '1', await readFile(onnx.external))).toMatchObject({
        status: 400,
        body: { message: expect.stringMatching(/external/i) },
      });
      expect(await upload('tiny', '2', bytes, 'text/plain')).toMatchObject({ status: 415 });
      expect(await upload('big', '1', Buffer.alloc(64 * 1024 + 1))).toMatchObject({
        status: 413,
        body: { code: 'PayloadTooLarge' },
      });
      // Streamed without a length: stopped by the spooler at the limit.
      const streamed = await fetch(`${t.url}/api/v1/models/big/versions/2`, {
        method: 'POST',
        headers: { authorization: `Bearer ${t.adminToken}`, 'content-type': 'application/octet-stream' },
        body: Readable.toWeb(
          Readable.from([Buffer.alloc(40 * 1024), Buffer.alloc(40 * 1024)]),
        ) as ReadableStream,
        duplex: 'half',
      } as RequestInit);
      expect(streamed.status).toBe(413);
      expect(await upload('tiny', '3', bytes, 'application/octet-stream', t.readToken)).toMatchObject({
        status: 403,
      });
      expect(await upload('bad_name', '1', bytes)).toMatchObject({ status: 400 });
      expect(await t.call('GET', '/api/v1/models/big', { token: t.readToken })).toMatchObject({
        status: 404,
      });
    },
  );

  it.skipIf(!fixture.available)(
    'packages, signs and stores <name>-<version>.tar.gz that verifies offline',
    async () => {
      const created = await t.call('POST', '/api/v1/packaging-jobs', {
        token: t.adminToken,
        body: {
          name: 'pack-tiny-1',
          modelName: 'tiny',
          modelVersion: '1.0',
          outputS3Location: 's3://out/packages',
        },
      });
      expect(created.status).toBe(201);
      expect(['STARTING', 'INPROGRESS']).toContain(created.body.status);
      const job = await waitForJob('pack-tiny-1');
      expect(job).toMatchObject({ status: 'COMPLETED', outputS3Location: 's3://out/packages' });
      expect(job.artifact.location).toMatch(/\/packages\/pack-tiny-1\/[0-9a-f]{24}\/tiny-1\.0\.tar\.gz$/);
      expect(JSON.parse(job.modelSignature).dsseEnvelope.payloadType).toBe('application/vnd.in-toto+json');

      const download = await fetch(`${t.url}/api/v1/packaging-jobs/pack-tiny-1/artifact`, {
        headers: { authorization: `Bearer ${t.readToken}` },
      });
      expect(download.status).toBe(200);
      const archive = path.join(work, `download-${fixture.engine}.tar.gz`);
      await writeFile(archive, Buffer.from(await download.arrayBuffer()));
      const dir = path.join(work, `extracted-${fixture.engine}`);
      await extractPackageArchive(archive, dir);
      const root = await t.call('GET', '/api/v1/signing/root-certificate', { token: t.readToken });
      const verified = await verifyPackage(dir, { rootCertificatesPem: [root.body.certificatePem] });
      expect(verified.method).toBe('certificate');
      const manifest = JSON.parse(await readFile(path.join(dir, 'sagemaker_edge_manifest'), 'utf8'));
      expect(manifest.metadata).toMatchObject({ model_name: 'tiny', model_version: '1.0' });
    },
  );

  it.skipIf(!fixture.available)('re-signs an uploaded ready package with the server key', async () => {
    const pkgDir = path.join(work, `pkg-${fixture.engine}`);
    await createModelPackage({ modelPath: onnx.mlp, name: 'mlp', version: '3', outDir: pkgDir });
    const archive = path.join(work, `mlp-${fixture.engine}.tar.gz`);
    await packModelPackage(pkgDir, archive);
    const uploaded = await upload('mlp', '3', await readFile(archive), 'application/gzip');
    expect(uploaded).toMatchObject({
      status: 201,
      body: { sourceKind: 'package', inputs: getTestModel('mlp').inputs },
    });
    expect(await upload('mlp', '4', await readFile(archive), 'application/gzip')).toMatchObject({
      status: 400,
      body: { message: expect.stringMatching(/uploaded as mlp version 4/) },
    });
    await t.call('POST', '/api/v1/packaging-jobs', {
      token: t.adminToken,
      body: { name: 'pack-mlp-3', modelName: 'mlp', modelVersion: '3' },
    });
    expect((await waitForJob('pack-mlp-3')).status).toBe('COMPLETED');
  });

  it.skipIf(!fixture.available)('validates jobs and reports failures with a message', async () => {
    const body = { name: 'j1', modelName: 'tiny', modelVersion: '404' };
    expect(await t.call('POST', '/api/v1/packaging-jobs', { token: t.adminToken, body })).toMatchObject({
      status: 404,
    });
    expect(
      await t.call('POST', '/api/v1/packaging-jobs', {
        token: t.readToken,
        body: { ...body, modelVersion: '1.0' },
      }),
    ).toMatchObject({ status: 403 });
    expect(
      await t.call('POST', '/api/v1/packaging-jobs', {
        token: t.adminToken,
        body: { ...body, name: 'pack-tiny-1', modelVersion: '1.0' },
      }),
    ).toMatchObject({ status: 409 });
    expect(
      await t.call('POST', '/api/v1/packaging-jobs', {
        token: t.adminToken,
        body: { ...body, name: '-bad' },
      }),
    ).toMatchObject({ status: 400 });

    // The uploaded model disappears from the blob store: the job fails and says why.
    const version = await t.server.services.models.getVersion('tiny', '1.1');
    await t.server.blobs.delete(version.blobKey);
    await t.call('POST', '/api/v1/packaging-jobs', {
      token: t.adminToken,
      body: { name: 'doomed', modelName: 'tiny', modelVersion: '1.1' },
    });
    const failed = await waitForJob('doomed');
    expect(failed).toMatchObject({
      status: 'FAILED',
      statusMessage: expect.stringMatching(/does not exist/),
    });
    expect(failed.artifact).toBeUndefined();
    expect(
      await t.call('GET', '/api/v1/packaging-jobs/doomed/artifact', { token: t.readToken }),
    ).toMatchObject({
      status: 409,
    });
    const listed = await t.call('GET', '/api/v1/packaging-jobs?status=FAILED', { token: t.readToken });
    expect(listed.body.jobs.map((j: { name: string }) => j.name)).toEqual(['doomed']);
  });

  it.skipIf(!fixture.available)(
    'refuses a device a package not deployed to its fleet, without telling which jobs exist (issue 15, item 14)',
    async () => {
      await t.call('POST', '/api/v1/fleets', {
        token: t.adminToken,
        body: { name: 'f', outputConfig: { s3OutputLocation: 's3://c/f' } },
      });
      await t.call('POST', '/api/v1/fleets/f/devices', {
        token: t.adminToken,
        body: { devices: [{ name: 'd1' }] },
      });
      const device = await enrollDevice(t, 'd1');
      const job = await t.call('GET', '/api/v1/packaging-jobs/pack-tiny-1', { token: t.readToken });
      expect(job.body.status).toBe('COMPLETED');
      // No deployment plan puts pack-tiny-1 on fleet f (none exist yet): the device may not have it.
      const refused = await deviceCall(
        t.server.deviceUrl,
        device.tls,
        'GET',
        '/api/v1/device/packages/pack-tiny-1',
      );
      expect(refused).toMatchObject({
        status: 403,
        body: { code: 'Forbidden', details: { job: 'pack-tiny-1', fleet: 'f' } },
      });
      expect(refused.body.message).toContain('not deployed to fleet f');
      // A job that does not exist gets the same answer: no oracle for other fleets' job names.
      expect(
        await deviceCall(t.server.deviceUrl, device.tls, 'GET', '/api/v1/device/packages/no-such-job'),
      ).toMatchObject({ status: 403, body: { code: 'Forbidden' } });
      expect(
        await deviceCall(
          t.server.deviceUrl,
          { ca: device.tls.ca },
          'GET',
          '/api/v1/device/packages/pack-tiny-1',
        ),
      ).toMatchObject({ status: 401 });
    },
  );
});
