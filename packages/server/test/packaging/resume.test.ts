import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { writeTestModel } from '@edgefleet/core';
import { afterAll, describe, expect, it } from 'vitest';
import { PackagingJobStore } from '../../src/packaging/index.js';
import { databaseEngines } from '../support/engines.js';
import { startTestServer } from '../support/server.js';

const engines = await databaseEngines();
const work = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-resume-'));
afterAll(() => rm(work, { recursive: true, force: true }));
const LEASE_MS = 120_000;

describe.each(engines)('an interrupted packaging job on $engine (issue 15, item 9)', (fixture) => {
  it.skipIf(!fixture.available)(
    'is claimed again once its lease ran out and completes; a live runner’s job is left alone',
    async () => {
      const t = await startTestServer({
        database: await fixture.createLocation(),
        // The worker looks for jobs only when this test asks it to.
        config: { packaging: { pollIntervalMs: 3_600_000 } },
      });
      try {
        const onnx = await writeTestModel('tiny', path.join(work, fixture.engine));
        const uploaded = await fetch(`${t.url}/api/v1/models/tiny/versions/1`, {
          method: 'POST',
          headers: { authorization: `Bearer ${t.adminToken}`, 'content-type': 'application/octet-stream' },
          body: await readFile(onnx),
        });
        expect(uploaded.status).toBe(201);
        const { db } = t.server.database;
        const { models, packagingWorker } = t.server.services;

        // Another replica, alive, working on its job (lease fresh).
        const live = new PackagingJobStore(db, models);
        await live.create({ name: 'job-live', modelName: 'tiny', modelVersion: '1' });
        expect((await live.claimNext(LEASE_MS))?.job.name).toBe('job-live');
        // A server that claimed a job ten minutes ago and was killed: it never touched the job again.
        const killed = new PackagingJobStore(db, models, () => Date.now() - 10 * 60_000);
        await killed.create({ name: 'job-killed', modelName: 'tiny', modelVersion: '1' });
        expect((await killed.claimNext(LEASE_MS))?.job.name).toBe('job-killed');

        await packagingWorker.drain();

        const resumed = await t.call('GET', '/api/v1/packaging-jobs/job-killed', { token: t.readToken });
        expect(resumed.body).toMatchObject({ status: 'COMPLETED' });
        const untouched = await t.call('GET', '/api/v1/packaging-jobs/job-live', { token: t.readToken });
        expect(untouched.body).toMatchObject({ status: 'INPROGRESS' });
      } finally {
        await t.stop();
      }
    },
  );
});
