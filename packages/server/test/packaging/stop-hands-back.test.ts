import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { PackagingJobStore, PackagingWorker } from '../../src/packaging/index.js';
import { databaseEngines } from '../support/engines.js';
import { startTestServer } from '../support/server.js';
import { uploadTinyModel } from '../support/upload-model.js';

const engines = await databaseEngines();
const work = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-stop-'));
afterAll(() => rm(work, { recursive: true, force: true }));
const LEASE_MS = 120_000;

// F7: a stop (SIGTERM) does not wait for the build in hand: the build stops where it is, its temporary folder
// goes, and its claim is handed back, so another replica resumes it at once rather than after the lease.
describe.each(engines)('a packaging worker stopped mid-build on $engine', (fixture) => {
  it.skipIf(!fixture.available)(
    'stops at once, removes the temporary folder and hands the job back to any replica',
    async () => {
      const t = await startTestServer({
        database: await fixture.createLocation(),
        config: { packaging: { pollIntervalMs: 3_600_000 } },
      });
      try {
        await uploadTinyModel(t.url, t.adminToken, path.join(work, `${fixture.engine}-model`));
        const { blobs, database, services } = t.server;
        await services.packagingJobs.create({ name: 'job-stop', modelName: 'tiny', modelVersion: '1' });
        const worker = (name: string, afterPackaged: PackagingWorkerHook) =>
          new PackagingWorker({
            jobs: new PackagingJobStore(database.db, services.models, undefined, { leaseMs: LEASE_MS }),
            models: services.models,
            blobs,
            signing: services.signing,
            workDir: path.join(work, `${fixture.engine}-${name}`),
            pollIntervalMs: 3_600_000,
            leaseMs: LEASE_MS,
            logger: t.server.logger,
            afterPackaged,
          });
        // The slow step: a copy to an output location that does not answer until the worker stops (aborted).
        let reached!: () => void;
        const inSlowStep = new Promise<void>((resolve) => (reached = resolve));
        const stopping = worker('stopping', (_job, _archive, _size, signal) => {
          reached();
          return new Promise((_resolve, reject) =>
            signal.addEventListener('abort', () => reject(new Error('aborted by the stop')), { once: true }),
          );
        });
        const draining = stopping.drain();
        await inSlowStep;
        await stopping.stop();
        await draining;

        const job = await t.call('GET', '/api/v1/packaging-jobs/job-stop', { token: t.readToken });
        expect(job.body).toMatchObject({
          status: 'INPROGRESS',
          statusMessage: 'handed back: the server packaging it stopped; any server resumes it',
        });
        expect(await readdir(path.join(work, `${fixture.engine}-stopping`))).toEqual([]);
        // Not a package of the stopped build is kept.
        expect(await blobs.list('packages/job-stop/')).toEqual([]);

        // Another replica takes it now, not after the 120 s lease, and completes it.
        const copy = path.join(work, `${fixture.engine}-copy`);
        const other = worker('other', async (_job, archive) => writeFile(copy, await readFile(archive)));
        await other.drain();
        await other.stop();
        const done = await t.call('GET', '/api/v1/packaging-jobs/job-stop', { token: t.readToken });
        expect(done.body).toMatchObject({ status: 'COMPLETED' });
      } finally {
        await t.stop();
      }
    },
    60_000,
  );
});

type PackagingWorkerHook = NonNullable<ConstructorParameters<typeof PackagingWorker>[0]['afterPackaged']>;
