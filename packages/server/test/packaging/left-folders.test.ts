import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { PackagingJobStore, PackagingWorker } from '../../src/packaging/index.js';
import { databaseEngines } from '../support/engines.js';
import { startTestServer } from '../support/server.js';
import { uploadTinyModel } from '../support/upload-model.js';

const engines = await databaseEngines();
const work = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-left-'));
afterAll(() => rm(work, { recursive: true, force: true }));
const LEASE_MS = 120_000;

// F1: a runner killed here whose job another replica resumed (or that finished since) leaves a temporary folder
// of 2.3 times the model that the start-up sweep keeps for an hour: the worker removes it at start and then
// periodically, keeping the folders of jobs this server holds.
describe.each(engines)(
  'temporary folders of packaging jobs this server no longer runs, on $engine',
  (fixture) => {
    it.skipIf(!fixture.available)(
      'are removed at the worker’s start; those of jobs it holds, and other files, stay',
      async () => {
        const t = await startTestServer({
          database: await fixture.createLocation(),
          config: { packaging: { pollIntervalMs: 3_600_000 } },
        });
        try {
          await uploadTinyModel(t.url, t.adminToken, path.join(work, `${fixture.engine}-model`));
          const { blobs, database, services } = t.server;
          const store = (instanceId: string) =>
            new PackagingJobStore(database.db, services.models, undefined, { instanceId, leaseMs: LEASE_MS });
          const here = store('this-server');
          const other = store('other-replica');
          const claim = async (by: PackagingJobStore, name: string) => {
            await by.create({ name, modelName: 'tiny', modelVersion: '1' });
            const claimed = await by.claimNext(LEASE_MS);
            expect(claimed?.job.name).toBe(name);
            return claimed!.claim;
          };
          // Resumed by another replica after this server's runner was killed.
          await claim(other, 'resumed-elsewhere');
          // Finished (by another replica) since.
          const finished = await claim(other, 'finished');
          expect(
            await other.complete(finished, {
              artifactKey: 'packages/finished/x/tiny-1.tar.gz',
              artifactLocation: 'file:///x',
              artifactSizeBytes: 1,
              artifactSha256: '0'.repeat(64),
              signature: 'x',
              message: 'packaged and signed',
            }),
          ).toBe(true);
          // This server's own (interrupted, not yet released): its restart resumes it and removes the folder then.
          await claim(here, 'held-here');

          const workDir = path.join(work, `${fixture.engine}-tmp`);
          const left = ['resumed-elsewhere', 'finished', 'deleted-job', 'held-here'].map((job) =>
            path.join(workDir, `job-${job}-Ab12Cd`),
          );
          for (const folder of left) {
            await mkdir(folder, { recursive: true });
            await writeFile(path.join(folder, 'model.onnx'), Buffer.alloc(4096));
          }
          await writeFile(path.join(workDir, 'upload-Xy12Zw'), 'an upload in flight');

          const worker = new PackagingWorker({
            jobs: here,
            models: services.models,
            blobs,
            signing: services.signing,
            workDir,
            pollIntervalMs: 3_600_000,
            leaseMs: LEASE_MS,
            logger: t.server.logger,
          });
          worker.start();
          await worker.stop();
          expect((await readdir(workDir)).sort()).toEqual(['job-held-here-Ab12Cd', 'upload-Xy12Zw']);

          // Periodically too: the job held here finished elsewhere meanwhile.
          await database.db
            .updateTable('packaging_jobs')
            .set({ status: 'FAILED' })
            .where('name', '=', 'held-here')
            .execute();
          expect(await worker.removeLeftFolders()).toEqual(['job-held-here-Ab12Cd']);
          expect(await readdir(workDir)).toEqual(['upload-Xy12Zw']);
        } finally {
          await t.stop();
        }
      },
      60_000,
    );
  },
);
