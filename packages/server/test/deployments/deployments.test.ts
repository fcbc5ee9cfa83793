import { createHash } from 'node:crypto';
import https from 'node:https';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import {
  createModelPackage,
  packModelPackage,
  writeTestModel,
  type DeploymentResultInput,
} from '@edgefleet/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DeploymentService, MAX_SELECTION_TAGS, MAX_STAGES } from '../../src/deployments/index.js';
import { deviceCall, type TlsIdentity } from '../support/device.js';
import { databaseEngines } from '../support/engines.js';
import { enrollDevice, startTestServer, type EnrolledDevice, type TestServer } from '../support/server.js';

const engines = await databaseEngines();

let work: string;
let tinyOnnx: string;
beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-deployments-'));
  tinyOnnx = await writeTestModel('tiny', path.join(work, 'tiny'));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

/** GET of a device package with optional headers, keeping the bytes. */
function download(
  baseUrl: string,
  tls: TlsIdentity,
  urlPath: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; bytes: Buffer }> {
  return new Promise((resolve, reject) => {
    // The path goes as written (a URL string would have its ".." segments resolved before sending).
    const { hostname, port } = new URL(baseUrl);
    const request = https.request(
      { hostname, port, path: urlPath, method: 'GET', ca: tls.ca, cert: tls.cert, key: tls.key, headers },
      (response) => {
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.on('end', () =>
          resolve({
            status: response.statusCode ?? 0,
            headers: response.headers,
            bytes: Buffer.concat(chunks),
          }),
        );
      },
    );
    request.on('error', reject);
    request.end();
  });
}

describe.each(engines)('deployments on $engine', (fixture) => {
  let t: TestServer;
  const devices = new Map<string, EnrolledDevice>();
  const fleetOf = (name: string) => (name.startsWith('g') ? 'g' : 'f');

  const admin = (method: string, urlPath: string, body?: unknown) =>
    t.call(method, urlPath, { token: t.adminToken, ...(body !== undefined && { body }) });
  const getDeployments = async (name: string) => {
    const device = devices.get(name)!;
    const answer = await deviceCall(t.server.deviceUrl, device.tls, 'POST', '/api/v1/device/deployments', {
      body: { DeviceName: name, DeviceFleetName: fleetOf(name) },
    });
    expect(answer.status).toBe(200);
    return answer.body as {
      Deployments: { DeploymentName: string; Definitions: Record<string, unknown>[] }[];
    };
  };
  const heartbeat = async (name: string, result: DeploymentResultInput) => {
    const device = devices.get(name)!;
    const answer = await deviceCall(t.server.deviceUrl, device.tls, 'POST', '/api/v1/device/heartbeat', {
      body: {
        AgentVersion: '1.0',
        DeviceName: name,
        DeviceFleetName: fleetOf(name),
        DeploymentResult: result,
      },
    });
    expect(answer.status).toBe(200);
  };
  const success = (plan: string, handle = 'classifier'): DeploymentResultInput => ({
    DeploymentName: plan,
    DeploymentStatus: 'SUCCESS',
    DeploymentStartTime: Math.floor(Date.now() / 1000),
    DeploymentModels: [{ ModelHandle: handle, Status: 'SUCCESS', State: 'DEPLOY', DesiredState: 'DEPLOY' }],
  });
  const failure = (plan: string, reason: string): DeploymentResultInput => ({
    DeploymentName: plan,
    DeploymentStatus: 'FAIL',
    DeploymentModels: [{ ModelHandle: 'classifier', Status: 'FAIL', StatusReason: reason }],
  });
  const stageDevices = async (plan: string, stage: string) =>
    (await t.call('GET', `/api/v1/deployment-plans/${plan}/stages/${stage}/devices`, { token: t.readToken }))
      .body.devices as {
      deviceName: string;
      status: string;
      statusMessage?: string;
      stopReason?: string;
      attempts: number;
      lastSeenAt?: string;
      startedAt?: string;
      endedAt?: string;
    }[];
  const describePlan = async (plan: string) =>
    (await t.call('GET', `/api/v1/deployment-plans/${plan}`, { token: t.readToken })).body;
  const eventKinds = async (plan: string) =>
    (await t.call('GET', `/api/v1/deployment-plans/${plan}/events`, { token: t.readToken })).body.events.map(
      (e: { kind: string; deviceName?: string }) => `${e.kind}${e.deviceName ? `:${e.deviceName}` : ''}`,
    );

  beforeAll(async () => {
    if (!fixture.available) return;
    t = await startTestServer({
      database: await fixture.createLocation(),
      config: { packaging: { pollIntervalMs: 50 }, deployments: { sweepIntervalMs: 3_600_000 } },
    });
    for (const fleet of ['f', 'g']) {
      await admin('POST', '/api/v1/fleets', {
        name: fleet,
        outputConfig: { s3OutputLocation: `s3://c/${fleet}` },
      });
    }
    await admin('POST', '/api/v1/fleets/f/devices', {
      devices: [{ name: 'd1' }, { name: 'd4' }, { name: 'd5' }, { name: 'd6' }],
    });
    await admin('POST', '/api/v1/fleets/f/devices', {
      devices: [{ name: 'd2' }, { name: 'd3' }],
      tags: [{ key: 'site', value: 'berlin' }],
    });
    await admin('POST', '/api/v1/fleets/g/devices', { devices: [{ name: 'g1' }] });
    for (const name of ['d1', 'd2', 'd3', 'g1']) devices.set(name, await enrollDevice(t, name));
    const bytes = await readFile(tinyOnnx);
    for (const version of ['1.0', '1.1']) {
      await fetch(`${t.url}/api/v1/models/tiny/versions/${version}`, {
        method: 'POST',
        headers: { authorization: `Bearer ${t.adminToken}`, 'content-type': 'application/octet-stream' },
        body: bytes,
      });
      const job = `pack-v${version.replace('.', '-')}`;
      await admin('POST', '/api/v1/packaging-jobs', { name: job, modelName: 'tiny', modelVersion: version });
      for (let i = 0; i < 600; i++) {
        const state = await t.call('GET', `/api/v1/packaging-jobs/${job}`, { token: t.readToken });
        if (state.body.status === 'COMPLETED') break;
        if (state.body.status === 'FAILED') throw new Error(JSON.stringify(state.body));
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    }
  });
  afterAll(() => t?.stop());

  it.skipIf(!fixture.available)(
    'a fleet delete blocked by deployment plans names them, not devices (F-fleet-delete-msg)',
    async () => {
      await admin('POST', '/api/v1/fleets', {
        name: 'planned',
        outputConfig: { s3OutputLocation: 's3://c/p' },
      });
      // One unfinished plan per model handle and fleet: two handles.
      for (const [name, handle] of [
        ['planned-b', 'classifier'],
        ['planned-a', 'detector'],
      ]) {
        const plan = await admin('POST', '/api/v1/deployment-plans', {
          name,
          fleetName: 'planned',
          modelConfigs: [{ modelHandle: handle, packagingJobName: 'pack-v1-0' }],
          stages: [{ name: 'all', deviceSelection: { subsetType: 'PERCENTAGE', percentage: 100 } }],
        });
        expect(plan.status, JSON.stringify(plan.body)).toBe(201);
      }
      expect(await admin('DELETE', '/api/v1/fleets/planned')).toMatchObject({
        status: 409,
        body: {
          code: 'ResourceInUse',
          message: 'fleet planned has deployment plan(s) planned-a, planned-b; delete them first',
          details: { deploymentPlans: ['planned-a', 'planned-b'] },
        },
      });
      for (const name of ['planned-a', 'planned-b'])
        expect((await admin('DELETE', `/api/v1/deployment-plans/${name}`)).status).toBe(204);
      expect((await admin('DELETE', '/api/v1/fleets/planned')).status).toBe(204);
    },
  );

  it.skipIf(!fixture.available)(
    'rolls a plan out stage by stage: snapshot, GetDeployments, resumable download, results, counts, events',
    async () => {
      const created = await admin('POST', '/api/v1/deployment-plans', {
        name: 'p1',
        fleetName: 'f',
        modelConfigs: [{ modelHandle: 'classifier', packagingJobName: 'pack-v1-0' }],
        stages: [
          { name: 'canary', deviceSelection: { subsetType: 'SELECTION', deviceNames: ['d1'] } },
          { name: 'rest', deviceSelection: { subsetType: 'PERCENTAGE', percentage: 100 } },
        ],
      });
      expect(created.status).toBe(201);
      expect(created.body.stages.map((s: { status: string }) => s.status)).toEqual([
        'READYTODEPLOY',
        'READYTODEPLOY',
      ]);
      // Nothing started: no device has anything to do.
      expect(await getDeployments('d1')).toEqual({ Deployments: [] });
      // Stages start in order.
      expect((await admin('POST', '/api/v1/deployment-plans/p1/stages/rest/start')).status).toBe(409);

      const started = await admin('POST', '/api/v1/deployment-plans/p1/stages/canary/start');
      expect(started.body.stages[0]).toMatchObject({ status: 'INPROGRESS', pendingCount: 1 });
      expect((await stageDevices('p1', 'canary'))[0]).toMatchObject({
        deviceName: 'd1',
        status: 'READYTODEPLOY',
      });
      expect(await getDeployments('d2')).toEqual({ Deployments: [] });

      const job = (await t.call('GET', '/api/v1/packaging-jobs/pack-v1-0', { token: t.readToken })).body;
      const desired = await getDeployments('d1');
      expect(desired.Deployments).toEqual([
        {
          DeploymentName: 'p1',
          Type: 'Model',
          FailureHandlingPolicy: 'ROLLBACK_ON_FAILURE',
          Definitions: [
            {
              ModelHandle: 'classifier',
              State: 'DEPLOY',
              ModelName: 'tiny',
              ModelVersion: '1.0',
              PackageUrl: '/api/v1/device/packages/pack-v1-0',
              Sha256: job.artifact.sha256,
              Size: job.artifact.sizeBytes,
            },
          ],
        },
      ]);
      // Asking took it: in progress, first attempt.
      expect((await stageDevices('p1', 'canary'))[0]).toMatchObject({ status: 'INPROGRESS', attempts: 1 });

      // The package downloads in two pieces (a resumed download) and matches the announced SHA-256.
      const tls = devices.get('d1')!.tls;
      const url = '/api/v1/device/packages/pack-v1-0';
      const head = await download(t.server.deviceUrl, tls, url, { range: 'bytes=0-99' });
      expect(head.status).toBe(206);
      expect(head.headers['content-range']).toBe(`bytes 0-99/${job.artifact.sizeBytes}`);
      expect(head.bytes.length).toBe(100);
      const tail = await download(t.server.deviceUrl, tls, url, {
        range: 'bytes=100-',
        'if-range': String(head.headers.etag),
      });
      expect(tail.status).toBe(206);
      const whole = Buffer.concat([head.bytes, tail.bytes]);
      expect(createHash('sha256').update(whole).digest('hex')).toBe(job.artifact.sha256);
      const full = await download(t.server.deviceUrl, tls, url);
      expect(full.status).toBe(200);
      expect(full.bytes.equals(whole)).toBe(true);
      // A stale If-Range gets the whole (new) file; a range past the end is 416 with the size.
      expect(
        (await download(t.server.deviceUrl, tls, url, { range: 'bytes=100-', 'if-range': '"old"' })).status,
      ).toBe(200);
      const beyond = await download(t.server.deviceUrl, tls, url, {
        range: `bytes=${job.artifact.sizeBytes}-`,
      });
      expect(beyond.status).toBe(416);
      expect(beyond.headers['content-range']).toBe(`bytes */${job.artifact.sizeBytes}`);
      // Another fleet's device may not download this fleet's package.
      expect((await download(t.server.deviceUrl, devices.get('g1')!.tls, url)).status).toBe(403);

      await heartbeat('d1', success('p1'));
      expect((await describePlan('p1')).stages[0]).toMatchObject({
        status: 'DEPLOYED',
        successCount: 1,
        pendingCount: 0,
      });

      // The second stage picks from the devices not yet targeted: every one but d1.
      await admin('POST', '/api/v1/deployment-plans/p1/stages/rest/start');
      expect((await stageDevices('p1', 'rest')).map((d) => d.deviceName)).toEqual([
        'd2',
        'd3',
        'd4',
        'd5',
        'd6',
      ]);
      await getDeployments('d2');
      await heartbeat('d2', success('p1'));
      await getDeployments('d3');
      // The result also has a call of its own, which takes a result as large as SendHeartbeat does (here over the
      // device port's default body limit of 64 KiB: reasons of 4096 characters for 20 models).
      const large = success('p1');
      large.DeploymentModels!.push(
        ...Array.from({ length: 20 }, (_, i) => ({
          ModelHandle: `other-${i}`,
          Status: 'SUCCESS' as const,
          StatusReason: 'r'.repeat(4096),
        })),
      );
      const own = await deviceCall(
        t.server.deviceUrl,
        devices.get('d3')!.tls,
        'POST',
        '/api/v1/device/deployments/result',
        {
          body: { DeviceName: 'd3', DeviceFleetName: 'f', DeploymentResult: large },
        },
      );
      expect(own.status).toBe(200);
      // d4-d6 never asked: pending (READYTODEPLOY, no last-seen time), never "in progress".
      const rest = await stageDevices('p1', 'rest');
      expect(rest.map((d) => [d.deviceName, d.status])).toEqual([
        ['d2', 'DEPLOYED'],
        ['d3', 'DEPLOYED'],
        ['d4', 'READYTODEPLOY'],
        ['d5', 'READYTODEPLOY'],
        ['d6', 'READYTODEPLOY'],
      ]);
      expect(rest[0]?.lastSeenAt).toBeDefined();
      expect(rest[2]?.lastSeenAt).toBeUndefined();
      expect(await describePlan('p1')).toMatchObject({ successCount: 3, pendingCount: 3, failedCount: 0 });

      // While p1 rolls out "classifier" to f, another plan for it there is a clear 409; on fleet g it is fine.
      const clash = await admin('POST', '/api/v1/deployment-plans', {
        name: 'p2',
        fleetName: 'f',
        modelConfigs: [{ modelHandle: 'classifier', packagingJobName: 'pack-v1-1' }],
      });
      expect(clash).toMatchObject({ status: 409, body: { code: 'Conflict', details: { plan: 'p1' } } });

      // Stopping: the devices that never started are not started; the stage ends STOPPED.
      const stopped = await admin('POST', '/api/v1/deployment-plans/p1/stages/rest/stop');
      expect(stopped.body.stages[1]).toMatchObject({ status: 'STOPPED', successCount: 2, stoppedCount: 3 });
      // Every device's deployment has ended, the stopped ones' too (then, at the latest).
      const afterStop = await stageDevices('p1', 'rest');
      expect(afterStop.map((d) => [d.deviceName, d.status])).toEqual([
        ['d2', 'DEPLOYED'],
        ['d3', 'DEPLOYED'],
        ['d4', 'STOPPED'],
        ['d5', 'STOPPED'],
        ['d6', 'STOPPED'],
      ]);
      for (const device of afterStop) {
        expect(device.endedAt, device.deviceName).toBeDefined();
        expect(Date.parse(device.endedAt!)).toBeLessThanOrEqual(Date.parse(stopped.body.stages[1].endedAt));
      }
      devices.set('d4', await enrollDevice(t, 'd4'));
      expect(await getDeployments('d4')).toEqual({ Deployments: [] });
      expect(await eventKinds('p1')).toEqual([
        'PlanCreated',
        'StageStarted',
        'StageDeployed',
        'StageStarted',
        'StageStopped',
      ]);
    },
  );

  it.skipIf(!fixture.available)(
    'retries a failed device, then fails it (with rollback), and times out a silent one',
    async () => {
      const created = await admin('POST', '/api/v1/deployment-plans', {
        name: 'p2',
        fleetName: 'f',
        modelConfigs: [{ modelHandle: 'classifier', packagingJobName: 'pack-v1-1' }],
        stages: [{ name: 's1', deviceSelection: { subsetType: 'SELECTION', deviceNames: ['d1', 'd2'] } }],
        options: { maxRetries: 1, deviceTimeoutSeconds: 60 },
      });
      expect(created.status).toBe(201);
      await admin('POST', '/api/v1/deployment-plans/p2/stages/s1/start');
      // The later plan wins the handle: d1 is told version 1.1 only.
      const desired = await getDeployments('d1');
      expect(desired.Deployments.map((d) => [d.DeploymentName, d.Definitions[0]?.ModelVersion])).toEqual([
        ['p2', '1.1'],
      ]);
      await heartbeat('d1', failure('p2', 'warm-up failed'));
      let d1 = (await stageDevices('p2', 's1'))[0]!;
      expect(d1).toMatchObject({ status: 'READYTODEPLOY', attempts: 1 });
      expect(d1.statusMessage).toMatch(/attempt 1 failed: .*warm-up failed; retrying/);
      // Heartbeats repeat the last result: the same report again is not a second failure.
      await heartbeat('d1', failure('p2', 'warm-up failed'));
      expect((await stageDevices('p2', 's1'))[0]).toMatchObject({ status: 'READYTODEPLOY', attempts: 1 });
      await getDeployments('d1');
      await heartbeat('d1', failure('p2', 'health window: 3 inference errors'));
      d1 = (await stageDevices('p2', 's1'))[0]!;
      expect(d1).toMatchObject({ status: 'FAILED', attempts: 2 });
      expect(d1.statusMessage).toContain('health window: 3 inference errors');
      // A failed device falls back to what the earlier plan gave it.
      expect(
        (await getDeployments('d1')).Deployments.map((d) => [
          d.DeploymentName,
          d.Definitions[0]?.ModelVersion,
        ]),
      ).toEqual([['p1', '1.0']]);

      // d2 takes it; its application holds the update lock, so it reports HELD: held, not timed out.
      await getDeployments('d2');
      await heartbeat('d2', {
        DeploymentName: 'p2',
        DeploymentStatus: 'HELD',
        DeploymentStatusMessage: 'the update lock is held',
      });
      let clock = Date.now() + 61_000;
      const sweeper = new DeploymentService(t.server.database.db, {
        engine: t.server.database.engine,
        packagingJobs: t.server.services.packagingJobs,
        models: t.server.services.models,
        now: () => clock,
      });
      expect(await sweeper.sweep()).toEqual({ timedOut: 0, unreadablePlans: [] });
      expect((await stageDevices('p2', 's1'))[1]).toMatchObject({
        deviceName: 'd2',
        status: 'INPROGRESS',
        statusMessage: 'HELD: the update lock is held',
      });
      // Released, it works on the update and goes silent: a sweep after the timeout retries it, a second one
      // fails it.
      await heartbeat('d2', { DeploymentName: 'p2', DeploymentStatus: 'INPROGRESS' });
      expect(await sweeper.sweep()).toEqual({ timedOut: 1, unreadablePlans: [] });
      expect((await stageDevices('p2', 's1'))[1]).toMatchObject({
        deviceName: 'd2',
        status: 'READYTODEPLOY',
      });
      expect(await sweeper.sweep()).toEqual({ timedOut: 0, unreadablePlans: [] });
      await getDeployments('d2');
      clock = Date.now() + 61_000;
      expect(await sweeper.sweep()).toEqual({ timedOut: 1, unreadablePlans: [] });
      const d2 = (await stageDevices('p2', 's1'))[1]!;
      expect(d2).toMatchObject({ status: 'FAILED', attempts: 2 });
      expect(d2.statusMessage).toMatch(/^timed out: no result within 60 s/);
      const plan = await describePlan('p2');
      expect(plan.stages[0]).toMatchObject({
        status: 'FAILED',
        failedCount: 2,
        statusMessage: '2 of 2 device(s) failed',
      });
      expect(await eventKinds('p2')).toEqual([
        'PlanCreated',
        'StageStarted',
        'DeviceRetried:d1',
        'DeviceFailed:d1',
        'DeviceRolledBack:d1',
        'DeviceRetried:d2',
        'DeviceTimedOut:d2',
        'StageFailed',
      ]);
    },
  );

  it.skipIf(!fixture.available)(
    'aborts a stage when failures pass the threshold (tags narrow the selection)',
    async () => {
      await admin('POST', '/api/v1/deployment-plans', {
        name: 'p3',
        fleetName: 'f',
        modelConfigs: [{ modelHandle: 'detector', packagingJobName: 'pack-v1-0' }],
        stages: [
          {
            name: 'berlin',
            deviceSelection: { subsetType: 'PERCENTAGE', percentage: 100, tags: { site: 'berlin' } },
            failureHandlingPolicy: 'DO_NOTHING',
          },
        ],
        options: { maxRetries: 0, abort: { failedCount: 1 } },
      });
      await admin('POST', '/api/v1/deployment-plans/p3/stages/berlin/start');
      expect((await stageDevices('p3', 'berlin')).map((d) => d.deviceName)).toEqual(['d2', 'd3']);
      expect((await getDeployments('d2')).Deployments.find((d) => d.DeploymentName === 'p3')).toMatchObject({
        FailureHandlingPolicy: 'DO_NOTHING',
      });
      await heartbeat('d2', {
        ...failure('p3', 'bad checksum'),
        DeploymentModels: [{ ModelHandle: 'detector', Status: 'FAIL', StatusReason: 'bad checksum' }],
      });
      const plan = await describePlan('p3');
      expect(plan.stages[0].status).toBe('FAILED');
      expect(plan.stages[0].statusMessage).toMatch(/^aborted: 1 of 1 finished device\(s\) failed/);
      const berlin = await stageDevices('p3', 'berlin');
      expect(berlin[1]).toMatchObject({ deviceName: 'd3', status: 'STOPPED' });
      // Aborting ended d3's deployment when it ended the stage.
      expect(berlin[1]!.endedAt).toBe(plan.stages[0].endedAt);
      expect(await eventKinds('p3')).toContain('StageAborted');
    },
  );

  it.skipIf(!fixture.available)(
    'advances automatically, undeploys, and gives a completed plan to devices that join later only',
    async () => {
      await admin('POST', '/api/v1/deployment-plans', {
        name: 'pg',
        fleetName: 'g',
        modelConfigs: [
          { modelHandle: 'classifier', packagingJobName: 'pack-v1-1' },
          { modelHandle: 'legacy', state: 'UNDEPLOY' },
        ],
        stages: [
          { name: 'first', deviceSelection: { subsetType: 'NAMECONTAINS', deviceNameContains: 'G1' } },
          { name: 'all', deviceSelection: { subsetType: 'PERCENTAGE', percentage: 100 } },
        ],
        options: { autoAdvance: { successPercent: 100 } },
      });
      await admin('POST', '/api/v1/deployment-plans/pg/stages/first/start');
      // g2 registers while the rollout is under way: it is not silently added.
      await admin('POST', '/api/v1/fleets/g/devices', { devices: [{ name: 'g2' }] });
      devices.set('g2', await enrollDevice(t, 'g2'));
      expect(await getDeployments('g2')).toEqual({ Deployments: [] });
      const desired = await getDeployments('g1');
      expect(desired.Deployments[0]?.Definitions).toEqual([
        expect.objectContaining({ ModelHandle: 'classifier', State: 'DEPLOY', ModelVersion: '1.1' }),
        { ModelHandle: 'legacy', State: 'UNDEPLOY' },
      ]);
      await heartbeat('g1', success('pg'));
      // Stage "first" reached 100 %: "all" started by itself, with g2 (the only device not yet targeted).
      const plan = await describePlan('pg');
      expect(plan.stages.map((s: { status: string }) => s.status)).toEqual(['DEPLOYED', 'INPROGRESS']);
      expect((await stageDevices('pg', 'all')).map((d) => d.deviceName)).toEqual(['g2']);
      await getDeployments('g2');
      await heartbeat('g2', success('pg'));
      expect((await describePlan('pg')).stages[1].status).toBe('DEPLOYED');
      // The plan is complete: a device that joins now gets the fleet's current models (continuous).
      await admin('POST', '/api/v1/fleets/g/devices', { devices: [{ name: 'g3' }] });
      devices.set('g3', await enrollDevice(t, 'g3'));
      expect((await getDeployments('g3')).Deployments.map((d) => d.DeploymentName)).toEqual(['pg']);
      // The plan's handles are free again on g.
      const next = await admin('POST', '/api/v1/deployment-plans', {
        name: 'pg2',
        fleetName: 'g',
        modelConfigs: [{ modelHandle: 'classifier', packagingJobName: 'pack-v1-0' }],
        options: { allowDowngrade: true },
      });
      expect(next.status).toBe(201);
      expect(await eventKinds('pg')).toEqual([
        'PlanCreated',
        'StageStarted',
        'StageDeployed',
        'StageStarted',
        'StageDeployed',
      ]);
    },
  );

  it.skipIf(!fixture.available)(
    'refuses bad plans clearly and lets a device ask only for itself',
    async () => {
      const bad = await admin('POST', '/api/v1/deployment-plans', {
        name: 'bad',
        fleetName: 'f',
        modelConfigs: [{ modelHandle: 'x' }],
        stages: [{ name: 's', deviceSelection: { subsetType: 'PERCENTAGE' } }],
      });
      expect(bad.status).toBe(400);
      expect(JSON.stringify(bad.body)).toContain('packagingJobName');
      expect(JSON.stringify(bad.body)).toContain('percentage');
      expect(
        await admin('POST', '/api/v1/deployment-plans', {
          name: 'nofleet',
          fleetName: 'nope',
          modelConfigs: [{ modelHandle: 'x', packagingJobName: 'pack-v1-0' }],
        }),
      ).toMatchObject({ status: 404 });
      expect(
        await admin('POST', '/api/v1/deployment-plans', {
          name: 'nojob',
          fleetName: 'f',
          modelConfigs: [{ modelHandle: 'x', packagingJobName: 'no-such-job' }],
        }),
      ).toMatchObject({ status: 404 });
      const other = await deviceCall(t.server.deviceUrl, devices.get('d1')!.tls, 'POST', '/GetDeployments', {
        body: { DeviceName: 'd2', DeviceFleetName: 'f' },
      });
      expect(other.status).toBe(403);
      // An unfinished stage's plan cannot be deleted; a finished one can, with its rows.
      expect((await admin('DELETE', '/api/v1/deployment-plans/p3')).status).toBe(204);
      expect((await t.call('GET', '/api/v1/deployment-plans/p3', { token: t.readToken })).status).toBe(404);
      const listed = await t.call('GET', '/api/v1/deployment-plans?fleetName=f', { token: t.readToken });
      expect(listed.body.plans.map((p: { name: string }) => p.name)).toEqual(['p1', 'p2']);
    },
  );

  it.skipIf(!fixture.available)(
    'adds and deletes stages, cancels one device at any time, and ignores its late report',
    async () => {
      await admin('POST', '/api/v1/deployment-plans', {
        name: 'p5',
        fleetName: 'f',
        modelConfigs: [{ modelHandle: 'extra', packagingJobName: 'pack-v1-0' }],
      });
      const added = await admin('POST', '/api/v1/deployment-plans/p5/stages', {
        stages: [
          { name: 's1', deviceSelection: { subsetType: 'SELECTION', deviceNames: ['d1'] } },
          { name: 's2', deviceSelection: { subsetType: 'SELECTION', deviceNames: ['d2'] } },
        ],
      });
      expect(added.status).toBe(201);
      expect((await admin('DELETE', '/api/v1/deployment-plans/p5/stages/s2')).body.stages).toHaveLength(1);
      await admin('POST', '/api/v1/deployment-plans/p5/stages/s1/start');
      expect((await admin('DELETE', '/api/v1/deployment-plans/p5/stages/s1')).status).toBe(409);
      expect((await admin('DELETE', '/api/v1/deployment-plans/p5')).status).toBe(409);
      expect((await getDeployments('d1')).Deployments.map((d) => d.DeploymentName)).toContain('p5');

      const cancelled = await admin('POST', '/api/v1/deployment-plans/p5/devices/d1/cancel');
      expect(cancelled.body).toMatchObject({ status: 'STOPPED', statusMessage: 'cancelled by an operator' });
      expect((await getDeployments('d1')).Deployments.map((d) => d.DeploymentName)).not.toContain('p5');
      await heartbeat('d1', success('p5', 'extra'));
      expect((await stageDevices('p5', 's1'))[0]).toMatchObject({ status: 'STOPPED' });
      expect((await describePlan('p5')).stages[0]).toMatchObject({ status: 'STOPPED', stoppedCount: 1 });
      expect((await admin('POST', '/api/v1/deployment-plans/p5/devices/d1/cancel')).status).toBe(409);
      expect(await eventKinds('p5')).toEqual([
        'PlanCreated',
        'StageStarted',
        'DeviceCancelled:d1',
        'StageStopped',
      ]);
    },
  );

  it.skipIf(!fixture.available)(
    'stopping a stage counts its cancelled devices as cancelled, not as not started',
    async () => {
      await admin('POST', '/api/v1/fleets/f/devices', { devices: [{ name: 'd9' }] });
      await admin('POST', '/api/v1/deployment-plans', {
        name: 'p9',
        fleetName: 'f',
        modelConfigs: [{ modelHandle: 'stopper', packagingJobName: 'pack-v1-0' }],
        stages: [
          { name: 's1', deviceSelection: { subsetType: 'SELECTION', deviceNames: ['d4', 'd5', 'd6', 'd9'] } },
        ],
      });
      await admin('POST', '/api/v1/deployment-plans/p9/stages/s1/start');
      // One cancelled by an operator, one by its deregistration; the other two never started.
      expect((await admin('POST', '/api/v1/deployment-plans/p9/devices/d5/cancel')).status).toBe(200);
      expect((await admin('DELETE', '/api/v1/devices/d9')).status).toBe(204);
      const stopped = await admin('POST', '/api/v1/deployment-plans/p9/stages/s1/stop');
      expect(stopped.body.stages[0]).toMatchObject({
        status: 'STOPPED',
        stoppedCount: 4,
        statusMessage: 'stopped: 0 deployed, 0 failed, 2 cancelled, 2 not started',
      });
      // Why each stopped is recorded with it (the count above is taken from it, not from their messages).
      expect(
        (await stageDevices('p9', 's1')).map((d) => [d.deviceName, d.status, d.stopReason, d.statusMessage]),
      ).toEqual([
        ['d4', 'STOPPED', 'stage-stopped', 'not started: the stage was stopped'],
        ['d5', 'STOPPED', 'cancelled', 'cancelled by an operator'],
        ['d6', 'STOPPED', 'stage-stopped', 'not started: the stage was stopped'],
        ['d9', 'STOPPED', 'deregistered', 'cancelled: device d9 was deregistered'],
      ]);
      // A reason this server does not know (a newer replica's, in a rolling upgrade) shows as unknown; the
      // list, and the other devices in it, still answer.
      await t.server.database.db
        .updateTable('deployment_targets')
        .set({ stop_reason: 'reason-of-a-newer-server' })
        .where('plan_name', '=', 'p9')
        .where('device_name', '=', 'd6')
        .execute();
      expect((await stageDevices('p9', 's1')).map((d) => [d.deviceName, d.stopReason])).toEqual([
        ['d4', 'stage-stopped'],
        ['d5', 'cancelled'],
        ['d6', 'unknown'],
        ['d9', 'deregistered'],
      ]);
    },
  );

  it.skipIf(!fixture.available)(
    'deploys an uploaded package, downloadable only by the fleet it is deployed to',
    async () => {
      const pkgDir = path.join(work, `pkg-${fixture.engine}`);
      await createModelPackage({ modelPath: tinyOnnx, name: 'uploaded', version: '7', outDir: pkgDir });
      const archive = path.join(work, `uploaded-${fixture.engine}.tar.gz`);
      await packModelPackage(pkgDir, archive);
      const bytes = await readFile(archive);
      const upload = (name: string, version: string, body: Buffer, type: string) =>
        fetch(`${t.url}/api/v1/models/${name}/versions/${version}`, {
          method: 'POST',
          headers: { authorization: `Bearer ${t.adminToken}`, 'content-type': type },
          body,
        });
      expect((await upload('uploaded', '7', bytes, 'application/gzip')).status).toBe(201);
      const url = '/api/v1/device/model-packages/uploaded/7';
      expect((await download(t.server.deviceUrl, devices.get('g1')!.tls, url)).status).toBe(403);
      // An ONNX upload is not a package: it needs a packaging job.
      expect(
        await admin('POST', '/api/v1/deployment-plans', {
          name: 'pu-onnx',
          fleetName: 'g',
          modelConfigs: [{ modelHandle: 'up', modelName: 'tiny', modelVersion: '1.0' }],
        }),
      ).toMatchObject({ status: 409, body: { message: expect.stringMatching(/uploaded as ONNX/) } });
      const created = await admin('POST', '/api/v1/deployment-plans', {
        name: 'pu',
        fleetName: 'g',
        modelConfigs: [{ modelHandle: 'up', modelName: 'uploaded', modelVersion: '7' }],
        stages: [{ name: 'all', deviceSelection: { subsetType: 'PERCENTAGE', percentage: 100 } }],
      });
      expect(created.status).toBe(201);
      await admin('POST', '/api/v1/deployment-plans/pu/stages/all/start');
      const definition = (await getDeployments('g1')).Deployments.find((d) => d.DeploymentName === 'pu')
        ?.Definitions[0];
      const sha256 = createHash('sha256').update(bytes).digest('hex');
      expect(definition).toMatchObject({
        ModelName: 'uploaded',
        ModelVersion: '7',
        PackageUrl: url,
        Sha256: sha256,
      });
      const tail = await download(t.server.deviceUrl, devices.get('g1')!.tls, url, { range: 'bytes=10-' });
      expect(tail.status).toBe(206);
      expect(tail.bytes.equals(bytes.subarray(10))).toBe(true);
      // Fleet f has no plan with it.
      expect((await download(t.server.deviceUrl, devices.get('d1')!.tls, url)).status).toBe(403);
      // No spelling of a path that climbs out of the package routes reaches a package.
      for (const climbing of [
        '/api/v1/device/model-packages/uploaded/..',
        '/api/v1/device/model-packages/uploaded/%2e%2e',
        '/api/v1/device/model-packages/..%2Fuploaded/7',
        '/api/v1/device/model-packages/uploaded/7%2F..',
        '/api/v1/device/packages/..',
        '/api/v1/device/packages/%2E%2E',
      ]) {
        const refused = await download(t.server.deviceUrl, devices.get('g1')!.tls, climbing);
        expect(refused.status, climbing).toBe(400);
        expect(JSON.parse(refused.bytes.toString()), climbing).toMatchObject({ code: 'ValidationError' });
      }
    },
  );

  it.skipIf(!fixture.available)(
    "replaces a plan's tags (the SageMaker facade's AddTags/DeleteTags), refusing bad tags and unknown plans",
    async () => {
      const created = await admin('POST', '/api/v1/deployment-plans', {
        name: 'tagged',
        fleetName: 'g',
        modelConfigs: [{ modelHandle: 'tagged-handle', packagingJobName: 'pack-v1-0' }],
        tags: [{ key: 'team', value: 'vision' }],
      });
      expect(created.status).toBe(201);
      const service = new DeploymentService(t.server.database.db, {
        engine: t.server.database.engine,
        packagingJobs: t.server.services.packagingJobs,
        models: t.server.services.models,
      });
      const tagged = await service.setPlanTags('tagged', [{ key: 'env', value: 'prod' }]);
      expect(tagged.tags).toEqual([{ key: 'env', value: 'prod' }]);
      expect((await describePlan('tagged')).tags).toEqual([{ key: 'env', value: 'prod' }]);
      await expect(
        service.setPlanTags('tagged', [
          { key: 'a', value: '1' },
          { key: 'a', value: '2' },
        ]),
      ).rejects.toMatchObject({ code: 'ValidationError' });
      await expect(service.setPlanTags('no-such-plan', [])).rejects.toMatchObject({ code: 'NotFound' });
      expect((await describePlan('tagged')).tags).toEqual([{ key: 'env', value: 'prod' }]);
      expect((await admin('DELETE', '/api/v1/deployment-plans/tagged')).status).toBe(204);
    },
  );

  it.skipIf(!fixture.available)(
    "caps a stage's tag selection: entries, key and value lengths, on plan creation and on added stages",
    async () => {
      const tags = (count: number, key = (i: number) => `k${i}`, value = 'v') =>
        Object.fromEntries(Array.from({ length: count }, (_, i) => [key(i), value]));
      const stageWith = (name: string, selectionTags: Record<string, string>) => ({
        name,
        deviceSelection: { subsetType: 'PERCENTAGE', percentage: 100, tags: selectionTags },
      });
      const refused: Array<[Record<string, string>, RegExp]> = [
        [
          tags(MAX_SELECTION_TAGS + 1),
          new RegExp(`at most ${MAX_SELECTION_TAGS} tags; got ${MAX_SELECTION_TAGS + 1}`),
        ],
        [tags(10_000), /at most 50 tags; got 10000/],
        [{ ['k'.repeat(129)]: 'v' }, /expected tag keys of 1-128 letters/],
        [{ site: 'v'.repeat(257) }, /tags\.site: Too big: expected string to have <=256 characters/],
        [{ 'bad\u0001key': 'v' }, /expected tag keys of 1-128 letters/],
      ];
      for (const [selectionTags, message] of refused) {
        const created = await admin('POST', '/api/v1/deployment-plans', {
          name: 'tag-capped',
          fleetName: 'g',
          modelConfigs: [{ modelHandle: 'tag-capped-handle', packagingJobName: 'pack-v1-0' }],
          stages: [stageWith('s', selectionTags)],
        });
        expect(created.status).toBe(400);
        expect(created.body).toMatchObject({
          code: 'ValidationError',
          message: expect.stringMatching(message),
        });
      }
      const created = await admin('POST', '/api/v1/deployment-plans', {
        name: 'tag-capped',
        fleetName: 'g',
        modelConfigs: [{ modelHandle: 'tag-capped-handle', packagingJobName: 'pack-v1-0' }],
        stages: [
          stageWith(
            's',
            tags(MAX_SELECTION_TAGS, (i) => `${'k'.repeat(120)}${i}`, 'v'.repeat(256)),
          ),
        ],
      });
      expect(created.status).toBe(201);
      for (const [selectionTags, message] of refused) {
        const added = await admin('POST', '/api/v1/deployment-plans/tag-capped/stages', {
          stages: [stageWith('more', selectionTags)],
        });
        expect(added.status).toBe(400);
        expect(added.body.message).toMatch(message);
      }
      // The in-process API refuses the same (the SageMaker facade and the console go through it).
      const service = new DeploymentService(t.server.database.db, {
        engine: t.server.database.engine,
        packagingJobs: t.server.services.packagingJobs,
        models: t.server.services.models,
      });
      await expect(
        service.addStages('tag-capped', [stageWith('more', tags(MAX_SELECTION_TAGS + 1))] as never),
      ).rejects.toMatchObject({ code: 'ValidationError' });
      expect((await describePlan('tag-capped')).stages).toHaveLength(1);
      expect((await admin('DELETE', '/api/v1/deployment-plans/tag-capped')).status).toBe(204);
    },
  );

  it.skipIf(!fixture.available)(
    'keeps a plan within its stage limit when stages are added later',
    async () => {
      const stage = (name: string) => ({
        name,
        deviceSelection: { subsetType: 'PERCENTAGE', percentage: 100 },
      });
      const full = Array.from({ length: MAX_STAGES }, (_, i) => stage(`s${i}`));
      const created = await admin('POST', '/api/v1/deployment-plans', {
        name: 'capped',
        fleetName: 'g',
        modelConfigs: [{ modelHandle: 'capped-handle', packagingJobName: 'pack-v1-0' }],
        stages: full,
      });
      expect(created.status).toBe(201);
      // One more, once at the limit, or many at once: refused, and the plan keeps its stages.
      for (const stages of [
        [stage('one-more')],
        Array.from({ length: MAX_STAGES }, (_, i) => stage(`x${i}`)),
      ]) {
        const added = await admin('POST', '/api/v1/deployment-plans/capped/stages', { stages });
        expect(added.status).toBe(400);
        expect(added.body.message).toMatch(new RegExp(`at most ${MAX_STAGES} stages`));
      }
      expect((await describePlan('capped')).stages).toHaveLength(MAX_STAGES);
      expect((await admin('DELETE', '/api/v1/deployment-plans/capped')).status).toBe(204);
    },
  );
  it.skipIf(!fixture.available)(
    'decides a package download by the exact name in a plan, whatever else a plan mentions',
    async () => {
      // The database narrows a fleet's plans by the name's text before the configs are parsed and checked:
      // a name that appears as another field, a prefix, another case or a LIKE wildcard must not count.
      await admin('POST', '/api/v1/fleets', { name: 'h', outputConfig: { s3OutputLocation: 's3://c/h' } });
      const service = new DeploymentService(t.server.database.db, {
        engine: t.server.database.engine,
        packagingJobs: t.server.services.packagingJobs,
        models: t.server.services.models,
      });
      expect(await service.isDeployable('pack-v1-0', 'h')).toBe(false);
      const created = await admin('POST', '/api/v1/deployment-plans', {
        name: 'exact',
        fleetName: 'h',
        modelConfigs: [
          { modelHandle: 'pack-v1-1', packagingJobName: 'pack-v1-0' },
          { modelHandle: 'tiny', modelName: 'uploaded', modelVersion: '7' },
        ],
      });
      expect(created.status).toBe(201);
      expect(await service.isDeployable('pack-v1-0', 'h')).toBe(true);
      expect(await service.isDeployable('pack-v1-0', 'g')).toBe(true); // its own plans
      for (const other of ['pack-v1-1', 'pack-v1', 'PACK-V1-0', 'pack_v1-0', 'pack%', 'tiny', 'uploaded'])
        expect(await service.isDeployable(other, 'h'), other).toBe(false);
      expect(await service.isUploadedPackageDeployable('uploaded', '7', 'h')).toBe(true);
      expect(await service.isUploadedPackageDeployable('uploaded', '7.0', 'h')).toBe(false);
      expect(await service.isUploadedPackageDeployable('tiny', '7', 'h')).toBe(false);
      expect(await service.isUploadedPackageDeployable('UPLOADED', '7', 'h')).toBe(false);
      expect((await admin('DELETE', '/api/v1/deployment-plans/exact')).status).toBe(204);
      expect(await service.isDeployable('pack-v1-0', 'h')).toBe(false);
    },
  );
});
