/**
 * Review F1: the agent's heartbeat loop and its result call are not ordered, and heartbeats are written in
 * batches behind the one being written. A heartbeat built while the update ran (INPROGRESS) can so be
 * written after the device's own call stored the final result. The agent never repeats a result it has
 * reported, so the device must keep the final result, and its DEPLOYED target the final message. Before the
 * fix the device showed INPROGRESS until its next deployment and the target said "INPROGRESS: …".
 *
 * On PostgreSQL the heartbeat writer is held as in production: another device's row is locked, so the batch
 * carrying that device's heartbeat waits and the INPROGRESS heartbeat queues behind it while the result call
 * commits. SQLite has one writer connection (holding it would hold the result call too), so there the stale
 * heartbeat simply arrives after the result call: the same order of writes.
 */
import { deploymentResultSchema, type DeploymentResult } from '@edgefleet/core';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DeploymentService } from '../../src/deployments/index.js';
import { recordDeploymentResult } from '../../src/devices/index.js';
import { adminCalls, undeployResult } from '../support/deployment-calls.js';
import { deviceCall } from '../support/device.js';
import { databaseEngines } from '../support/engines.js';
import { untilALockWaits } from '../support/lock-waits.js';
import { enrollDevice, startTestServer, type EnrolledDevice, type TestServer } from '../support/server.js';

const engines = await databaseEngines();

// Seconds, as the agent sends it.
const STARTED = 1_790_000_000;

describe.each(engines)('a stale progress heartbeat on $engine', (fixture) => {
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

  const identity = (name: string) => ({ DeviceName: name, DeviceFleetName: 'fa' });
  const heartbeat = async (device: EnrolledDevice, name: string, result?: DeploymentResult) => {
    const answer = await deviceCall(t.server.deviceUrl, device.tls, 'POST', '/api/v1/device/heartbeat', {
      body: {
        AgentVersion: '1.0',
        ...identity(name),
        ...(result !== undefined && { DeploymentResult: result }),
      },
    });
    expect(answer.status).toBe(200);
  };

  const someoneWaits = () => untilALockWaits(t.server.database.db);

  /**
   * Locks `name`'s row in a transaction of its own and sends that device's heartbeat, which the writer then
   * waits on (seen in pg_locks); every heartbeat after it queues behind. Returns what ends the hold.
   */
  const holdHeartbeatWriter = async (device: EnrolledDevice, name: string) => {
    const db = t.server.database.db;
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    let locked!: () => void;
    const isLocked = new Promise<void>((resolve) => (locked = resolve));
    const holder = db.transaction().execute(async (trx) => {
      await sql`select name from devices where name = ${name} for update`.execute(trx);
      locked();
      await released;
    });
    await isLocked;
    const held = heartbeat(device, name);
    await someoneWaits();
    return async () => {
      release();
      await holder;
      await held;
    };
  };

  it.skipIf(!fixture.available)(
    "keeps the device's final result and its target's message; a new attempt's progress is still kept",
    async () => {
      await register('fa', ['cam-a', 'cam-b']);
      const camA = await enrollDevice(t, 'cam-a');
      const camB = await enrollDevice(t, 'cam-b');
      await heartbeat(camB, 'cam-b');
      expect(
        (
          await admin('POST', '/api/v1/deployment-plans', {
            name: 'stale',
            fleetName: 'fa',
            modelConfigs: [{ modelHandle: 'h', state: 'UNDEPLOY' }],
            stages: [{ name: 's1', deviceSelection: { subsetType: 'SELECTION', deviceNames: ['cam-a'] } }],
          })
        ).status,
      ).toBe(201);
      expect((await admin('POST', '/api/v1/deployment-plans/stale/stages/s1/start')).status).toBe(200);
      const taken = await deviceCall(t.server.deviceUrl, camA.tls, 'POST', '/api/v1/device/deployments', {
        body: identity('cam-a'),
      });
      expect(taken.status).toBe(200);

      const progress: DeploymentResult = {
        DeploymentName: 'stale',
        DeploymentStatus: 'INPROGRESS',
        DeploymentStatusMessage: 'removing h',
        DeploymentStartTime: STARTED,
      };
      const final: DeploymentResult = {
        ...undeployResult('stale', 'SUCCESS', 'removed'),
        DeploymentStartTime: STARTED,
      };
      const postResult = async () =>
        expect(
          (
            await deviceCall(t.server.deviceUrl, camA.tls, 'POST', '/api/v1/device/deployments/result', {
              body: { ...identity('cam-a'), DeploymentResult: final },
            })
          ).status,
        ).toBe(200);

      if (fixture.engine === 'postgres') {
        const endHold = await holdHeartbeatWriter(camB, 'cam-b');
        const stale = heartbeat(camA, 'cam-a', progress);
        await postResult();
        await endHold();
        await stale;
      } else {
        await postResult();
        await heartbeat(camA, 'cam-a', progress);
      }

      const described = async () =>
        (await t.call('GET', '/api/v1/devices/cam-a', { token: t.readToken })).body as {
          deploymentResult?: { DeploymentStatus?: string; DeploymentStatusMessage?: string };
        };
      expect((await described()).deploymentResult).toMatchObject({
        DeploymentStatus: 'SUCCESS',
        DeploymentStatusMessage: 'removed',
      });
      const target = async () =>
        (
          (await t.call('GET', '/api/v1/deployment-plans/stale/stages/s1/devices', { token: t.readToken }))
            .body as { devices: { deviceName: string; status: string; statusMessage?: string }[] }
        ).devices.find((d) => d.deviceName === 'cam-a');
      expect(await target()).toMatchObject({ status: 'DEPLOYED', statusMessage: 'removed' });

      // Another attempt (another start time) is news: its progress replaces the old final result.
      await heartbeat(camA, 'cam-a', { ...progress, DeploymentStartTime: STARTED + 60 });
      expect((await described()).deploymentResult).toMatchObject({ DeploymentStatus: 'INPROGRESS' });
    },
  );

  /**
   * Reports without DeploymentStartTime (optional in the API; another Edge Manager client) cannot be told
   * apart by attempt. The target is judged by what the server handed out instead: progress is news only while
   * the device holds an attempt (INPROGRESS). Before, a kept final result of the same name outranked any
   * progress without a start time, so the retry's HELD was dropped and the sweep timed out a device that
   * waits by design.
   */
  it.skipIf(!fixture.available)(
    'without start times: a target takes progress only while the device holds an attempt, in either order',
    async () => {
      await register('fa', ['cam-c']);
      const camC = await enrollDevice(t, 'cam-c');
      expect(
        (
          await admin('POST', '/api/v1/deployment-plans', {
            name: 'nostart',
            fleetName: 'fa',
            modelConfigs: [{ modelHandle: 'h', state: 'UNDEPLOY' }],
            options: { maxRetries: 1 },
            stages: [{ name: 's1', deviceSelection: { subsetType: 'SELECTION', deviceNames: ['cam-c'] } }],
          })
        ).status,
      ).toBe(201);
      expect((await admin('POST', '/api/v1/deployment-plans/nostart/stages/s1/start')).status).toBe(200);
      const take = async () =>
        expect(
          (
            await deviceCall(t.server.deviceUrl, camC.tls, 'POST', '/api/v1/device/deployments', {
              body: identity('cam-c'),
            })
          ).status,
        ).toBe(200);
      const postResult = async (result: DeploymentResult) =>
        expect(
          (
            await deviceCall(t.server.deviceUrl, camC.tls, 'POST', '/api/v1/device/deployments/result', {
              body: { ...identity('cam-c'), DeploymentResult: result },
            })
          ).status,
        ).toBe(200);
      const target = async () =>
        (
          (await t.call('GET', '/api/v1/deployment-plans/nostart/stages/s1/devices', { token: t.readToken }))
            .body as { devices: { status: string; statusMessage?: string; attempts: number }[] }
        ).devices[0];
      const deviceResult = async () =>
        (
          (await t.call('GET', '/api/v1/devices/cam-c', { token: t.readToken })).body as {
            deploymentResult?: { DeploymentStatus?: string };
          }
        ).deploymentResult?.DeploymentStatus;
      const progress = (status: string, message: string): DeploymentResult => ({
        DeploymentName: 'nostart',
        DeploymentStatus: status,
        DeploymentStatusMessage: message,
      });

      // Progress, then the final result: each is news.
      await take();
      await heartbeat(camC, 'cam-c', progress('INPROGRESS', 'removing h'));
      expect(await target()).toMatchObject({ status: 'INPROGRESS', statusMessage: 'INPROGRESS: removing h' });
      await postResult(undeployResult('nostart', 'FAIL', 'could not remove h'));
      expect(await target()).toMatchObject({ status: 'READYTODEPLOY', attempts: 1 });
      const retrying = (await target())?.statusMessage;
      expect(retrying).toMatch(/^attempt 1 failed: .*; retrying/);

      // The final result, then a heartbeat built before it: the attempt has ended, the target keeps its words,
      // and the device its final result.
      await heartbeat(camC, 'cam-c', progress('INPROGRESS', 'still removing h'));
      expect(await target()).toMatchObject({ status: 'READYTODEPLOY', statusMessage: retrying });
      expect(await deviceResult()).toBe('FAIL');

      // The device takes the retry and its application holds the update lock: the target shows HELD (the
      // device's last result stays the failure until this attempt ends: without start times it cannot be
      // told from a late report of the failed one), and the timeout sweep leaves it alone.
      await take();
      await heartbeat(camC, 'cam-c', progress('HELD', 'the update lock is held'));
      expect(await target()).toMatchObject({
        status: 'INPROGRESS',
        attempts: 2,
        statusMessage: 'HELD: the update lock is held',
      });
      expect(await deviceResult()).toBe('FAIL');
      const sweeper = new DeploymentService(t.server.database.db, {
        engine: t.server.database.engine,
        packagingJobs: t.server.services.packagingJobs,
        models: t.server.services.models,
        now: () => Date.now() + 2 * 3_600_000,
      });
      expect(await sweeper.sweep()).toEqual({ timedOut: 0, unreadablePlans: [] });

      // It succeeds; a heartbeat built before that changes neither the target nor the device's result.
      await postResult(undeployResult('nostart', 'SUCCESS', 'removed'));
      await heartbeat(camC, 'cam-c', progress('INPROGRESS', 'removing h again'));
      expect(await target()).toMatchObject({ status: 'DEPLOYED', statusMessage: 'removed' });
      expect(await deviceResult()).toBe('SUCCESS');
    },
  );

  /**
   * The heartbeat writer reads a device's kept result to judge its progress report, then writes the batch. A
   * result call committing between the two would be overwritten by the progress it outranks, unless the read
   * locks the row. Forced here, not timed: a transaction writes the final result as the result call does and
   * stays open, so the heartbeat's writer waits on the row (seen in pg_locks): at its read with the lock (and
   * then reads the final result), at its UPDATE without it (having read the progress before). PostgreSQL
   * only: SQLite runs one transaction at a time (one connection), so nothing comes between the two there.
   */
  it.skipIf(!fixture.available || fixture.engine !== 'postgres')(
    'a progress heartbeat that reads while a final result commits does not overwrite it (the row lock)',
    async () => {
      await register('fa', ['cam-d']);
      const camD = await enrollDevice(t, 'cam-d');
      const progress: DeploymentResult = {
        DeploymentName: 'locked',
        DeploymentStatus: 'INPROGRESS',
        DeploymentStatusMessage: 'removing h',
        DeploymentStartTime: STARTED,
      };
      await heartbeat(camD, 'cam-d', progress);

      const db = t.server.database.db;
      let release!: () => void;
      const released = new Promise<void>((resolve) => (release = resolve));
      let written!: () => void;
      const isWritten = new Promise<void>((resolve) => (written = resolve));
      const resultCall = db.transaction().execute(async (trx) => {
        await recordDeploymentResult(
          trx,
          { deviceName: 'cam-d', fleetName: 'fa' },
          // As the result route keeps it: parsed (times in milliseconds).
          deploymentResultSchema.parse({
            ...undeployResult('locked', 'SUCCESS', 'removed'),
            DeploymentStartTime: STARTED,
          }),
          Date.now(),
        );
        written();
        await released;
      });
      await isWritten;
      const stale = heartbeat(camD, 'cam-d', { ...progress, DeploymentStatusMessage: 'still removing h' });
      await someoneWaits();
      release();
      await resultCall;
      await stale;

      const described = (await t.call('GET', '/api/v1/devices/cam-d', { token: t.readToken })).body as {
        deploymentResult?: { DeploymentStatus?: string; DeploymentStatusMessage?: string };
      };
      expect(described.deploymentResult).toMatchObject({
        DeploymentStatus: 'SUCCESS',
        DeploymentStatusMessage: 'removed',
      });
    },
  );
});
