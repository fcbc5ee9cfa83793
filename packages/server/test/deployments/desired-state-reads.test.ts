/**
 * GetDeployments reads only the plans that can still apply to the device: those that targeted it and completed
 * ones a newcomer may get. Before the fix every plan of the fleet (and every stage) was read and parsed on every
 * poll, so a fleet's plan history made each poll of each device slower.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DeploymentService } from '../../src/deployments/index.js';
import { adminCalls, undeployResult } from '../support/deployment-calls.js';
import { databaseEngines } from '../support/engines.js';
import { rowsReadFrom } from '../support/rows-read.js';
import { startTestServer, type TestServer } from '../support/server.js';

const engines = await databaseEngines();

describe.each(engines)('GetDeployments reads on $engine', (fixture) => {
  let t: TestServer;
  const { admin, register } = adminCalls(() => t);

  beforeAll(async () => {
    if (!fixture.available) return;
    t = await startTestServer({
      database: await fixture.createLocation(),
      config: { deployments: { sweepIntervalMs: 3_600_000 } },
    });
    await admin('POST', '/api/v1/fleets', { name: 'fd', outputConfig: { s3OutputLocation: 's3://c/fd' } });
  });
  afterAll(() => t?.stop());

  it.skipIf(!fixture.available)(
    "a device's poll reads the plans that can apply to it, not the fleet's history of others",
    async () => {
      await register('fd', ['cam-1']);
      const plan = async (name: string, handle: string, start: boolean) => {
        expect(
          (
            await admin('POST', '/api/v1/deployment-plans', {
              name,
              fleetName: 'fd',
              modelConfigs: [{ modelHandle: handle, state: 'UNDEPLOY' }],
              stages: [{ name: 'all', deviceSelection: { subsetType: 'PERCENTAGE', percentage: 100 } }],
            })
          ).status,
        ).toBe(201);
        if (start) {
          expect((await admin('POST', `/api/v1/deployment-plans/${name}/stages/all/start`)).status).toBe(200);
        }
      };
      const device = { deviceName: 'cam-1', fleetName: 'fd' };
      // A plan the device completed: it applies (and keeps applying).
      await plan('done', 'h', true);
      await t.server.services.deployments.deploymentsFor(device);
      await t.server.services.deployments.recordResults([
        { ...device, result: undeployResult('done', 'SUCCESS'), receivedAt: Date.now() },
      ]);
      // History the device has no part in: plans never started.
      for (let i = 0; i < 20; i++) await plan(`hist-${i}`, `h${i}`, false);
      await register('fd', ['cam-2']);

      const counted = async (deviceName: string) => {
        const reads = rowsReadFrom('deployment_plans');
        const service = new DeploymentService(t.server.database.db.withPlugin(reads.plugin), {
          engine: t.server.database.engine,
          packagingJobs: t.server.services.packagingJobs,
          models: t.server.services.models,
        });
        const answer = await service.deploymentsFor({ deviceName, fleetName: 'fd' });
        return { names: (answer.Deployments ?? []).map((d) => d.DeploymentName), plansRead: reads.rows() };
      };
      // cam-1 has 'done'; cam-2 joined after it completed and its rule covers it: a newcomer gets it too.
      expect(await counted('cam-1')).toEqual({ names: ['done'], plansRead: 1 });
      expect(await counted('cam-2')).toEqual({ names: ['done'], plansRead: 1 });
    },
  );
});
