/**
 * s10 W2: a release that failed after its switch (its health window) is not retried: a retry would switch
 * the failing version in again, a second outage. Failures before the switch (download, verify, load), where
 * the old version kept serving, are retried as before, and so are reports of agents that do not say.
 * Devices report over the real device API (mutual TLS), in heartbeats.
 */
import type { DeploymentResultInput } from '@edgefleet/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deviceCall } from '../support/device.js';
import { databaseEngines } from '../support/engines.js';
import { enrollDevice, startTestServer, type EnrolledDevice, type TestServer } from '../support/server.js';

const engines = await databaseEngines();

describe.each(engines)('failures after the switch on $engine', (fixture) => {
  let t: TestServer;
  const devices = new Map<string, EnrolledDevice>();

  const admin = (method: string, urlPath: string, body?: unknown) =>
    t.call(method, urlPath, { token: t.adminToken, ...(body !== undefined && { body }) });
  const take = async (name: string) => {
    const answer = await deviceCall(
      t.server.deviceUrl,
      devices.get(name)!.tls,
      'POST',
      '/api/v1/device/deployments',
      {
        body: { DeviceName: name, DeviceFleetName: 'fs' },
      },
    );
    expect(answer.status).toBe(200);
  };
  const heartbeat = async (name: string, result: DeploymentResultInput) => {
    const answer = await deviceCall(
      t.server.deviceUrl,
      devices.get(name)!.tls,
      'POST',
      '/api/v1/device/heartbeat',
      {
        body: { AgentVersion: '1.0', DeviceName: name, DeviceFleetName: 'fs', DeploymentResult: result },
      },
    );
    expect(answer.status).toBe(200);
  };
  const failure = (plan: string, reason: string, failedAfterSwitch?: boolean): DeploymentResultInput => ({
    DeploymentName: plan,
    DeploymentStatus: 'FAIL',
    DeploymentStatusMessage: `h: ${reason}`,
    DeploymentModels: [
      {
        ModelHandle: 'h',
        Status: 'FAIL',
        StatusReason: reason,
        ...(failedAfterSwitch !== undefined && { FailedAfterSwitch: failedAfterSwitch }),
      },
    ],
  });
  const target = async (plan: string) =>
    (
      (await t.call('GET', `/api/v1/deployment-plans/${plan}/stages/s/devices`, { token: t.readToken }))
        .body as {
        devices: { deviceName: string; status: string; statusMessage?: string; attempts: number }[];
      }
    ).devices[0];
  const kinds = async (plan: string) =>
    (
      (await t.call('GET', `/api/v1/deployment-plans/${plan}/events`, { token: t.readToken })).body as {
        events: { kind: string; message: string }[];
      }
    ).events;
  const startPlan = async (plan: string, device: string) => {
    const created = await admin('POST', '/api/v1/deployment-plans', {
      name: plan,
      fleetName: 'fs',
      modelConfigs: [{ modelHandle: `h-${plan}`, state: 'UNDEPLOY' }],
      stages: [{ name: 's', deviceSelection: { subsetType: 'SELECTION', deviceNames: [device] } }],
      options: { maxRetries: 2 },
    });
    expect(created.status).toBe(201);
    expect((await admin('POST', `/api/v1/deployment-plans/${plan}/stages/s/start`)).status).toBe(200);
  };

  beforeAll(async () => {
    if (!fixture.available) return;
    t = await startTestServer({
      database: await fixture.createLocation(),
      config: { deployments: { sweepIntervalMs: 3_600_000 } },
    });
    await admin('POST', '/api/v1/fleets', { name: 'fs', outputConfig: { s3OutputLocation: 's3://c/fs' } });
    await admin('POST', '/api/v1/fleets/fs/devices', {
      devices: [{ name: 'sw-1' }, { name: 'sw-2' }, { name: 'sw-3' }, { name: 'sw-4' }],
    });
    for (const name of ['sw-1', 'sw-2', 'sw-3', 'sw-4']) devices.set(name, await enrollDevice(t, name));
  });
  afterAll(() => t?.stop());

  it.skipIf(!fixture.available)(
    'fails a device at once when its new version failed after the switch',
    async () => {
      await startPlan('health', 'sw-1');
      await take('sw-1');
      const reason = 'version 4.0 of h failed its health window: 115 of 115 requests failed';
      await heartbeat('sw-1', failure('health', reason, true));
      expect(await target('health')).toMatchObject({
        deviceName: 'sw-1',
        status: 'FAILED',
        attempts: 1,
        statusMessage:
          `h: ${reason} (not retried: the new version failed after its switch, and a retry would switch it in ` +
          'again)',
      });
      expect((await kinds('health')).map((e) => e.kind)).toEqual([
        'PlanCreated',
        'StageStarted',
        'DeviceFailed',
        'DeviceRolledBack',
        'StageFailed',
      ]);
    },
  );

  it.skipIf(!fixture.available)(
    'retries a failure before the switch, and one from an agent that does not say',
    async () => {
      for (const [plan, device, flag] of [
        ['load', 'sw-2', false],
        ['older-agent', 'sw-3', undefined],
      ] as const) {
        await startPlan(plan, device);
        await take(device);
        await heartbeat(device, failure(plan, 'version 4.0 of h did not load: no such operator', flag));
        expect(await target(plan)).toMatchObject({
          status: 'READYTODEPLOY',
          attempts: 1,
          statusMessage:
            'attempt 1 failed: h: version 4.0 of h did not load: no such operator; retrying (2 attempt(s) left)',
        });
      }
    },
  );

  it.skipIf(!fixture.available)(
    'does not blame the switch for no retry when the stage was stopping anyway',
    async () => {
      await startPlan('stopping', 'sw-4');
      await take('sw-4');
      expect((await admin('POST', '/api/v1/deployment-plans/stopping/stages/s/stop')).status).toBe(200);
      const reason = 'version 4.0 of h failed its health window: 3 of 3 requests failed';
      await heartbeat('sw-4', failure('stopping', reason, true));
      expect(await target('stopping')).toMatchObject({ status: 'FAILED', statusMessage: `h: ${reason}` });
    },
  );
});
