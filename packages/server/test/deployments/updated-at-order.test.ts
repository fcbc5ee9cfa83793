/**
 * A deployment row's updated_at (what the console's change feed watches) never moves back: a writer whose time
 * is older than one already stored (a heartbeat received before, applied after; another replica's clock behind
 * this one's) leaves the newer time. Before the fix each writer set its own time, so the row's time went back.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DeploymentService } from '../../src/deployments/index.js';
import { adminCalls, undeployResult } from '../support/deployment-calls.js';
import { databaseEngines } from '../support/engines.js';
import { startTestServer, type TestServer } from '../support/server.js';

const engines = await databaseEngines();

describe.each(engines)('deployment rows keep their latest updated_at on $engine', (fixture) => {
  let t: TestServer;
  const { admin, register } = adminCalls(() => t);

  beforeAll(async () => {
    if (!fixture.available) return;
    t = await startTestServer({
      database: await fixture.createLocation(),
      config: { deployments: { sweepIntervalMs: 3_600_000 } },
    });
    await admin('POST', '/api/v1/fleets', { name: 'fu', outputConfig: { s3OutputLocation: 's3://c/fu' } });
  });
  afterAll(() => t?.stop());

  /** A replica whose clock reads `at`. */
  const replicaAt = (at: number) =>
    new DeploymentService(t.server.database.db, {
      engine: t.server.database.engine,
      packagingJobs: t.server.services.packagingJobs,
      models: t.server.services.models,
      now: () => at,
    });
  const times = async () => {
    const db = t.server.database.db;
    const target = await db
      .selectFrom('deployment_targets')
      .select(['status', 'updated_at'])
      .where('plan_name', '=', 'order')
      .where('device_name', '=', 'cam-u')
      .executeTakeFirstOrThrow();
    const stage = await db
      .selectFrom('deployment_stages')
      .select(['status', 'updated_at'])
      .where('plan_name', '=', 'order')
      .executeTakeFirstOrThrow();
    const plan = await db
      .selectFrom('deployment_plans')
      .select('updated_at')
      .where('name', '=', 'order')
      .executeTakeFirstOrThrow();
    return {
      target: [target.status, Number(target.updated_at)],
      stage: [stage.status, Number(stage.updated_at)],
      plan: Number(plan.updated_at),
    };
  };

  it.skipIf(!fixture.available)(
    'a write with an older time than the stored one leaves the stored one (targets, stages, plans)',
    async () => {
      await register('fu', ['cam-u']);
      const base = Date.now();
      const [early, late, later] = [base + 1_000, base + 5_000, base + 9_000];
      expect(
        (
          await admin('POST', '/api/v1/deployment-plans', {
            name: 'order',
            fleetName: 'fu',
            modelConfigs: [{ modelHandle: 'h', state: 'UNDEPLOY' }],
            stages: [{ name: 's1', deviceSelection: { subsetType: 'SELECTION', deviceNames: ['cam-u'] } }],
          })
        ).status,
      ).toBe(201);
      await replicaAt(late).startStage('order', 's1');
      await replicaAt(late).deploymentsFor({ deviceName: 'cam-u', fleetName: 'fu' });
      expect(await times()).toMatchObject({ target: ['INPROGRESS', late], stage: ['INPROGRESS', late] });

      // A progress report received before the device took the deployment's write, applied after it.
      await replicaAt(later).recordResults([
        {
          deviceName: 'cam-u',
          fleetName: 'fu',
          result: {
            DeploymentName: 'order',
            DeploymentStatus: 'INPROGRESS',
            DeploymentStatusMessage: 'busy',
          },
          receivedAt: early,
        },
      ]);
      expect(await times()).toMatchObject({ target: ['INPROGRESS', late] });

      // The final result, received early; the stage settles on a replica whose clock is behind.
      await replicaAt(early).recordResults([
        {
          deviceName: 'cam-u',
          fleetName: 'fu',
          result: undeployResult('order', 'SUCCESS'),
          receivedAt: early,
        },
      ]);
      expect(await times()).toMatchObject({ target: ['DEPLOYED', late], stage: ['DEPLOYED', late] });

      // The plan: tags set later, then a stage added on a replica behind.
      await replicaAt(later).setPlanTags('order', [{ key: 'k', value: 'v' }]);
      await replicaAt(early).addStages('order', [
        { name: 's2', deviceSelection: { subsetType: 'SELECTION', deviceNames: ['cam-u'] } },
      ]);
      expect((await times()).plan).toBe(later);
      // A later time still moves it on.
      await replicaAt(later + 1).setPlanTags('order', []);
      expect((await times()).plan).toBe(later + 1);
    },
  );
});
