/**
 * Session 11 D1: a DeploymentResult a device posts on its own call (POST /api/v1/device/deployments/result)
 * becomes the device's last result at once, as one a heartbeat carries does. Before the fix only the plan's
 * target row took it: the device read APIs and the console showed nothing until the agent repeated it in a
 * heartbeat.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readSnapshot } from '../../src/console/change-feed.js';
import { adminCalls, undeployResult } from '../support/deployment-calls.js';
import { deviceCall } from '../support/device.js';
import { databaseEngines } from '../support/engines.js';
import { enrollDevice, startTestServer, type TestServer } from '../support/server.js';

const engines = await databaseEngines();

describe.each(engines)("the device's own result call on $engine", (fixture) => {
  let t: TestServer;
  const { admin, register } = adminCalls(() => t);

  beforeAll(async () => {
    if (!fixture.available) return;
    t = await startTestServer({
      database: await fixture.createLocation(),
      config: { deployments: { sweepIntervalMs: 3_600_000 } },
    });
    await admin('POST', '/api/v1/fleets', { name: 'fa', outputConfig: { s3OutputLocation: 's3://c/fa' } });
  });
  afterAll(() => t?.stop());

  it.skipIf(!fixture.available)(
    'shows the result on the device read API at once, and a heartbeat without one keeps it',
    async () => {
      await register('fa', ['cam-30']);
      const device = await enrollDevice(t, 'cam-30');
      const identity = { DeviceName: 'cam-30', DeviceFleetName: 'fa' };
      const created = await admin('POST', '/api/v1/deployment-plans', {
        name: 'own-result',
        fleetName: 'fa',
        modelConfigs: [{ modelHandle: 'h', state: 'UNDEPLOY' }],
        stages: [{ name: 's1', deviceSelection: { subsetType: 'SELECTION', deviceNames: ['cam-30'] } }],
      });
      expect(created.status).toBe(201);
      expect((await admin('POST', '/api/v1/deployment-plans/own-result/stages/s1/start')).status).toBe(200);
      const taken = await deviceCall(t.server.deviceUrl, device.tls, 'POST', '/api/v1/device/deployments', {
        body: identity,
      });
      expect(taken.status).toBe(200);
      const described = async () =>
        (await t.call('GET', '/api/v1/devices/cam-30', { token: t.readToken })).body as {
          deploymentResult?: unknown;
        };
      expect((await described()).deploymentResult).toBeUndefined();

      const consoleBefore = await readSnapshot(t.server.database.db, 0);
      const result = undeployResult('own-result', 'SUCCESS', 'removed');
      const posted = await deviceCall(
        t.server.deviceUrl,
        device.tls,
        'POST',
        '/api/v1/device/deployments/result',
        { body: { ...identity, DeploymentResult: result } },
      );
      expect(posted).toMatchObject({ status: 200, body: {} });
      expect((await described()).deploymentResult).toEqual(result);
      // The console's device page refetches on the devices topic: it must see the change.
      expect((await readSnapshot(t.server.database.db, 0)).devices).not.toBe(consoleBefore.devices);

      const events = async () =>
        (
          (await t.call('GET', '/api/v1/deployment-plans/own-result/events', { token: t.readToken }))
            .body as {
            events: { kind: string }[];
          }
        ).events.map((e) => e.kind);
      const applied = await events();
      expect(applied).toContain('StageDeployed');

      // A later heartbeat without a result keeps it; one repeating it is no news for the plan.
      const heartbeat = async (extra: Record<string, unknown>) =>
        expect(
          (
            await deviceCall(t.server.deviceUrl, device.tls, 'POST', '/api/v1/device/heartbeat', {
              body: { AgentVersion: '1.0', ...identity, ...extra },
            })
          ).status,
        ).toBe(200);
      await heartbeat({});
      expect((await described()).deploymentResult).toEqual(result);
      await heartbeat({ DeploymentResult: result });
      expect((await described()).deploymentResult).toEqual(result);
      expect(await events()).toEqual(applied);
    },
  );
});
