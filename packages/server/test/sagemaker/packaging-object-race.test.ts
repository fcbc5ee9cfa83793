/**
 * Review E2 (and N3): two CreateEdgePackagingJob calls whose package objects are one (`v1 beta` and `v1_beta`,
 * or one ModelVersion twice, into one S3OutputLocation) cannot both be created, even fired together: a unique
 * index on the object, not a check before the insert. A real server, real SigV4-signed HTTP, s3rver.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { writeTestModel } from '@edgefleet/core';
import { afterAll, describe, expect, it } from 'vitest';
import { S3Objects } from '../../src/blobs/index.js';
import { claimPackageObject } from '../../src/sagemaker/operations/package-object-claim.js';
import {
  migrateTo,
  migrateToLatest,
  openDatabase,
  type PackagingJobsTable,
} from '../../src/storage/index.js';
import { databaseEngines, openFreshDatabase } from '../support/engines.js';
import { startTestS3 } from '../support/s3.js';
import { sagemakerCall, type AccessKey } from '../support/sagemaker-call.js';
import { startTestServer } from '../support/server.js';

const engines = await databaseEngines();
const work = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-package-race-'));
afterAll(() => rm(work, { recursive: true, force: true }));
const ROLE = 'arn:aws:iam::123456789012:role/SageMakerRole';

describe.each(engines)('package objects on $engine (review E2)', { timeout: 60_000 }, (fixture) => {
  it.skipIf(!fixture.available)(
    'of two creates fired together naming one package object, exactly one is created',
    async () => {
      const s3 = await startTestS3('neo');
      const t = await startTestServer({
        database: await fixture.createLocation(),
        config: {
          s3: {
            endpoint: s3.endpoint,
            forcePathStyle: true,
            accessKeyId: s3.credentials.accessKeyId,
            secretAccessKey: s3.credentials.secretAccessKey,
          },
        },
      });
      try {
        const objects = new S3Objects({
          endpoint: s3.endpoint,
          forcePathStyle: true,
          credentials: s3.credentials,
        });
        await objects.put(
          's3://neo/models/tiny.onnx',
          await readFile(await writeTestModel('tiny', path.join(work, fixture.engine))),
        );
        const created = await t.call('POST', '/api/v1/access-keys', {
          token: t.adminToken,
          body: { name: 'race', scope: 'admin' },
        });
        expect(created.status).toBe(201);
        const key = created.body as AccessKey;
        const call = (operation: string, input: Record<string, unknown>) =>
          sagemakerCall(t.url, key, operation, input);
        expect(
          (
            await call('CreateCompilationJob', {
              CompilationJobName: 'race-compile',
              RoleArn: ROLE,
              InputConfig: { S3Uri: 's3://neo/models/tiny.onnx', Framework: 'ONNX' },
              OutputConfig: { S3OutputLocation: 's3://neo/compiled' },
              StoppingCondition: {},
            })
          ).status,
        ).toBe(200);
        await t.server.services.compilationJobs.settle();
        const pack = (name: string, version: string, location = 's3://neo/race') =>
          call('CreateEdgePackagingJob', {
            EdgePackagingJobName: name,
            CompilationJobName: 'race-compile',
            ModelName: 'racer',
            ModelVersion: version,
            RoleArn: ROLE,
            OutputConfig: { S3OutputLocation: location },
          });

        const answers = await Promise.all([pack('race-a', 'v1 beta'), pack('race-b', 'v1_beta')]);
        expect(answers.map((a) => a.status).sort()).toEqual([200, 400]);
        const refused = answers.find((a) => a.status === 400)!;
        expect(refused.body.__type).toMatch(/ValidationException/);
        const winner = answers[0]!.status === 200 ? 'race-a' : 'race-b';
        expect(refused.body.message).toContain(
          `its package object s3://neo/race/racer-v1_beta.tar.gz is already edge packaging job ${winner}'s`,
        );
        // The refused job does not exist.
        const loser = winner === 'race-a' ? 'race-b' : 'race-a';
        expect((await call('DescribeEdgePackagingJob', { EdgePackagingJobName: loser })).body.__type).toMatch(
          /ResourceNotFound/,
        );

        // N3: the same ModelVersion again into the same location would overwrite it too.
        const version = winner === 'race-a' ? 'v1 beta' : 'v1_beta';
        const again = await pack('race-again', version);
        expect(again.status).toBe(400);
        expect(again.body.message).toContain(`edge packaging job ${winner}'s, of ModelVersion '${version}'`);
        // Elsewhere, the object is its own.
        expect((await pack('race-elsewhere', version, 's3://neo/elsewhere')).status).toBe(200);
        // A job name taken is still a conflict, not a package collision.
        expect((await pack('race-elsewhere', version, 's3://neo/third')).body.__type).toMatch(
          /ResourceInUse|Conflict/,
        );
        // Let the winner's packaging finish first, so that only this test changes its status.
        await t.server.services.packagingWorker.drain();
        // A FAILED job's object is no package of it: a retry takes it over (here the job is failed in the
        // database, as a packaging failure would leave it).
        await t.server.database.db
          .updateTable('packaging_jobs')
          .set({ status: 'FAILED', status_message: 'failed for the test' })
          .where('name', '=', winner)
          .execute();
        expect((await pack('race-retry', version)).status).toBe(200);
        expect((await pack('race-retry-2', version)).body.message).toContain(
          `edge packaging job race-retry's`,
        );
      } finally {
        await t.stop();
        await s3.stop();
      }
    },
  );

  it.skipIf(!fixture.available)(
    "of two takeovers of a FAILED job's object, the one that loses is told which job has it, never that its own name is taken",
    async () => {
      const database = await openFreshDatabase(fixture);
      try {
        const { db } = database;
        const uri = 's3://neo/race/racer-v9.tar.gz';
        await db
          .insertInto('packaging_jobs')
          .values({
            name: 'failed-holder',
            model_name: 'racer',
            model_version: 'v9',
            status: 'FAILED',
            status_message: 'failed for the test',
            output_s3_location: 's3://neo/race',
            artifact_key: null,
            artifact_location: null,
            artifact_size_bytes: null,
            artifact_sha256: null,
            signature: null,
            claim_token: null,
            created_at: 1000,
            updated_at: 1000,
            disk_full_attempts: 0,
            retry_at: null,
          })
          .execute();
        const source = (name: string) => ({
          job_name: name,
          compilation_job_name: 'c',
          role_arn: ROLE,
          tags: '[]',
          package_object_uri: uri,
        });
        await db.insertInto('edge_packaging_job_sources').values(source('failed-holder')).execute();

        // Played in this order: B finds the FAILED job holding the object; A frees it (its takeover) and has
        // not inserted yet when B looks again; then A inserts.
        let bConflicted!: () => void;
        const bHasConflicted = new Promise<void>((resolve) => (bConflicted = resolve));
        let aReleased!: () => void;
        const aHasReleased = new Promise<void>((resolve) => (aReleased = resolve));
        let bWaited = false;
        const b = claimPackageObject(db, source('takeover-b'), 'v9', {
          afterConflict: async () => {
            if (bWaited) return;
            bWaited = true;
            bConflicted();
            await aHasReleased;
          },
        });
        await bHasConflicted;
        const a = claimPackageObject(db, source('takeover-a'), 'v9', {
          afterRelease: async () => {
            aReleased();
            await b.catch(() => undefined);
          },
        });
        const [bOutcome, aOutcome] = await Promise.allSettled([b, a]);
        // B retried once the object was free, and has it.
        expect(bOutcome.status).toBe('fulfilled');
        // A lost it to B, created at the same time, and is told so.
        expect(aOutcome.status).toBe('rejected');
        const refused = (aOutcome as PromiseRejectedResult).reason as Error;
        expect(refused.name).toBe('AwsError');
        expect(refused.message).toContain(
          `its package object ${uri} is already edge packaging job takeover-b's, which was created at the same ` +
            'time as this job and took the object over from the FAILED job failed-holder first',
        );
        expect(
          await db
            .selectFrom('edge_packaging_job_sources')
            .select(['job_name', 'package_object_uri'])
            .orderBy('job_name')
            .execute(),
        ).toEqual([
          { job_name: 'failed-holder', package_object_uri: null },
          { job_name: 'takeover-b', package_object_uri: uri },
        ]);

        // A name that is taken is still a conflict of the name.
        await expect(
          claimPackageObject(
            db,
            { ...source('takeover-b'), package_object_uri: 's3://neo/other.tar.gz' },
            'v9',
          ),
        ).rejects.toThrow(/edge packaging job takeover-b already exists/);
      } finally {
        await database.close();
      }
    },
  );

  it.skipIf(!fixture.available)(
    'the migration gives existing jobs their object; of jobs sharing one, the newest that did not fail keeps it',
    async () => {
      const database = await openDatabase(await fixture.createLocation());
      try {
        const { db } = database;
        await migrateTo(db, '0015_compilation_claims');
        const job = (name: string, version: string, at: number, status = 'COMPLETED') =>
          ({
            name,
            model_name: 'racer',
            model_version: version,
            status,
            status_message: null,
            output_s3_location: 's3://neo/race/',
            artifact_key: null,
            artifact_location: null,
            artifact_size_bytes: null,
            artifact_sha256: null,
            signature: null,
            claim_token: null,
            created_at: at,
            updated_at: at,
            // Migration 0015's table: 0027's columns are not there yet.
          }) as unknown as PackagingJobsTable;
        await db
          .insertInto('packaging_jobs')
          .values([
            job('old-b', 'v1 beta', 1000),
            job('old-a', 'v1_beta', 2000),
            job('old-c', 'v2', 3000),
            // A COMPLETED retry of a FAILED job, and a later FAILED one: the COMPLETED job's package is the
            // object's, so it keeps it (the FAILED ones' objects may be taken over, and would overwrite it).
            job('old-d', 'v3', 4000, 'FAILED'),
            job('old-e', 'v3', 5000),
            job('old-f', 'v3', 6000, 'FAILED'),
          ])
          .execute();
        for (const name of ['old-a', 'old-b', 'old-c', 'old-d', 'old-e', 'old-f'])
          await db
            .insertInto('edge_packaging_job_sources')
            .values({ job_name: name, compilation_job_name: 'c', role_arn: ROLE, tags: '[]' } as never)
            .execute();
        await migrateToLatest(db);
        const rows = await db
          .selectFrom('edge_packaging_job_sources')
          .select(['job_name', 'package_object_uri'])
          .orderBy('job_name')
          .execute();
        // old-a wrote last: the object holds its package.
        expect(rows).toEqual([
          { job_name: 'old-a', package_object_uri: 's3://neo/race/racer-v1_beta.tar.gz' },
          { job_name: 'old-b', package_object_uri: null },
          { job_name: 'old-c', package_object_uri: 's3://neo/race/racer-v2.tar.gz' },
          { job_name: 'old-d', package_object_uri: null },
          { job_name: 'old-e', package_object_uri: 's3://neo/race/racer-v3.tar.gz' },
          { job_name: 'old-f', package_object_uri: null },
        ]);
      } finally {
        await database.close();
      }
    },
  );
});
