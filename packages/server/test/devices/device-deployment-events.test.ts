/**
 * GET /api/v1/devices/{device}/deployment-events (C2): the console's device page lists what happened to the
 * device's deployments (retried, failed, cancelled…) across plans, newest first, from its current registration on.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deviceCall } from '../support/device.js';
import { databaseEngines } from '../support/engines.js';
import { enrollDevice, startTestServer, type TestServer } from '../support/server.js';

const engines = await databaseEngines();

interface EventsPage {
  events: {
    planName: string;
    stageName?: string;
    deviceName: string;
    kind: string;
    message: string;
    at: string;
  }[];
  nextToken?: string;
}

describe.each(engines)("a device's deployment events on $engine", (fixture) => {
  let t: TestServer;
  const admin = (method: string, urlPath: string, body?: unknown) =>
    t.call(method, urlPath, { token: t.adminToken, ...(body !== undefined && { body }) });
  const deviceEvents = async (device: string, query = '') => {
    const answer = await t.call('GET', `/api/v1/devices/${device}/deployment-events${query}`, {
      token: t.readToken,
    });
    expect(answer.status, JSON.stringify(answer.body)).toBe(200);
    return answer.body as EventsPage;
  };
  const createAndStart = async (plan: string, devices: string[]) => {
    const created = await admin('POST', '/api/v1/deployment-plans', {
      name: plan,
      fleetName: 'yard',
      modelConfigs: [{ modelHandle: `h-${plan}`, state: 'UNDEPLOY' }],
      stages: [{ name: 's1', deviceSelection: { subsetType: 'SELECTION', deviceNames: devices } }],
    });
    expect(created.status).toBe(201);
    expect((await admin('POST', `/api/v1/deployment-plans/${plan}/stages/s1/start`)).status).toBe(200);
  };

  beforeAll(async () => {
    if (!fixture.available) return;
    t = await startTestServer({
      database: await fixture.createLocation(),
      config: { deployments: { sweepIntervalMs: 3_600_000 } },
    });
    expect(
      (
        await admin('POST', '/api/v1/fleets', {
          name: 'yard',
          outputConfig: { s3OutputLocation: 's3://c/yard' },
        })
      ).status,
    ).toBe(201);
    expect(
      (
        await admin('POST', '/api/v1/fleets/yard/devices', {
          devices: [{ name: 'crane-1' }, { name: 'crane-2' }],
        })
      ).status,
    ).toBe(201);
  });
  afterAll(() => t?.stop());

  it.skipIf(!fixture.available)(
    "lists only this device's events of every plan, newest first, in pages, and none of an earlier device of its name",
    async () => {
      expect(await deviceEvents('crane-1')).toEqual({ events: [] });

      // plan-a: crane-1 fails once (retried), crane-2 is cancelled by an operator.
      await createAndStart('plan-a', ['crane-1', 'crane-2']);
      const crane1 = await enrollDevice(t, 'crane-1');
      // It takes the deployment (in progress), then reports that it failed.
      const taken = await deviceCall(t.server.deviceUrl, crane1.tls, 'POST', '/api/v1/device/deployments', {
        body: { DeviceName: 'crane-1', DeviceFleetName: 'yard' },
      });
      expect(taken.status).toBe(200);
      const failed = await deviceCall(
        t.server.deviceUrl,
        crane1.tls,
        'POST',
        '/api/v1/device/deployments/result',
        {
          body: {
            DeviceName: 'crane-1',
            DeviceFleetName: 'yard',
            DeploymentResult: {
              DeploymentName: 'plan-a',
              DeploymentStatus: 'FAIL',
              DeploymentModels: [
                { ModelHandle: 'h-plan-a', Status: 'FAIL', StatusReason: 'could not remove it' },
              ],
            },
          },
        },
      );
      expect(failed.status).toBe(200);
      expect((await admin('POST', '/api/v1/deployment-plans/plan-a/devices/crane-2/cancel')).status).toBe(
        200,
      );
      // plan-b: crane-1 is cancelled too.
      await createAndStart('plan-b', ['crane-1']);
      expect((await admin('POST', '/api/v1/deployment-plans/plan-b/devices/crane-1/cancel')).status).toBe(
        200,
      );

      const all = await deviceEvents('crane-1');
      expect(all.events.map((e) => [e.planName, e.stageName, e.deviceName, e.kind])).toEqual([
        ['plan-b', 's1', 'crane-1', 'DeviceCancelled'],
        ['plan-a', 's1', 'crane-1', 'DeviceRetried'],
      ]);
      expect(all.events[1]!.message).toContain('could not remove it');
      expect(all.nextToken).toBeUndefined();
      expect((await deviceEvents('crane-2')).events.map((e) => [e.planName, e.kind])).toEqual([
        ['plan-a', 'DeviceCancelled'],
      ]);

      // One at a time: the token continues where the page ended; another listing's token is refused.
      const first = await deviceEvents('crane-1', '?limit=1');
      expect(first.events.map((e) => e.kind)).toEqual(['DeviceCancelled']);
      const second = await deviceEvents('crane-1', `?limit=1&nextToken=${first.nextToken}`);
      expect(second.events.map((e) => e.kind)).toEqual(['DeviceRetried']);
      expect(second.nextToken).toBeUndefined();
      const planToken = (
        (await t.call('GET', '/api/v1/deployment-plans/plan-a/events?limit=1', { token: t.readToken }))
          .body as {
          nextToken: string;
        }
      ).nextToken;
      const refused = await t.call(
        'GET',
        `/api/v1/devices/crane-1/deployment-events?nextToken=${planToken}`,
        {
          token: t.readToken,
        },
      );
      expect(refused.status).toBe(400);

      // Deregistered and registered again: a new device, with no history of the old one's.
      expect((await admin('DELETE', '/api/v1/devices/crane-2')).status).toBe(204);
      expect(
        (await admin('POST', '/api/v1/fleets/yard/devices', { devices: [{ name: 'crane-2' }] })).status,
      ).toBe(201);
      expect(await deviceEvents('crane-2')).toEqual({ events: [] });

      const unknown = await t.call('GET', '/api/v1/devices/crane-9/deployment-events', {
        token: t.readToken,
      });
      expect(unknown.status).toBe(404);
    },
  );
});
