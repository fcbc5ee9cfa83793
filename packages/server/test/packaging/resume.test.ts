import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { S3Objects } from '../../src/blobs/index.js';
import type { ServerConfig } from '../../src/config/index.js';
import { PackagingJobStore, PackagingWorker } from '../../src/packaging/index.js';
import { exportFacadePackages } from '../../src/sagemaker/index.js';
import { databaseEngines } from '../support/engines.js';
import { uploadTinyModel } from '../support/upload-model.js';
import { startTestS3 } from '../support/s3.js';
import { startTestServer } from '../support/server.js';

const engines = await databaseEngines();
const work = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-resume-'));
afterAll(() => rm(work, { recursive: true, force: true }));
const LEASE_MS = 120_000;

const CLAIMER = fileURLToPath(new URL('../support/claim-packaging-job.ts', import.meta.url));
const TSX_LOADER = pathToFileURL(
  path.resolve(path.dirname(CLAIMER), '../../../../node_modules/tsx/dist/loader.mjs'),
).toString();

/** A runner process of its own (support/claim-packaging-job.ts) that claimed a job and hangs until killed. */
interface Claimer {
  /** What it said once it claimed: `claimed <job>`; rejected if it exits first. */
  claimed: Promise<string>;
  /** SIGKILL (unless it already exited), then its exit. */
  kill(): Promise<void>;
}

/**
 * Starts a claimer on the server's database and blobs with a lease of `leaseMs`, claiming as the server whose
 * identity is `instanceId` (none: as an anonymous replica).
 */
function spawnClaimer(config: ServerConfig, leaseMs: number, instanceId?: string): Claimer {
  const blobRoot = config.blobLocation.kind === 'local' ? config.blobLocation.root : '';
  const child = spawn(
    process.execPath,
    [
      '--import',
      TSX_LOADER,
      CLAIMER,
      JSON.stringify(config.databaseLocation),
      blobRoot,
      path.join(config.dataDir, 'tmp'),
      String(leaseMs),
      ...(instanceId !== undefined ? [instanceId] : []),
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const exited = new Promise<void>((done) => child.once('exit', () => done()));
  const claimed = new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout?.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      if (out.includes('\n')) resolve(out.trim());
    });
    child.once('exit', (code) => reject(new Error(`claimer exited (${code}) before claiming`)));
  });
  return {
    claimed,
    kill: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}

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
        await uploadTinyModel(t.url, t.adminToken, path.join(work, fixture.engine));
        const { db } = t.server.database;
        const { models, packagingWorker } = t.server.services;

        // Another replica, alive, working on its job (lease fresh).
        const live = new PackagingJobStore(db, models);
        await live.create({ name: 'job-live', modelName: 'tiny', modelVersion: '1' });
        expect((await live.claimNext(LEASE_MS))?.job.name).toBe('job-live');
        // A server that claimed a job ten minutes ago and was killed: it never touched the job again.
        const killed = new PackagingJobStore(db, models, () => Date.now() - 10 * 60_000);
        await killed.create({ name: 'job-killed', modelName: 'tiny', modelVersion: '1' });
        const killedClaim = await killed.claimNext(LEASE_MS);
        expect(killedClaim?.job.name).toBe('job-killed');

        await packagingWorker.drain();

        const resumed = await t.call('GET', '/api/v1/packaging-jobs/job-killed', { token: t.readToken });
        expect(resumed.body).toMatchObject({ status: 'COMPLETED' });
        const untouched = await t.call('GET', '/api/v1/packaging-jobs/job-live', { token: t.readToken });
        expect(untouched.body).toMatchObject({ status: 'INPROGRESS' });

        // The first runner was only stalled: its late failure does not undo the resumed run's result.
        expect(await killed.fail(killedClaim!.claim, 'late failure of a runner that lost its lease')).toBe(
          false,
        );
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
      let claimer: Claimer | undefined;
      try {
        await uploadTinyModel(t.url, t.adminToken, path.join(work, `${fixture.engine}-kill`));
        const { config, database, services } = t.server;
        await new PackagingJobStore(database.db, services.models).create({
          name: 'job-crashed',
          modelName: 'tiny',
          modelVersion: '1',
        });
        claimer = spawnClaimer(config, 1000);
        expect(await claimer.claimed).toBe('claimed job-crashed');
        await claimer.kill();
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
        await claimer?.kill();
        await t.stop();
      }
    },
    60_000,
  );

  it.skipIf(!fixture.available)(
    'says it waits for an interrupted runner’s lease; the same server restarted resumes its job at once',
    async () => {
      const database = await fixture.createLocation();
      const dataDir = await mkdtemp(path.join(work, `${fixture.engine}-restart-`));
      // The default lease (120 s): only the restart may resume the job within this test.
      const config = { packaging: { pollIntervalMs: 3_600_000 } };
      let t = await startTestServer({ database, dataDir, config });
      let claimer: Claimer | undefined;
      try {
        await uploadTinyModel(t.url, t.adminToken, path.join(work, `${fixture.engine}-restart-model`));
        const { config: serverConfig, services } = t.server;
        await services.packagingJobs.create({ name: 'job-own', modelName: 'tiny', modelVersion: '1' });
        // This server's runner, as a process of its own with its identity, claims the job and is killed.
        const instanceId = (await readFile(path.join(dataDir, 'instance-id'), 'utf8')).trim();
        claimer = spawnClaimer(serverConfig, LEASE_MS, instanceId);
        expect(await claimer.claimed).toBe('claimed job-own');
        await claimer.kill();
        // What the killed runner left in the work dir (a copy of the model, the half-built package: F8), and a
        // folder of another job whose name only starts alike, which must stay: a job this server holds (claimed
        // under its identity, lease fresh), whose folder the sweep of jobs no longer run here keeps too.
        const alike = new PackagingJobStore(t.server.database.db, services.models, undefined, {
          instanceId,
          leaseMs: LEASE_MS,
        });
        await alike.create({ name: 'job-own-x', modelName: 'tiny', modelVersion: '1' });
        expect((await alike.claimNext(LEASE_MS))?.job.name).toBe('job-own-x');
        const left = path.join(dataDir, 'tmp', 'job-job-own-Ab12Cd');
        const otherJob = path.join(dataDir, 'tmp', 'job-job-own-x-Ab12Cd');
        for (const folder of [left, otherJob]) {
          await mkdir(folder, { recursive: true });
          await writeFile(path.join(folder, 'model.onnx'), Buffer.alloc(4096));
        }

        // Any other server waits for the lease (this one's worker started before the claim: it is another's).
        await services.packagingWorker.drain();
        const job = async () =>
          (await t.call('GET', '/api/v1/packaging-jobs/job-own', { token: t.readToken })).body as {
            status: string;
            statusMessage?: string;
          };
        expect((await job()).status).toBe('INPROGRESS');
        // Read a minute later (two lease renewals missed), the job says why it waits and until when.
        const { db } = t.server.database;
        const later = new PackagingJobStore(db, services.models, () => Date.now() + 60_000, {
          leaseMs: LEASE_MS,
        });
        const waiting = await later.get('job-own');
        expect(waiting.statusMessage).toMatch(
          /^packaging; its runner has not renewed the job's lease since \S+: the server running it was interrupted \(killed, crashed or stalled\); it is resumed by a server once the lease expires at \S+ \(at once if that same server restarts\)$/,
        );
        const renewed = Date.parse(/since (\S+):/.exec(waiting.statusMessage!)![1]!);
        expect(Date.parse(/expires at (\S+) /.exec(waiting.statusMessage!)![1]!)).toBe(renewed + LEASE_MS);

        // The same server restarts a minute later (its data dir, so its identity): it resumes its job without
        // waiting for the lease (no runner renewed it for two renewal intervals, so none is alive).
        await db
          .updateTable('packaging_jobs')
          .set((eb) => ({ updated_at: eb('updated_at', '-', 60_000) }))
          .where('name', '=', 'job-own')
          .execute();
        await t.stop();
        t = await startTestServer({ database, dataDir, config });
        for (let attempt = 0; attempt < 100 && (await job()).status === 'INPROGRESS'; attempt++) {
          await t.server.services.packagingWorker.drain();
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
        expect(await job()).toMatchObject({ status: 'COMPLETED' });
        // Its runner's temporary folder went when the job was resumed, not an hour later; the other job's stays.
        await expect(stat(left)).rejects.toMatchObject({ code: 'ENOENT' });
        expect((await stat(otherJob)).isDirectory()).toBe(true);
      } finally {
        await claimer?.kill();
        await t.stop();
      }
    },
    60_000,
  );

  it.skipIf(!fixture.available)(
    "says a job that failed on a full disk failed because the server's disk is full, and what to do (F8)",
    async () => {
      const t = await startTestServer({
        database: await fixture.createLocation(),
        config: { packaging: { pollIntervalMs: 3_600_000 } },
      });
      try {
        await uploadTinyModel(t.url, t.adminToken, path.join(work, `${fixture.engine}-full-model`));
        const { blobs, services } = t.server;
        await services.packagingJobs.create({ name: 'job-full', modelName: 'tiny', modelVersion: '1' });
        const worker = new PackagingWorker({
          jobs: services.packagingJobs,
          models: services.models,
          blobs,
          signing: services.signing,
          workDir: path.join(work, `${fixture.engine}-full`),
          pollIntervalMs: 3_600_000,
          leaseMs: LEASE_MS,
          logger: t.server.logger,
          // A real ENOSPC from the kernel: /dev/full takes no byte, as a full file system.
          afterPackaged: async (_job, archive) => writeFile('/dev/full', await readFile(archive)),
          // No new attempt (those: the tests below).
          diskFullRetryDelaysMs: [],
        });
        await worker.drain();
        await worker.stop();
        const job = await t.call('GET', '/api/v1/packaging-jobs/job-full', { token: t.readToken });
        expect(job.body).toMatchObject({ status: 'FAILED' });
        expect(job.body.statusMessage).toMatch(
          /^the server's disk is full \(ENOSPC: no space left on device, write\); free space on the file system of the server's data folder .* then create the packaging job again under a new name$/,
        );
      } finally {
        await t.stop();
      }
    },
  );

  it.skipIf(!fixture.available)(
    'a job waiting for disk space gives up its claim: another server with room packages it once due, its status saying meanwhile that it waits',
    async () => {
      const t = await startTestServer({
        database: await fixture.createLocation(),
        config: { packaging: { pollIntervalMs: 3_600_000 } },
      });
      try {
        await uploadTinyModel(t.url, t.adminToken, path.join(work, `${fixture.engine}-space-model`));
        const { blobs, database, services } = t.server;
        await services.packagingJobs.create({ name: 'job-space', modelName: 'tiny', modelVersion: '1' });
        // Both replicas' clock: moved on by the test, so that no test waits a minute.
        let clock = Date.now();
        const replica = (name: string, afterPackaged: (archive: string) => Promise<void>) =>
          new PackagingWorker({
            jobs: new PackagingJobStore(database.db, services.models, () => clock, { leaseMs: LEASE_MS }),
            models: services.models,
            blobs,
            signing: services.signing,
            workDir: path.join(work, `${fixture.engine}-space-${name}`),
            pollIntervalMs: 3_600_000,
            leaseMs: LEASE_MS,
            logger: t.server.logger,
            afterPackaged: async (_job, archive) => afterPackaged(archive),
          });
        // A real ENOSPC from the kernel on one replica (/dev/full); the other has room.
        const full = replica('full', async (archive) => writeFile('/dev/full', await readFile(archive)));
        const roomy = replica('roomy', async (archive) =>
          writeFile(path.join(work, `${fixture.engine}-space-copy`), await readFile(archive)),
        );
        await full.drain();
        const show = async () =>
          (await t.call('GET', '/api/v1/packaging-jobs/job-space', { token: t.readToken })).body;
        const waiting = {
          status: 'INPROGRESS',
          statusMessage: `waiting for disk space: the server's disk is full (ENOSPC: no space left on device, write); packaging again at ${new Date(clock + 60_000).toISOString()}, by any server (attempt 2 of 6)`,
        };
        expect(await show()).toMatchObject(waiting);
        // Not due yet: no replica takes it.
        await roomy.drain();
        expect(await show()).toMatchObject(waiting);
        clock += 60_000;
        await roomy.drain();
        expect(await show()).toMatchObject({ status: 'COMPLETED' });
        await Promise.all([full.stop(), roomy.stop()]);
      } finally {
        await t.stop();
      }
    },
  );

  it.skipIf(!fixture.available)(
    'fails a job whose disk stays full after its last attempt, saying how many were made',
    async () => {
      const t = await startTestServer({
        database: await fixture.createLocation(),
        config: { packaging: { pollIntervalMs: 3_600_000 } },
      });
      try {
        await uploadTinyModel(t.url, t.adminToken, path.join(work, `${fixture.engine}-still-full-model`));
        const { blobs, database, services } = t.server;
        await services.packagingJobs.create({ name: 'job-still-full', modelName: 'tiny', modelVersion: '1' });
        let clock = Date.now();
        const worker = new PackagingWorker({
          jobs: new PackagingJobStore(database.db, services.models, () => clock, { leaseMs: LEASE_MS }),
          models: services.models,
          blobs,
          signing: services.signing,
          workDir: path.join(work, `${fixture.engine}-still-full`),
          pollIntervalMs: 3_600_000,
          leaseMs: LEASE_MS,
          logger: t.server.logger,
          afterPackaged: async (_job, archive) => writeFile('/dev/full', await readFile(archive)),
          diskFullRetryDelaysMs: [1_000, 2_000],
        });
        const show = async () =>
          (await t.call('GET', '/api/v1/packaging-jobs/job-still-full', { token: t.readToken })).body;
        await worker.drain();
        expect((await show()).statusMessage).toMatch(/\(attempt 2 of 3\)$/);
        clock += 1_000;
        await worker.drain();
        expect((await show()).statusMessage).toMatch(/\(attempt 3 of 3\)$/);
        clock += 2_000;
        await worker.drain();
        await worker.stop();
        const job = await show();
        expect(job).toMatchObject({ status: 'FAILED' });
        expect(job.statusMessage).toMatch(
          /^the server's disk is full \(ENOSPC: no space left on device, write\), at each of 3 attempts; free space .* then create the packaging job again under a new name$/,
        );
      } finally {
        await t.stop();
      }
    },
  );

  // Review N2: replicas sharing a data dir share its identity; a restart must not take the live one's jobs.
  it.skipIf(!fixture.available)(
    'removes only the lost runner’s temporary folder of a released job: the folder of a runner that claimed it just after the release stays (review GL F2)',
    async () => {
      const dataDir = await mkdtemp(path.join(work, `${fixture.engine}-race-`));
      const t = await startTestServer({
        database: await fixture.createLocation(),
        dataDir,
        config: { packaging: { pollIntervalMs: 3_600_000 } },
      });
      try {
        await uploadTinyModel(t.url, t.adminToken, path.join(work, `${fixture.engine}-race-model`));
        const { database, blobs, services } = t.server;
        const instanceId = (await readFile(path.join(dataDir, 'instance-id'), 'utf8')).trim();
        const workDir = path.join(work, `${fixture.engine}-race-work`);
        // This server's runner before its restart, last renewed 90 s ago (two renewals missed, lease not over).
        const before = new PackagingJobStore(database.db, services.models, () => Date.now() - 90_000, {
          instanceId,
          leaseMs: LEASE_MS,
        });
        await before.create({ name: 'job-race', modelName: 'tiny', modelVersion: '1' });
        expect((await before.claimNext(LEASE_MS))?.job.name).toBe('job-race');
        const lost = path.join(workDir, 'job-job-race-Ab12Cd');
        await mkdir(lost, { recursive: true });
        await writeFile(path.join(lost, 'model.onnx'), Buffer.alloc(4096));

        // A replica sharing the work dir claims the job the moment it is released, and starts building it in a
        // folder of its own, before the restarted worker goes on.
        const replica = new PackagingJobStore(database.db, services.models, undefined, { leaseMs: LEASE_MS });
        const building: string[] = [];
        class ReplicaClaimsOnRelease extends PackagingJobStore {
          override async releaseUnrenewed(seen: Parameters<PackagingJobStore['releaseUnrenewed']>[0]) {
            const released = await super.releaseUnrenewed(seen);
            for (const name of released) {
              expect((await replica.claimNext(LEASE_MS))?.job.name).toBe(name);
              const folder = await mkdtemp(path.join(workDir, `job-${name}-`));
              await writeFile(path.join(folder, 'model.onnx'), Buffer.alloc(4096));
              building.push(folder);
            }
            return released;
          }
        }
        const restarted = new PackagingWorker({
          jobs: new ReplicaClaimsOnRelease(database.db, services.models, undefined, {
            instanceId,
            leaseMs: LEASE_MS,
          }),
          models: services.models,
          blobs,
          signing: services.signing,
          workDir,
          pollIntervalMs: 3_600_000,
          leaseMs: LEASE_MS,
          logger: t.server.logger,
        });
        await restarted.drain();
        await restarted.stop();
        expect(building).toHaveLength(1);
        await expect(stat(lost)).rejects.toMatchObject({ code: 'ENOENT' });
        expect((await stat(path.join(building[0]!, 'model.onnx'))).size).toBe(4096);
        // The replica holds the job; the restarted worker did not take it back.
        const job = await t.call('GET', '/api/v1/packaging-jobs/job-race', { token: t.readToken });
        expect(job.body).toMatchObject({ status: 'INPROGRESS' });
      } finally {
        await t.stop();
      }
    },
  );

  it.skipIf(!fixture.available)(
    "a restarted server leaves a job renewed lately to its live runner of the same identity, and resumes one that wasn't renewed",
    async () => {
      const dataDir = await mkdtemp(path.join(work, `${fixture.engine}-shared-`));
      const t = await startTestServer({
        database: await fixture.createLocation(),
        dataDir,
        config: { packaging: { pollIntervalMs: 3_600_000 } },
      });
      try {
        await uploadTinyModel(t.url, t.adminToken, path.join(work, `${fixture.engine}-shared-model`));
        const { database, blobs, services } = t.server;
        const instanceId = (await readFile(path.join(dataDir, 'instance-id'), 'utf8')).trim();
        const sameIdentity = (now?: () => number) =>
          new PackagingJobStore(database.db, services.models, now, { instanceId, leaseMs: LEASE_MS });
        // The other replica on the shared data dir: alive, it renewed its job a moment ago.
        const live = sameIdentity();
        await live.create({ name: 'job-shared-live', modelName: 'tiny', modelVersion: '1' });
        const liveClaim = await live.claimNext(LEASE_MS);
        expect(liveClaim?.job.name).toBe('job-shared-live');
        // This server's own runner before its restart: last renewed a minute ago (within the 120 s lease).
        const before = sameIdentity(() => Date.now() - 60_000);
        await before.create({ name: 'job-shared-dead', modelName: 'tiny', modelVersion: '1' });
        expect((await before.claimNext(LEASE_MS))?.job.name).toBe('job-shared-dead');

        const token = async (name: string) =>
          (
            await database.db
              .selectFrom('packaging_jobs')
              .select(['claim_token', 'status'])
              .where('name', '=', name)
              .executeTakeFirstOrThrow()
          ).claim_token;
        const liveToken = await token('job-shared-live');
        const restarted = new PackagingWorker({
          jobs: sameIdentity(),
          models: services.models,
          blobs,
          signing: services.signing,
          workDir: path.join(work, `${fixture.engine}-shared-restarted`),
          pollIntervalMs: 3_600_000,
          leaseMs: LEASE_MS,
          logger: t.server.logger,
        });
        await restarted.drain();
        await restarted.stop();
        const status = async (name: string) =>
          (await t.call('GET', `/api/v1/packaging-jobs/${name}`, { token: t.readToken })).body.status;
        expect(await status('job-shared-dead')).toBe('COMPLETED');
        // Not released, so not claimed again: the live runner still holds it and may finish it.
        expect(await status('job-shared-live')).toBe('INPROGRESS');
        expect(await token('job-shared-live')).toBe(liveToken);
        expect(await live.touch(liveClaim!.claim, 'packaging')).toBe(true);

        // Once two renewal intervals pass: a job renewed meanwhile is kept; one that was not is released.
        const seen = await sameIdentity().ownClaims();
        expect(seen).toEqual({
          stale: [],
          recent: [expect.objectContaining({ name: 'job-shared-live', token: liveToken })],
        });
        const renewing = sameIdentity(() => Date.now() + 1_000);
        expect(await renewing.touch(liveClaim!.claim, 'packaging')).toBe(true);
        expect(await sameIdentity().releaseUnrenewed(seen.recent)).toEqual([]);
        const unrenewed = await sameIdentity().ownClaims();
        expect(await sameIdentity().releaseUnrenewed(unrenewed.recent)).toEqual(['job-shared-live']);
      } finally {
        await t.stop();
      }
    },
  );

  it.skipIf(!fixture.available)(
    "publishes only the claim holder's package when two runners hold one job",
    async () => {
      const t = await startTestServer({
        database: await fixture.createLocation(),
        config: { packaging: { pollIntervalMs: 3_600_000 } },
      });
      // Where the SageMaker facade publishes its jobs' packages (Edge Manager's S3 output location).
      const s3 = await startTestS3('package-outputs');
      try {
        await uploadTinyModel(t.url, t.adminToken, path.join(work, `${fixture.engine}-claims`));
        const { database, blobs, services } = t.server;
        const outputs = new S3Objects({
          endpoint: s3.endpoint,
          forcePathStyle: true,
          credentials: s3.credentials,
        });
        const publishToS3 = exportFacadePackages(database.db, outputs);
        type Publish = typeof publishToS3;
        // Replica A: its runner stalled past its lease (its clock makes every claim it writes look old).
        const stalled = new PackagingJobStore(database.db, services.models, () => Date.now() - 10 * 60_000);
        const replica = (jobs: PackagingJobStore, name: string, afterPackaged?: Publish) =>
          new PackagingWorker({
            jobs,
            models: services.models,
            blobs,
            signing: services.signing,
            workDir: path.join(work, `${fixture.engine}-${name}`),
            pollIntervalMs: 3_600_000,
            leaseMs: LEASE_MS,
            logger: t.server.logger,
            ...(afterPackaged && { afterPackaged }),
          });
        const replicaA = (afterPackaged?: Publish) => replica(stalled, 'replica-a', afterPackaged);
        // Replica B: healthy, publishing to S3 as the facade does.
        const replicaB = replica(services.packagingJobs, 'replica-b', publishToS3);
        const published = async (name: string) => {
          const job = (await t.call('GET', `/api/v1/packaging-jobs/${name}`, { token: t.readToken })).body;
          const bytes = Buffer.from(
            await (
              await fetch(`${t.url}/api/v1/packaging-jobs/${name}/artifact`, {
                headers: { authorization: `Bearer ${t.readToken}` },
              })
            ).arrayBuffer(),
          );
          const stored = (await blobs.list(`packages/${name}/`)).map((b) => b.key);
          return { job, sha256: createHash('sha256').update(bytes).digest('hex'), stored };
        };

        // A stalls before storing its package; replica B resumes the job and completes it; then A wakes up.
        await stalled.create({ name: 'job-late', modelName: 'tiny', modelVersion: '1' });
        const late = (await stalled.claimNext(LEASE_MS))!;
        await services.packagingWorker.drain();
        const byB = await published('job-late');
        expect(byB.job).toMatchObject({ status: 'COMPLETED' });
        await replicaA().run(late.job, late.claim);
        const after = await published('job-late');
        expect(after.job).toEqual(byB.job);
        expect(after.sha256).toBe(byB.job.artifact.sha256);
        expect(after.stored).toEqual([byB.job.artifact.key]);

        // A facade job: A stores its package and checks its claim before publishing to S3; then it stalls, B
        // resumes the job, publishes its package to S3 and completes, and A's put to S3 lands after B's.
        await stalled.create({
          name: 'job-overtaken',
          modelName: 'tiny',
          modelVersion: '1',
          outputS3Location: 's3://package-outputs/out',
        });
        await database.db
          .insertInto('edge_packaging_job_sources')
          .values({
            job_name: 'job-overtaken',
            compilation_job_name: 'compiled',
            role_arn: 'arn:aws:iam::123456789012:role/edge',
            tags: '[]',
          })
          .execute();
        const overtaken = (await stalled.claimNext(LEASE_MS))!;
        let storedByA: string[] = [];
        const putsByA: string[] = [];
        await replicaA(async (job, archiveFile, sizeBytes) => {
          if (putsByA.length === 0) {
            storedByA = (await blobs.list('packages/job-overtaken/')).map((b) => b.key);
            await replicaB.drain();
          }
          putsByA.push(
            createHash('sha256')
              .update(await readFile(archiveFile))
              .digest('hex'),
          );
          await publishToS3(job, archiveFile, sizeBytes);
        }).run(overtaken.job, overtaken.claim);
        expect(storedByA).toHaveLength(1);
        const final = await published('job-overtaken');
        expect(final.job).toMatchObject({ status: 'COMPLETED' });
        expect(final.job.artifact.key).not.toBe(storedByA[0]);
        expect(final.sha256).toBe(final.job.artifact.sha256);
        expect(final.stored).toEqual([final.job.artifact.key]);
        // A put its own package over B's, found its claim gone, and put the job's recorded package back.
        expect(putsByA).toHaveLength(2);
        expect(putsByA[0]).not.toBe(final.job.artifact.sha256);
        expect(putsByA[1]).toBe(final.job.artifact.sha256);
        const inS3 = createHash('sha256');
        for await (const chunk of await outputs.get('s3://package-outputs/out/tiny-1.tar.gz'))
          inS3.update(chunk as Buffer);
        expect(inS3.digest('hex')).toBe(final.job.artifact.sha256);
      } finally {
        await t.stop();
        await s3.stop();
      }
    },
    60_000,
  );
});
