import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { writeTestModel } from '@edgefleet/core';
import { afterAll, describe, expect, it } from 'vitest';
import { PackagingJobStore } from '../../src/packaging/index.js';
import { databaseEngines } from '../support/engines.js';
import { startTestServer } from '../support/server.js';

const engines = await databaseEngines();
const work = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-resume-'));
afterAll(() => rm(work, { recursive: true, force: true }));
const LEASE_MS = 120_000;

const CLAIMER = fileURLToPath(new URL('../support/claim-packaging-job.ts', import.meta.url));
const TSX_LOADER = pathToFileURL(
  path.resolve(path.dirname(CLAIMER), '../../../../node_modules/tsx/dist/loader.mjs'),
).toString();

const uploadTiny = async (url: string, token: string, dir: string) => {
  const onnx = await writeTestModel('tiny', dir);
  const uploaded = await fetch(`${url}/api/v1/models/tiny/versions/1`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/octet-stream' },
    body: await readFile(onnx),
  });
  expect(uploaded.status).toBe(201);
};

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
        await uploadTiny(t.url, t.adminToken, path.join(work, fixture.engine));
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

        // The first runner was only stalled: its late failure does not undo the resumed run's result.
        await killed.fail('job-killed', 'late failure of a runner that lost its lease');
        const after = await t.call('GET', '/api/v1/packaging-jobs/job-killed', { token: t.readToken });
        expect(after.body).toMatchObject({ status: 'COMPLETED' });
      } finally {
        await t.stop();
      }
    },
  );

  it.skipIf(!fixture.available)(
    'is resumed after the process running it is killed with SIGKILL',
    async () => {
      const t = await startTestServer({
        database: await fixture.createLocation(),
        config: { packaging: { pollIntervalMs: 3_600_000, leaseSeconds: 1 } },
      });
      let claimer: ReturnType<typeof spawn> | undefined;
      try {
        await uploadTiny(t.url, t.adminToken, path.join(work, `${fixture.engine}-kill`));
        const { config, database, services } = t.server;
        await new PackagingJobStore(database.db, services.models).create({
          name: 'job-crashed',
          modelName: 'tiny',
          modelVersion: '1',
        });
        const blobRoot = config.blobLocation.kind === 'local' ? config.blobLocation.root : '';
        claimer = spawn(
          process.execPath,
          [
            '--import',
            TSX_LOADER,
            CLAIMER,
            JSON.stringify(config.databaseLocation),
            blobRoot,
            path.join(config.dataDir, 'tmp'),
            '1000',
          ],
          { stdio: ['ignore', 'pipe', 'inherit'] },
        );
        const child = claimer;
        const exited = new Promise((done) => child.once('exit', done));
        const said = await new Promise<string>((resolve, reject) => {
          let out = '';
          child.stdout?.on('data', (chunk: Buffer) => {
            out += chunk.toString();
            if (out.includes('\n')) resolve(out.trim());
          });
          child.once('exit', (code) => reject(new Error(`claimer exited (${code}) before claiming`)));
        });
        expect(said).toBe('claimed job-crashed');
        child.kill('SIGKILL');
        await exited;
        const job = async () =>
          (await t.call('GET', '/api/v1/packaging-jobs/job-crashed', { token: t.readToken })).body as {
            status: string;
          };
        expect((await job()).status).toBe('INPROGRESS');

        // Once the dead process's lease runs out, this server's worker claims the job and finishes it.
        for (let attempt = 0; attempt < 300 && (await job()).status === 'INPROGRESS'; attempt++) {
          await services.packagingWorker.drain();
          await new Promise((resolve) => setTimeout(resolve, 100));
        }
        expect(await job()).toMatchObject({ status: 'COMPLETED' });
      } finally {
        // Never leave the claimer behind, whatever failed.
        if (claimer?.exitCode === null && claimer.signalCode === null) claimer.kill('SIGKILL');
        await t.stop();
      }
    },
    60_000,
  );
});
