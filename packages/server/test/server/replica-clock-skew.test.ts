import { createReadStream } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { writeTestModel } from '@edgefleet/core';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { LocalBlobStore } from '../../src/blobs/index.js';
import { CompilationJobStore } from '../../src/compilation/index.js';
import { DeploymentService } from '../../src/deployments/index.js';
import { ModelStore } from '../../src/models/index.js';
import { PackagingJobStore } from '../../src/packaging/index.js';
import { databaseClock, warnOfClockSkew, type ServerDatabase } from '../../src/storage/index.js';
import { databaseEngines, openFreshDatabase } from '../support/engines.js';
import { startTestServer } from '../support/server.js';

const engines = await databaseEngines();
const SKEW_MS = 120_000;
const LEASE_MS = 30_000;
const ahead = () => Date.now() + SKEW_MS;
const behind = () => Date.now() - SKEW_MS;

// F8: two replicas on one database, one whose clock runs 120 s ahead (an NTP off by 2 min). Each store is wired
// as start-server wires it: its own process clock (`now`), the database's clock for leases.
describe.each(engines)('replica clock skew on $engine', (fixture) => {
  let dir: string;
  let database: ServerDatabase;
  let models: ModelStore;
  beforeAll(async () => {
    if (!fixture.available) return;
    dir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-skew-'));
    database = await openFreshDatabase(fixture);
    models = new ModelStore(database.db, {
      blobs: new LocalBlobStore(path.join(dir, 'blobs')),
      workDir: path.join(dir, 'work'),
      maxUploadBytes: 1024 * 1024,
    });
    const onnx = await writeTestModel('tiny', dir);
    await models.upload({ name: 'tiny', version: '1', kind: 'onnx', body: createReadStream(onnx) });
  });
  afterAll(async () => {
    await database?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it.skipIf(!fixture.available)(
    'a replica whose clock is 120 s ahead takes no live packaging job, and one 120 s behind keeps its own',
    async () => {
      const databaseNow = databaseClock(database);
      const store = (now: () => number) =>
        new PackagingJobStore(database.db, models, now, { databaseNow, leaseMs: LEASE_MS });
      const onTime = store(Date.now);
      const skewedAhead = store(ahead);
      const skewedBehind = store(behind);

      await onTime.create({ name: 'live-on-time', modelName: 'tiny', modelVersion: '1' });
      const claimed = await onTime.claimNext(LEASE_MS);
      expect(claimed?.job.name).toBe('live-on-time');
      expect(await skewedAhead.claimNext(LEASE_MS)).toBeUndefined();

      // The runner whose clock is behind claims and renews; a replica on time leaves its job alone.
      await onTime.create({ name: 'live-behind', modelName: 'tiny', modelVersion: '1' });
      const behindClaim = await skewedBehind.claimNext(LEASE_MS);
      expect(behindClaim?.job.name).toBe('live-behind');
      expect(await skewedBehind.touch(behindClaim!.claim, 'packaging')).toBe(true);
      expect(await onTime.claimNext(LEASE_MS)).toBeUndefined();
      expect(await skewedAhead.claimNext(LEASE_MS)).toBeUndefined();
      expect(await onTime.holds(claimed!.claim)).toBe(true);
      expect(await skewedBehind.holds(behindClaim!.claim)).toBe(true);

      // Review H1: what a replica describes of a job is judged by the database's clock too. A live, just-renewed
      // job is not "interrupted" to a replica ahead; one whose runner stopped renewing a minute ago is, even to a
      // replica behind.
      expect(await onTime.touch(claimed!.claim, 'packaging')).toBe(true);
      for (const replica of [onTime, skewedAhead, skewedBehind]) {
        expect((await replica.get('live-on-time')).statusMessage).toBe('packaging');
        const listed = await replica.list({ limit: 10 });
        expect(listed.find((job) => job.name === 'live-behind')?.statusMessage).toBe('packaging');
      }
      await database.db
        .updateTable('packaging_jobs')
        .set({ updated_at: (await databaseNow()) - 60_000 })
        .where('name', '=', 'live-behind')
        .execute();
      for (const replica of [onTime, skewedAhead, skewedBehind]) {
        expect((await replica.get('live-behind')).statusMessage).toMatch(
          /^packaging; its runner has not renewed the job's lease since .*: the server running it was interrupted/,
        );
        const listed = await replica.list({ limit: 10 });
        expect(listed.find((job) => job.name === 'live-behind')?.statusMessage).toMatch(/was interrupted/);
      }
    },
  );

  it.skipIf(!fixture.available)(
    'a replica whose clock is 120 s ahead fails no live compilation import, nor does one on time fail a behind one',
    async () => {
      const databaseNow = databaseClock(database);
      // Imports held in flight (their S3 read never answers) until the store closes.
      const held = (_uri: string, signal: AbortSignal) =>
        new Promise<Readable>((_resolve, reject) =>
          signal.addEventListener('abort', () => reject(new Error('aborted')), { once: true }),
        );
      const store = (now: () => number) =>
        new CompilationJobStore(database.db, {
          models,
          openS3Object: held,
          logger: pino({ level: 'silent' }),
          leaseMs: LEASE_MS,
          now,
          databaseNow,
        });
      const onTime = store(Date.now);
      const skewedAhead = store(ahead);
      const skewedBehind = store(behind);
      const input = (name: string) => ({
        name,
        framework: 'ONNX',
        inputS3Uri: 's3://neo-inputs/models/tiny.onnx',
        roleArn: 'arn:aws:iam::123456789012:role/neo',
        outputS3Location: 's3://neo-inputs/out',
        tags: [],
      });
      try {
        await onTime.create(input('import-on-time'));
        await skewedBehind.create(input('import-behind'));
        expect(await skewedAhead.failExpired()).toEqual([]);
        expect(await onTime.failExpired()).toEqual([]);
        expect((await onTime.get('import-on-time')).status).toBe('INPROGRESS');
        expect((await onTime.get('import-behind')).status).toBe('INPROGRESS');
      } finally {
        await Promise.all([onTime.close(), skewedAhead.close(), skewedBehind.close()]);
      }
    },
  );

  it.skipIf(!fixture.available)(
    'warns at start of a process clock off the database’s by more than 5 s',
    async () => {
      const lines: { fields: Record<string, unknown>; message: string }[] = [];
      const logger = {
        warn: (fields: Record<string, unknown>, message: string) => lines.push({ fields, message }),
      };
      const clock = databaseClock(database);
      expect(Math.abs(await warnOfClockSkew(clock, logger as never))).toBeLessThan(5_000);
      expect(lines).toEqual([]);
      expect(await warnOfClockSkew(clock, logger as never, ahead)).toBeGreaterThan(SKEW_MS - 5_000);
      expect(lines).toHaveLength(1);
      expect(lines[0]!.fields.event).toBe('clock_skew');
      expect(lines[0]!.message).toMatch(/120\.\d s ahead of the database's; synchronise the clocks/);
    },
  );
});

// F8, deployments: the time a device took its deployment, written through one replica, judged by another's sweep.
describe.each(engines)('device deadlines under replica clock skew on $engine', (fixture) => {
  it.skipIf(!fixture.available)(
    'a sweep 120 s ahead times out no device that took its deployment through a replica 120 s behind',
    async () => {
      const t = await startTestServer({
        database: await fixture.createLocation(),
        config: { packaging: { pollIntervalMs: 50 }, deployments: { sweepIntervalMs: 3_600_000 } },
      });
      onTestFinished(async () => {
        await t.stop();
        await rm(t.dataDir, { recursive: true, force: true });
      });
      await t.call('POST', '/api/v1/fleets', {
        token: t.adminToken,
        body: { name: 'f', outputConfig: { s3OutputLocation: 's3://c/f' } },
      });
      await t.call('POST', '/api/v1/fleets/f/devices', {
        token: t.adminToken,
        body: { devices: [{ name: 'd0' }] },
      });
      const onnx = await writeTestModel('tiny', path.join(t.dataDir, 'model'));
      await fetch(`${t.url}/api/v1/models/tiny/versions/1`, {
        method: 'POST',
        headers: { authorization: `Bearer ${t.adminToken}`, 'content-type': 'application/octet-stream' },
        body: await readFile(onnx),
      });
      await t.call('POST', '/api/v1/packaging-jobs', {
        token: t.adminToken,
        body: { name: 'pack-1', modelName: 'tiny', modelVersion: '1' },
      });
      for (let i = 0; i < 600; i++) {
        const job = await t.call('GET', '/api/v1/packaging-jobs/pack-1', { token: t.readToken });
        if (job.body.status === 'COMPLETED') break;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      const created = await t.call('POST', '/api/v1/deployment-plans', {
        token: t.adminToken,
        body: {
          name: 'p',
          fleetName: 'f',
          modelConfigs: [{ modelHandle: 'h', packagingJobName: 'pack-1' }],
          stages: [{ name: 's1', deviceSelection: { subsetType: 'SELECTION', deviceNames: ['d0'] } }],
          options: { deviceTimeoutSeconds: 60, maxRetries: 0 },
        },
      });
      expect(created.status).toBe(201);
      expect(
        (await t.call('POST', '/api/v1/deployment-plans/p/stages/s1/start', { token: t.adminToken })).status,
      ).toBe(200);

      const { database, services } = t.server;
      const replica = (now: () => number) =>
        new DeploymentService(database.db, {
          engine: database.engine,
          packagingJobs: services.packagingJobs,
          models: services.models,
          now,
          databaseNow: databaseClock(database),
        });
      const taken = await replica(behind).deploymentsFor({ deviceName: 'd0', fleetName: 'f' });
      expect(taken.Deployments?.map((d) => d.DeploymentName)).toEqual(['p']);
      expect(await replica(ahead).sweep()).toEqual({ timedOut: 0, unreadablePlans: [] });
      expect(await replica(Date.now).sweep()).toEqual({ timedOut: 0, unreadablePlans: [] });
      const plan = await t.call('GET', '/api/v1/deployment-plans/p', { token: t.readToken });
      expect(plan.body.stages[0].status).toBe('INPROGRESS');
    },
    60_000,
  );
});
