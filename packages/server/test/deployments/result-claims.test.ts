/**
 * What a device's DeploymentResult may still change (docs/security.md, "a compromised device"), through the real
 * device API (mutual TLS): a failure from before the attempt the server handed out (a replay, an earlier
 * attempt's) is left out, logged, whether on the result call or in a heartbeat, while an honest device whose clock
 * lags within heartbeat.maxClockSkewSeconds still fails its attempt; and a result naming a plan that is not one of
 * the device's fleet's is neither applied nor kept as its last result.
 */
import { Writable } from 'node:stream';
import type { DeploymentResult } from '@edgefleet/core';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FleetEventLog } from '../../src/audit/index.js';
import { DeploymentService } from '../../src/deployments/index.js';
import { adminCalls, undeployResult } from '../support/deployment-calls.js';
import { deviceCall } from '../support/device.js';
import { databaseEngines } from '../support/engines.js';
import { enrollDevice, startTestServer, type EnrolledDevice, type TestServer } from '../support/server.js';

const engines = await databaseEngines();
/** 2017-07-14, in seconds as the agent sends it: years before any attempt of these tests. */
const LONG_AGO = 1_500_000_000;

describe.each(engines)('what a device result may change on $engine', (fixture) => {
  let t: TestServer;
  const { admin, register } = adminCalls(() => t);
  const devices = new Map<string, EnrolledDevice>();
  const logLines: string[] = [];

  beforeAll(async () => {
    if (!fixture.available) return;
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        logLines.push(...chunk.toString('utf8').split('\n').filter(Boolean));
        done();
      },
    });
    t = await startTestServer({
      database: await fixture.createLocation(),
      logger: pino({ level: 'info' }, sink),
      config: { deployments: { sweepIntervalMs: 3_600_000 }, heartbeat: { maxClockSkewSeconds: 3600 } },
    });
    for (const fleet of ['fa', 'fb'])
      await admin('POST', '/api/v1/fleets', {
        name: fleet,
        outputConfig: { s3OutputLocation: `s3://c/${fleet}` },
      });
    await register('fa', ['rc-1', 'rc-2', 'rc-3']);
    await register('fb', ['rb-1']);
    for (const name of ['rc-1', 'rc-2', 'rc-3', 'rb-1']) devices.set(name, await enrollDevice(t, name));
  });
  afterAll(() => t?.stop());

  const identity = (name: string) => ({
    DeviceName: name,
    DeviceFleetName: name.startsWith('rb') ? 'fb' : 'fa',
  });
  const device = (name: string, method: string, urlPath: string, body: unknown) =>
    deviceCall(t.server.deviceUrl, devices.get(name)!.tls, method, urlPath, { body });
  const postResult = async (name: string, result: DeploymentResult) =>
    expect(
      await device(name, 'POST', '/api/v1/device/deployments/result', {
        ...identity(name),
        DeploymentResult: result,
      }),
    ).toMatchObject({ status: 200, body: {} });
  const heartbeat = async (name: string, result: DeploymentResult) =>
    expect(
      (
        await device(name, 'POST', '/api/v1/device/heartbeat', {
          AgentVersion: '1.0',
          ...identity(name),
          DeploymentResult: result,
        })
      ).status,
    ).toBe(200);
  /** A plan rolling out an UNDEPLOY of `h` to `name` in stage s, started, and the device's GetDeployments. */
  const startPlan = async (plan: string, fleet: string, name: string) => {
    const created = await admin('POST', '/api/v1/deployment-plans', {
      name: plan,
      fleetName: fleet,
      modelConfigs: [{ modelHandle: 'h', state: 'UNDEPLOY' }],
      stages: [{ name: 's', deviceSelection: { subsetType: 'SELECTION', deviceNames: [name] } }],
      options: { maxRetries: 0 },
    });
    expect(created.status).toBe(201);
    expect((await admin('POST', `/api/v1/deployment-plans/${plan}/stages/s/start`)).status).toBe(200);
    expect((await device(name, 'POST', '/api/v1/device/deployments', identity(name))).status).toBe(200);
  };
  const target = async (plan: string) =>
    (
      (await t.call('GET', `/api/v1/deployment-plans/${plan}/stages/s/devices`, { token: t.readToken }))
        .body as { devices: { status: string; statusMessage?: string }[] }
    ).devices[0]!;
  const stage = async (plan: string) =>
    (
      (await t.call('GET', `/api/v1/deployment-plans/${plan}`, { token: t.readToken })).body as {
        stages: { name: string; status: string }[];
      }
    ).stages[0]!.status;
  const lastResultOf = async (name: string) =>
    (
      (await t.call('GET', `/api/v1/devices/${name}`, { token: t.readToken })).body as {
        deploymentResult?: unknown;
      }
    ).deploymentResult;
  const at = (seconds: number) => ({ DeploymentStartTime: seconds, DeploymentEndTime: seconds });
  const nowSeconds = () => Math.floor(Date.now() / 1000);
  const ignoredLines = () =>
    logLines.map((line) => JSON.parse(line)).filter((line) => line.event === 'deployment_result_ignored');

  it.skipIf(!fixture.available)(
    'leaves out a failure from before the attempt (replayed after the stage finished), on the result call and in heartbeats, and logs it once',
    async () => {
      await startPlan('replayed', 'fa', 'rc-1');
      await postResult('rc-1', { ...undeployResult('replayed', 'SUCCESS', 'removed'), ...at(nowSeconds()) });
      expect(await target('replayed')).toMatchObject({ status: 'DEPLOYED' });
      expect(await stage('replayed')).toBe('DEPLOYED');

      const old = { ...undeployResult('replayed', 'FAIL', 'replayed'), ...at(LONG_AGO) };
      await postResult('rc-1', old);
      await heartbeat('rc-1', old);
      await heartbeat('rc-1', old);
      expect(await target('replayed')).toMatchObject({ status: 'DEPLOYED' });
      const events = (
        (await t.call('GET', '/api/v1/deployment-plans/replayed/events', { token: t.readToken })).body as {
          events: { kind: string }[];
        }
      ).events.map((e) => e.kind);
      expect(events).not.toContain('DeviceFailed');
      // Logged once while the device repeats it, naming the attempt's start and the reported times.
      const ignored = ignoredLines().filter((line) => line.device === 'rc-1');
      expect(ignored).toHaveLength(1);
      expect(ignored[0]).toMatchObject({
        log: 'fleet-events',
        actor: { kind: 'device', device: 'rc-1' },
        outcome: 'ignored',
        deployment: 'replayed',
        status: 'FAIL',
        reportedEndTime: new Date(LONG_AGO * 1000).toISOString(),
        attemptStartedAt: expect.any(String),
      });
      expect(ignored[0].msg).toMatch(/before the attempt it would end was handed out/);
    },
  );

  it.skipIf(!fixture.available)(
    'fails the attempt of a device whose clock lags within the window, and of one that sends no times',
    async () => {
      await startPlan('lagging', 'fa', 'rc-2');
      // 30 min behind the server (the window is 1 h): this attempt's failure all the same.
      const lagging = nowSeconds() - 1800;
      await postResult('rc-2', { ...undeployResult('lagging', 'FAIL', 'could not remove'), ...at(lagging) });
      expect(await target('lagging')).toMatchObject({ status: 'FAILED' });

      await startPlan('timeless', 'fa', 'rc-3');
      await heartbeat('rc-3', undeployResult('timeless', 'FAIL', 'could not remove'));
      expect(await target('timeless')).toMatchObject({ status: 'FAILED' });
    },
  );

  it.skipIf(!fixture.available)(
    "neither applies nor keeps a result naming a plan that is not one of the device's fleet's, on the result call or in a heartbeat",
    async () => {
      await startPlan('fb-plan', 'fb', 'rb-1');
      const own = { ...undeployResult('fb-plan', 'SUCCESS', 'removed'), ...at(nowSeconds()) };
      await postResult('rb-1', own);
      expect(await lastResultOf('rb-1')).toMatchObject({
        DeploymentName: 'fb-plan',
        DeploymentStatus: 'SUCCESS',
      });

      // Another fleet's plan (rc-1's), and a name no plan has: 200, nothing kept, nothing applied.
      for (const plan of ['replayed', 'no-such-plan']) {
        await postResult('rb-1', { ...undeployResult(plan, 'FAIL', 'forged'), ...at(nowSeconds()) });
        expect(await lastResultOf('rb-1')).toMatchObject({
          DeploymentName: 'fb-plan',
          DeploymentStatus: 'SUCCESS',
        });
      }
      // Nor in a heartbeat: the heartbeat is recorded, its result left out.
      await heartbeat('rb-1', { ...undeployResult('replayed', 'FAIL', 'forged'), ...at(nowSeconds()) });
      expect(await lastResultOf('rb-1')).toMatchObject({
        DeploymentName: 'fb-plan',
        DeploymentStatus: 'SUCCESS',
      });
      expect(await target('replayed')).toMatchObject({ status: 'DEPLOYED' });
      // The device's fleet event; the two after the first within the minute are left out (counted, below).
      expect(ignoredLines().filter((line) => line.device === 'rb-1')).toEqual([
        expect.objectContaining({
          log: 'fleet-events',
          outcome: 'ignored',
          actor: { kind: 'device', device: 'rb-1' },
          fleet: 'fb',
          deployment: 'replayed',
          reason: 'fleet fb has no deployment plan named replayed',
        }),
      ]);
    },
  );

  it.skipIf(!fixture.available)(
    'logs left-out results at most once a minute per device, however the device varies them, counting the rest',
    async () => {
      // The server's own service on the same database and log, with a clock the test moves.
      let clock = Date.now();
      const when = nowSeconds();
      const service = new DeploymentService(t.server.database.db, {
        engine: t.server.database.engine,
        packagingJobs: t.server.services.packagingJobs,
        models: t.server.services.models,
        events: new FleetEventLog(t.server.logger.child({ log: 'fleet-events' })),
        now: () => clock,
      });
      const forged = (plan: string) => ({
        deviceName: 'rc-3',
        fleetName: 'fa',
        receivedAt: clock,
        result: { ...undeployResult(plan, 'FAIL', 'forged'), ...at(when) },
      });
      for (let i = 0; i < 5; i += 1) await service.recordDeviceResult(forged(`flood-${i}`));
      const ofRc3 = () => ignoredLines().filter((line) => line.device === 'rc-3');
      expect(ofRc3().map((line) => line.deployment)).toEqual(['flood-0']);

      clock += 60_000;
      await service.recordDeviceResult(forged('flood-5'));
      expect(ofRc3()).toHaveLength(2);
      expect(ofRc3()[1]).toMatchObject({ deployment: 'flood-5', resultsNotLogged: 4 });
      expect(ofRc3()[1].msg).toMatch(/4 more left out since the last line/);
      // A repeat of the last is no news: not logged, and not counted either.
      clock += 60_000;
      await service.recordDeviceResult(forged('flood-5'));
      expect(ofRc3()).toHaveLength(2);
    },
  );

  it.skipIf(!fixture.available)(
    'logs a result held back by the limiter once the minute is up, though the device repeats it (a decoy first)',
    async () => {
      let clock = Date.now();
      const when = nowSeconds();
      const service = new DeploymentService(t.server.database.db, {
        engine: t.server.database.engine,
        packagingJobs: t.server.services.packagingJobs,
        models: t.server.services.models,
        events: new FleetEventLog(t.server.logger.child({ log: 'fleet-events' })),
        now: () => clock,
      });
      const forged = (plan: string) => ({
        deviceName: 'rc-4',
        fleetName: 'fa',
        receivedAt: clock,
        result: { ...undeployResult(plan, 'FAIL', 'forged'), ...at(when) },
      });
      const ofRc4 = () => ignoredLines().filter((line) => line.device === 'rc-4');
      await service.recordDeviceResult(forged('decoy'));
      clock += 10_000;
      await service.recordDeviceResult(forged('hidden'));
      expect(ofRc4().map((line) => line.deployment)).toEqual(['decoy']);
      // The held-back result, repeated on a heartbeat after the minute, is news: it was never logged.
      clock += 60_000;
      await service.recordDeviceResult(forged('hidden'));
      expect(ofRc4().map((line) => line.deployment)).toEqual(['decoy', 'hidden']);
      expect(ofRc4()[1]).toMatchObject({ resultsNotLogged: 1 });
    },
  );
});
