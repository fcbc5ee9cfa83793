// F6: two devices of a stage report SUCCESS to two replicas at once with autoAdvance 50: each sees its own report
// reach the threshold and starts the next stage. The one that finds it started meanwhile goes on quietly: its
// device's result is kept, answered 200, never a 409 that rolls it back.
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { writeTestModel } from '@edgefleet/core';
import pg from 'pg';
import { afterAll, expect, it } from 'vitest';
import { deviceCall } from '../support/device.js';
import { databaseEngines } from '../support/engines.js';
import { lockWaiters } from '../support/postgres.js';
import { enrollDevice, startTestServer, type TestServer } from '../support/server.js';

const engines = await databaseEngines();
const postgres = engines.find((e) => e.engine === 'postgres');
let a: TestServer;
let b: TestServer;
let shared: string;
afterAll(async () => {
  await a?.stop();
  await b?.stop();
  await rm(shared, { recursive: true, force: true });
});

it.skipIf(postgres?.available !== true)(
  'an auto-advance that another replica won meanwhile keeps the reporting device’s result (two replicas, PostgreSQL)',
  async () => {
    shared = await mkdtemp(path.join(os.tmpdir(), 'jd15-adv-'));
    const location = await postgres!.createLocation();
    if (location.engine !== 'postgres') throw new Error('expected a PostgreSQL location');
    const config = { packaging: { pollIntervalMs: 50 }, deployments: { sweepIntervalMs: 600000 } };
    [a, b] = await Promise.all([
      startTestServer({ database: location, dataDir: shared, config }),
      startTestServer({ database: location, dataDir: shared, config }),
    ]);
    await a.call('POST', '/api/v1/fleets', {
      token: a.adminToken,
      body: { name: 'f', outputConfig: { s3OutputLocation: 's3://c/f' } },
    });
    await a.call('POST', '/api/v1/fleets/f/devices', {
      token: a.adminToken,
      body: { devices: [{ name: 'd0' }, { name: 'd1' }, { name: 'd2' }] },
    });
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
      await new Promise((r) => setTimeout(r, 50));
    }
    const created = await a.call('POST', '/api/v1/deployment-plans', {
      token: a.adminToken,
      body: {
        name: 'adv',
        fleetName: 'f',
        modelConfigs: [{ modelHandle: 'h', packagingJobName: 'pack-1' }],
        stages: [
          { name: 's1', deviceSelection: { subsetType: 'SELECTION', deviceNames: ['d0', 'd1'] } },
          { name: 's2', deviceSelection: { subsetType: 'SELECTION', deviceNames: ['d2'] } },
        ],
        options: { autoAdvance: { successPercent: 50 } },
      },
    });
    expect(created.status).toBe(201);
    expect(
      (await a.call('POST', '/api/v1/deployment-plans/adv/stages/s1/start', { token: a.adminToken })).status,
    ).toBe(200);
    const d0 = await enrollDevice(a, 'd0');
    const d1 = await enrollDevice(b, 'd1');
    for (const [t, d, n] of [
      [a, d0, 'd0'],
      [b, d1, 'd1'],
    ] as const) {
      const desired = await deviceCall(t.server.deviceUrl, d.tls, 'POST', '/GetDeployments', {
        body: { DeviceName: n, DeviceFleetName: 'f' },
      });
      expect(desired.status).toBe(200);
    }
    const locker = new pg.Client({ connectionString: location.url });
    await locker.connect();
    let results: { status: number; body: unknown }[] = [];
    try {
      await locker.query('BEGIN');
      await locker.query(
        "SELECT 1 FROM deployment_stages WHERE plan_name = 'adv' AND name = 's2' FOR UPDATE",
      );
      const report = (t: TestServer, d: typeof d0, n: string) =>
        deviceCall(t.server.deviceUrl, d.tls, 'POST', '/api/v1/device/deployments/result', {
          body: {
            DeviceName: n,
            DeviceFleetName: 'f',
            DeploymentResult: {
              DeploymentName: 'adv',
              DeploymentStatus: 'SUCCESS',
              DeploymentModels: [{ ModelHandle: 'h', Status: 'SUCCESS' }],
            },
          },
        });
      const both = Promise.all([report(a, d0, 'd0'), report(b, d1, 'd1')]);
      // Both reports wait on the next stage's row: each saw the threshold reached.
      await lockWaiters(locker, 2);
      await locker.query('COMMIT');
      results = await both;
    } finally {
      await locker.end();
    }
    expect(results.map((r) => [r.status, r.body])).toEqual([
      [200, {}],
      [200, {}],
    ]);
    const events = await a.call('GET', '/api/v1/deployment-plans/adv/events', { token: a.readToken });
    // s1 by hand, s2 once (by the auto-advance that won).
    expect(events.body.events.map((e: { kind: string }) => e.kind)).toEqual([
      'PlanCreated',
      'StageStarted',
      'StageStarted',
    ]);
    const plan = await a.call('GET', '/api/v1/deployment-plans/adv', { token: a.readToken });
    // Both successes kept (d1's was not rolled back); s2 under way once.
    expect(plan.body.stages[1].status).toBe('INPROGRESS');
    const s1 = await a.call('GET', '/api/v1/deployment-plans/adv/stages/s1/devices', { token: a.readToken });
    expect(s1.status).toBe(200);
    expect(JSON.stringify(s1.body)).not.toMatch(/INPROGRESS/);
    // Each report's transaction counted the other's as not yet committed, so s1 may still be INPROGRESS: the
    // next sweep settles it DEPLOYED (review H9), and starts nothing more.
    await b.server.services.deployments.sweep();
    const swept = await a.call('GET', '/api/v1/deployment-plans/adv', { token: a.readToken });
    expect(swept.body.stages.map((stage: { status: string }) => stage.status)).toEqual([
      'DEPLOYED',
      'INPROGRESS',
    ]);
  },
  120_000,
);
