/**
 * Audit s8 #3: deployment results belong to the fleet of the device that reports them, and deregistering a
 * device ends its pending deployments. Before the fix a device of fleet `fb` registered under a name that
 * fleet `fa` had deregistered completed (or failed) `fa`'s stage and auto-advanced its plan.
 */
import type { DeploymentResultInput } from '@edgefleet/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCalls, undeployResult } from '../support/deployment-calls.js';
import { deviceCall } from '../support/device.js';
import { databaseEngines } from '../support/engines.js';
import { enrollDevice, startTestServer, type EnrolledDevice, type TestServer } from '../support/server.js';

const engines = await databaseEngines();

describe.each(engines)('a deregistered device and its deployments on $engine', (fixture) => {
  let t: TestServer;

  const { admin, register } = adminCalls(() => t);
  const report = undeployResult;
  /** Both ways a device reports: in a heartbeat, and on its own call. */
  const reportBothWays = async (device: EnrolledDevice, fleet: string, result: DeploymentResultInput) => {
    const identity = { DeviceName: device.deviceName, DeviceFleetName: fleet };
    const heartbeat = await deviceCall(t.server.deviceUrl, device.tls, 'POST', '/api/v1/device/heartbeat', {
      body: { AgentVersion: '1.0', ...identity, DeploymentResult: result },
    });
    expect(heartbeat.status).toBe(200);
    const direct = await deviceCall(
      t.server.deviceUrl,
      device.tls,
      'POST',
      '/api/v1/device/deployments/result',
      { body: { ...identity, DeploymentResult: result } },
    );
    expect(direct.status).toBe(200);
  };
  const plan = async (name: string) =>
    (await t.call('GET', `/api/v1/deployment-plans/${name}`, { token: t.readToken })).body as {
      stages: { name: string; status: string; successCount: number; failedCount: number }[];
    };
  const events = async (name: string) =>
    (
      (await t.call('GET', `/api/v1/deployment-plans/${name}/events`, { token: t.readToken })).body as {
        events: { kind: string; stageName?: string; deviceName?: string; message: string }[];
      }
    ).events;
  const targets = async (planName: string, stage: string) =>
    (
      (
        await t.call('GET', `/api/v1/deployment-plans/${planName}/stages/${stage}/devices`, {
          token: t.readToken,
        })
      ).body as { devices: { deviceName: string; status: string; statusMessage?: string }[] }
    ).devices;
  /** A two-stage plan of fleet `fa` that auto-advances and aborts on the first failure. */
  const createPlan = async (name: string, first: string[], second: string[]) => {
    const created = await admin('POST', '/api/v1/deployment-plans', {
      name,
      fleetName: 'fa',
      modelConfigs: [{ modelHandle: `h-${name}`, state: 'UNDEPLOY' }],
      stages: [
        { name: 's1', deviceSelection: { subsetType: 'SELECTION', deviceNames: first } },
        { name: 's2', deviceSelection: { subsetType: 'SELECTION', deviceNames: second } },
      ],
      options: { autoAdvance: { successPercent: 100 }, abort: { failedCount: 1 } },
    });
    expect(created.status).toBe(201);
    expect((await admin('POST', `/api/v1/deployment-plans/${name}/stages/s1/start`)).status).toBe(200);
  };

  beforeAll(async () => {
    if (!fixture.available) return;
    t = await startTestServer({
      database: await fixture.createLocation(),
      config: { deployments: { sweepIntervalMs: 3_600_000 } },
    });
    for (const fleet of ['fa', 'fb']) {
      await admin('POST', '/api/v1/fleets', {
        name: fleet,
        outputConfig: { s3OutputLocation: `s3://c/${fleet}` },
      });
    }
  });
  afterAll(() => t?.stop());

  it.skipIf(!fixture.available)(
    "another fleet's device registered under a deregistered name cannot complete, fail or advance the plan",
    async () => {
      await register('fa', ['cam-01', 'cam-02']);
      await createPlan('planA', ['cam-01'], ['cam-02']);
      // The original cam-01 takes the deployment: it is in progress.
      const original = await enrollDevice(t, 'cam-01');
      const taken = await deviceCall(t.server.deviceUrl, original.tls, 'POST', '/api/v1/device/deployments', {
        body: { DeviceName: 'cam-01', DeviceFleetName: 'fa' },
      });
      expect(taken.status).toBe(200);
      expect(await targets('planA', 's1')).toMatchObject([{ deviceName: 'cam-01', status: 'INPROGRESS' }]);

      // Retired, and the name is given to a device of fleet fb.
      expect((await admin('DELETE', '/api/v1/devices/cam-01')).status).toBe(204);
      await register('fb', ['cam-01']);
      const impostor = await enrollDevice(t, 'cam-01');
      await reportBothWays(impostor, 'fb', report('planA', 'SUCCESS'));
      await reportBothWays(impostor, 'fb', report('planA', 'FAIL'));

      // Deregistration stopped the target and settled the stage; nothing fb's device said counted.
      expect(await targets('planA', 's1')).toMatchObject([
        {
          deviceName: 'cam-01',
          status: 'STOPPED',
          statusMessage: 'cancelled: device cam-01 was deregistered',
        },
      ]);
      expect((await plan('planA')).stages).toMatchObject([
        { name: 's1', status: 'STOPPED', successCount: 0, failedCount: 0 },
        { name: 's2', status: 'READYTODEPLOY' },
      ]);
      const kinds = (await events('planA')).map((e) => `${e.kind}${e.stageName ? ` ${e.stageName}` : ''}`);
      expect(kinds).toEqual(['PlanCreated', 'StageStarted s1', 'DeviceCancelled s1', 'StageStopped s1']);
      expect((await events('planA')).find((e) => e.kind === 'DeviceCancelled')).toMatchObject({
        deviceName: 'cam-01',
        message: 'cancelled: device cam-01 was deregistered',
      });
    },
  );

  it.skipIf(!fixture.available)(
    "a report is matched by the reporting device's fleet, not by its name alone",
    async () => {
      // The in-process API the device routes call, with the identity an fb certificate would give: the
      // state deregistration now prevents (an fa target pending while fb has a device of that name).
      await register('fa', ['cam-05', 'cam-06']);
      await createPlan('planF', ['cam-05'], ['cam-06']);
      const from = (fleetName: string, status: 'SUCCESS' | 'FAIL') => [
        { deviceName: 'cam-05', fleetName, result: report('planF', status), receivedAt: Date.now() },
      ];
      await t.server.services.deployments.recordResults(from('fb', 'SUCCESS'));
      await t.server.services.deployments.recordResults(from('fb', 'FAIL'));
      expect(await targets('planF', 's1')).toMatchObject([{ deviceName: 'cam-05', status: 'READYTODEPLOY' }]);
      expect((await plan('planF')).stages.map((s) => s.status)).toEqual(['INPROGRESS', 'READYTODEPLOY']);
      // The same report from the fleet's own device counts, and the plan advances.
      await t.server.services.deployments.recordResults(from('fa', 'SUCCESS'));
      expect((await plan('planF')).stages.map((s) => s.status)).toEqual(['DEPLOYED', 'INPROGRESS']);
    },
  );

  it.skipIf(!fixture.available)(
    'deregistering ends every pending deployment of the device, and leaves finished ones as they were',
    async () => {
      await register('fa', ['cam-10', 'cam-11']);
      const ten = await enrollDevice(t, 'cam-10');
      const take = () =>
        deviceCall(t.server.deviceUrl, ten.tls, 'POST', '/api/v1/device/deployments', {
          body: { DeviceName: 'cam-10', DeviceFleetName: 'fa' },
        });
      // done: cam-10 deployed it. taken: cam-10 took it (INPROGRESS). waiting: not taken yet (READYTODEPLOY),
      // with cam-11 still pending in the same stage.
      await createPlan('done', ['cam-10'], ['cam-11']);
      await take();
      await reportBothWays(ten, 'fa', report('done', 'SUCCESS'));
      await createPlan('taken', ['cam-10'], ['cam-11']);
      expect((await take()).status).toBe(200);
      await createPlan('waiting', ['cam-10', 'cam-11'], ['cam-11']);
      expect(await targets('taken', 's1')).toMatchObject([{ status: 'INPROGRESS' }]);
      expect(await targets('waiting', 's1')).toMatchObject([
        { deviceName: 'cam-10', status: expect.stringMatching(/^(READYTODEPLOY|INPROGRESS)$/) },
        { deviceName: 'cam-11', status: 'READYTODEPLOY' },
      ]);

      expect((await admin('DELETE', '/api/v1/devices/cam-10')).status).toBe(204);

      expect(await targets('done', 's1')).toMatchObject([{ deviceName: 'cam-10', status: 'DEPLOYED' }]);
      expect(await targets('taken', 's1')).toMatchObject([{ deviceName: 'cam-10', status: 'STOPPED' }]);
      expect(await targets('waiting', 's1')).toMatchObject([
        { deviceName: 'cam-10', status: 'STOPPED' },
        { deviceName: 'cam-11', status: 'READYTODEPLOY' },
      ]);
      // Settled: a stage whose only device was cancelled is STOPPED; one with another device pending waits.
      expect((await plan('taken')).stages[0]).toMatchObject({ status: 'STOPPED' });
      expect((await plan('waiting')).stages[0]).toMatchObject({ status: 'INPROGRESS' });
      expect((await plan('done')).stages.map((s) => s.status)).toEqual(['DEPLOYED', 'INPROGRESS']);
      for (const name of ['taken', 'waiting']) {
        expect((await events(name)).filter((e) => e.kind === 'DeviceCancelled')).toMatchObject([
          { deviceName: 'cam-10', stageName: 's1', message: 'cancelled: device cam-10 was deregistered' },
        ]);
      }
      expect((await events('done')).some((e) => e.kind === 'DeviceCancelled')).toBe(false);
    },
  );
});
