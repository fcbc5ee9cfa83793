/**
 * The 20-stage limit under concurrency: two replicas (each its own connection pool and DeploymentService)
 * add stages to one plan at the same moment, on real PostgreSQL. A lock held by the test makes both reach
 * the point where a read-then-insert would race (both have read the plan's stages before either inserts),
 * so the outcome does not depend on timing.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalBlobStore } from '../../src/blobs/index.js';
import { DeploymentService, MAX_STAGES } from '../../src/deployments/index.js';
import { FleetStore } from '../../src/fleets/index.js';
import { ModelStore } from '../../src/models/index.js';
import { PackagingJobStore } from '../../src/packaging/index.js';
import { migrateToLatest, openDatabase, type ServerDatabase } from '../../src/storage/index.js';
import { databaseEngines } from '../support/engines.js';
import { lockWaiters } from '../support/postgres.js';

const engines = await databaseEngines();
const postgres = engines.find((e) => e.engine === 'postgres')!;

describe.skipIf(!postgres.available)('the stage limit with two replicas on one PostgreSQL', () => {
  let work: string;
  let databaseUrl: string;
  const databases: ServerDatabase[] = [];
  const replicas: DeploymentService[] = [];

  beforeAll(async () => {
    work = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-stage-race-'));
    const location = await postgres.createLocation();
    if (location.engine !== 'postgres') throw new Error('expected a PostgreSQL location');
    databaseUrl = location.url;
    for (let i = 0; i < 2; i++) {
      const database = await openDatabase(location);
      databases.push(database);
      if (i === 0) await migrateToLatest(database.db);
      const models = new ModelStore(database.db, {
        blobs: new LocalBlobStore(path.join(work, 'blobs')),
        workDir: path.join(work, `work-${i}`),
        maxUploadBytes: 1024,
      });
      replicas.push(
        new DeploymentService(database.db, {
          engine: database.engine,
          packagingJobs: new PackagingJobStore(database.db, models),
          models,
        }),
      );
    }
    await new FleetStore(databases[0]!.db).create({
      name: 'f',
      outputConfig: { s3OutputLocation: 's3://c/f' },
    });
  });
  afterAll(async () => {
    for (const database of databases) await database.close();
    await rm(work, { recursive: true, force: true });
  });

  it('adds stages from both at once without passing the limit', async () => {
    const stage = (name: string) => ({
      name,
      deviceSelection: { subsetType: 'PERCENTAGE' as const, percentage: 100 },
    });
    await replicas[0]!.createPlan({
      name: 'p',
      fleetName: 'f',
      modelConfigs: [{ modelHandle: 'h', state: 'UNDEPLOY' }],
      stages: Array.from({ length: MAX_STAGES - 1 }, (_, i) => stage(`s${i}`)),
    });

    // Inserting stages waits on this lock (reading them does not): both replicas get as far as they can.
    const locker = new pg.Client({ connectionString: databaseUrl });
    await locker.connect();
    let outcomes: PromiseSettledResult<unknown>[];
    try {
      await locker.query('BEGIN');
      await locker.query('LOCK TABLE deployment_stages IN SHARE MODE');
      const both = Promise.allSettled([
        replicas[0]!.addStages('p', [stage('from-a')]),
        replicas[1]!.addStages('p', [stage('from-b')]),
      ]);
      expect(await lockWaiters(locker, 2)).toBe(2);
      await locker.query('COMMIT');
      outcomes = await both;
    } finally {
      await locker.end();
    }

    expect(outcomes.map((o) => o.status).sort()).toEqual(['fulfilled', 'rejected']);
    const refused = outcomes.find((o) => o.status === 'rejected');
    expect(refused?.reason).toMatchObject({
      code: 'ValidationError',
      message: expect.stringMatching(
        new RegExp(`has ${MAX_STAGES} stage\\(s\\).*at most ${MAX_STAGES} stages`),
      ),
    });
    const plan = await replicas[1]!.describePlan('p');
    expect(plan.stages).toHaveLength(MAX_STAGES);
    expect(plan.stages.filter((s) => s.name.startsWith('from-'))).toHaveLength(1);
  });
});
