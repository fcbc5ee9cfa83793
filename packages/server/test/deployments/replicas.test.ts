import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { writeTestModel } from '@edgefleet/core';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deviceCall } from '../support/device.js';
import { databaseEngines } from '../support/engines.js';
import { lockWaiters } from '../support/postgres.js';
import { enrollDevice, startTestServer, type EnrolledDevice, type TestServer } from '../support/server.js';

const engines = await databaseEngines();
const postgres = engines.find((e) => e.engine === 'postgres')!;

// Two replicas share one PostgreSQL and one data dir (CA and signing keys), as a shared volume would be.
describe.skipIf(!postgres.available)('deployments served by two replicas on one PostgreSQL', () => {
  let a: TestServer;
  let b: TestServer;
  let shared: string;
  let databaseUrl: string;
  let firstDevice: { name: string; enrolled: EnrolledDevice } | undefined;
  beforeAll(async () => {
    shared = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-deploy-replicas-'));
    const location = await postgres.createLocation();
    if (location.engine !== 'postgres') throw new Error('expected a PostgreSQL location');
    databaseUrl = location.url;
    const config = { packaging: { pollIntervalMs: 50 }, deployments: { sweepIntervalMs: 100 } };
    // Together, on an empty shared folder: one creates the CA and signing keys, the other loads them.
    [a, b] = await Promise.all([
      startTestServer({ database: location, dataDir: shared, config }),
      startTestServer({ database: location, dataDir: shared, config }),
    ]);
    await a.call('POST', '/api/v1/fleets', {
      token: a.adminToken,
      body: { name: 'f', outputConfig: { s3OutputLocation: 's3://c/f' } },
    });
    const devices = Array.from({ length: 12 }, (_, i) => ({ name: `r-${String(i).padStart(2, '0')}` }));
    await b.call('POST', '/api/v1/fleets/f/devices', { token: b.adminToken, body: { devices } });
    const onnx = await writeTestModel('tiny', path.join(shared, 'model'));
    await fetch(`${a.url}/api/v1/models/tiny/versions/1`, {
      method: 'POST',
      headers: { authorization: `Bearer ${a.adminToken}`, 'content-type': 'application/octet-stream' },
      body: await readFile(onnx),
    });
    await a.call('POST', '/api/v1/packaging-jobs', {
      token: a.adminToken,
      body: { name: 'pack-1', modelName: 'tiny', modelVersion: '1' },
    });
    for (let i = 0; i < 600; i++) {
      const job = await b.call('GET', '/api/v1/packaging-jobs/pack-1', { token: b.readToken });
      if (job.body.status === 'COMPLETED') break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  });
  afterAll(async () => {
    await a?.stop();
    await b?.stop();
    await rm(shared, { recursive: true, force: true });
  });

  it('agree on one plan: a stage started on both starts once, and devices report to either', async () => {
    // Two plans for the same handle created on both replicas at once: exactly one wins, the other is a 409.
    const plan = (name: string) => ({
      name,
      fleetName: 'f',
      modelConfigs: [{ modelHandle: 'classifier', packagingJobName: 'pack-1' }],
      stages: [{ name: 'all', deviceSelection: { subsetType: 'PERCENTAGE', percentage: 100 } }],
    });
    const created = await Promise.all([
      a.call('POST', '/api/v1/deployment-plans', { token: a.adminToken, body: plan('pa') }),
      b.call('POST', '/api/v1/deployment-plans', { token: b.adminToken, body: plan('pb') }),
    ]);
    expect(created.map((c) => c.status).sort()).toEqual([201, 409]);
    const name = created[0]?.status === 201 ? 'pa' : 'pb';

    const started = await Promise.all([
      a.call('POST', `/api/v1/deployment-plans/${name}/stages/all/start`, { token: a.adminToken }),
      b.call('POST', `/api/v1/deployment-plans/${name}/stages/all/start`, { token: b.adminToken }),
    ]);
    expect(started.map((s) => s.status).sort()).toEqual([200, 409]);
    const devices = await a.call('GET', `/api/v1/deployment-plans/${name}/stages/all/devices?limit=100`, {
      token: a.readToken,
    });
    expect(devices.body.devices).toHaveLength(12);

    // Each device asks one replica and reports to the other.
    for (const [i, device] of devices.body.devices.entries()) {
      const enrolled = await enrollDevice(i % 2 === 0 ? a : b, device.deviceName);
      firstDevice ??= { name: device.deviceName, enrolled };
      const [ask, report] = i % 2 === 0 ? [a, b] : [b, a];
      const ids = { DeviceName: device.deviceName, DeviceFleetName: 'f' };
      const desired = await deviceCall(ask.server.deviceUrl, enrolled.tls, 'POST', '/GetDeployments', {
        body: ids,
      });
      expect(desired.body.Deployments[0].DeploymentName).toBe(name);
      const sent = await deviceCall(report.server.deviceUrl, enrolled.tls, 'POST', '/SendHeartbeat', {
        body: {
          ...ids,
          AgentVersion: '1',
          DeploymentResult: {
            DeploymentName: name,
            DeploymentModels: [{ ModelHandle: 'classifier', Status: 'SUCCESS' }],
          },
        },
      });
      expect(sent.status).toBe(200);
    }
    // Whichever replica settles it, the stage ends DEPLOYED once (the sweepers of both run meanwhile).
    let described = await b.call('GET', `/api/v1/deployment-plans/${name}`, { token: b.readToken });
    for (let i = 0; i < 100 && described.body.stages[0].status !== 'DEPLOYED'; i++) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      described = await b.call('GET', `/api/v1/deployment-plans/${name}`, { token: b.readToken });
    }
    expect(described.body).toMatchObject({
      successCount: 12,
      pendingCount: 0,
      stages: [{ status: 'DEPLOYED' }],
    });
    const events = await a.call('GET', `/api/v1/deployment-plans/${name}/events`, { token: a.readToken });
    expect(events.body.events.map((e: { kind: string }) => e.kind)).toEqual([
      'PlanCreated',
      'StageStarted',
      'StageDeployed',
    ]);
  });

  it('record a failure reported to both at once as one event', async () => {
    // The same FAIL report reaches both replicas; both read the device's INPROGRESS row before either writes
    // (a row lock held here makes them wait at their update together; pg_locks shows them waiting, the
    // throwaway cluster's pg_stat_activity does not name their queries). One applies it; the other's update
    // then matches nothing and must not record the failure again.
    const device = firstDevice!;
    await a.call('POST', '/api/v1/deployment-plans', {
      token: a.adminToken,
      body: {
        name: 'race',
        fleetName: 'f',
        modelConfigs: [{ modelHandle: 'second', packagingJobName: 'pack-1' }],
        stages: [{ name: 'all', deviceSelection: { subsetType: 'PERCENTAGE', percentage: 100 } }],
      },
    });
    await a.call('POST', '/api/v1/deployment-plans/race/stages/all/start', { token: a.adminToken });
    const ids = { DeviceName: device.name, DeviceFleetName: 'f' };
    const desired = await deviceCall(a.server.deviceUrl, device.enrolled.tls, 'POST', '/GetDeployments', {
      body: ids,
    });
    expect(desired.body.Deployments.map((d: { DeploymentName: string }) => d.DeploymentName)).toContain(
      'race',
    );

    const locker = new pg.Client({ connectionString: databaseUrl });
    await locker.connect();
    try {
      await locker.query('BEGIN');
      await locker.query(
        "SELECT 1 FROM deployment_targets WHERE plan_name = 'race' AND device_name = $1 FOR UPDATE",
        [device.name],
      );
      const report = (t: TestServer) =>
        deviceCall(t.server.deviceUrl, device.enrolled.tls, 'POST', '/api/v1/device/deployments/result', {
          body: {
            ...ids,
            DeploymentResult: {
              DeploymentName: 'race',
              DeploymentStatus: 'FAIL',
              DeploymentModels: [{ ModelHandle: 'second', Status: 'FAIL', StatusReason: 'broken' }],
            },
          },
        });
      const both = Promise.all([report(a), report(b)]);
      expect(await lockWaiters(locker, 2)).toBeGreaterThanOrEqual(2);
      await locker.query('COMMIT');
      expect((await both).map((r) => r.status)).toEqual([200, 200]);
    } finally {
      await locker.end();
    }
    const events = await a.call('GET', '/api/v1/deployment-plans/race/events', { token: a.readToken });
    const deviceEvents = events.body.events
      .map((e: { kind: string }) => e.kind)
      .filter((kind: string) => kind.startsWith('Device'));
    expect(deviceEvents).toEqual(['DeviceRetried']);
  });
});
