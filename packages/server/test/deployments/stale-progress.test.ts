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
import type { DeploymentResult } from '@edgefleet/core';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCalls, undeployResult } from '../support/deployment-calls.js';
import { deviceCall } from '../support/device.js';
import { databaseEngines } from '../support/engines.js';
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
    for (;;) {
      const waiting = await sql<{
        n: number;
      }>`select count(*)::int as n from pg_locks where not granted`.execute(db);
      if ((waiting.rows[0]?.n ?? 0) > 0) break;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
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
});
