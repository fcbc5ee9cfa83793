/**
 * N8: a heartbeat's DeploymentResult naming a plan not of its device's fleet is left out of what is stored and
 * passed on, without editing the heartbeat object the caller handed in (the request's, which a failed batch
 * write retries one by one). Real database; the deployment side is the service's injected result sink.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DeviceStore } from '../../src/devices/index.js';
import { FleetStore } from '../../src/fleets/index.js';
import { HeartbeatService, type DeploymentResultSink } from '../../src/heartbeats/index.js';
import type { ServerDatabase } from '../../src/storage/index.js';
import { databaseEngines, openFreshDatabase } from '../support/engines.js';

const engines = await databaseEngines();

describe.each(engines)('foreign deployment results on $engine', (fixture) => {
  let database: ServerDatabase;
  let heartbeats: HeartbeatService;
  const passedOn: string[] = [];
  // Plans and their fleets, as the deployment service reads them.
  const sink: DeploymentResultSink = {
    fleetsOfPlans: async (_trx, plans) =>
      new Map(
        plans.flatMap((plan) =>
          plan === 'own-plan' ? [[plan, 'fleet-1']] : plan === 'other-plan' ? [[plan, 'fleet-2']] : [],
        ),
      ),
    recordResults: async (reports) => {
      passedOn.push(...reports.map((r) => r.result.DeploymentName ?? ''));
    },
  };

  beforeAll(async () => {
    if (!fixture.available) return;
    database = await openFreshDatabase(fixture);
    await new FleetStore(database.db).create({
      name: 'fleet-1',
      outputConfig: { s3OutputLocation: 's3://b/p' },
    });
    await new DeviceStore(database.db, { offlineAfterMs: 90_000 }).register(
      'fleet-1',
      [{ name: 'dev-1' }],
      [],
    );
    heartbeats = new HeartbeatService(database.db, {
      databaseEngine: database.engine,
      registrationCacheTtlSeconds: 60,
      deploymentResults: sink,
    });
  });
  afterAll(() => database?.close());

  it.skipIf(!fixture.available)(
    "leaves the result out of what is kept and passed on, and the caller's heartbeat as it was",
    async () => {
      const device = {
        deviceName: 'dev-1',
        fleetName: 'fleet-1',
        serial: '01',
        notAfter: Number.MAX_SAFE_INTEGER,
      };
      const result = (plan: string) => ({
        DeploymentName: plan,
        DeploymentStatus: 'SUCCESS',
        DeploymentModels: [
          { ModelHandle: 'main', ModelName: 'm', ModelVersion: '1', Status: 'SUCCESS' as const },
        ],
      });
      const foreign = {
        DeviceName: 'dev-1',
        DeviceFleetName: 'fleet-1',
        AgentVersion: '1',
        DeploymentResult: result('other-plan'),
      };
      const sent = structuredClone(foreign);
      await heartbeats.record(device, foreign);
      expect(foreign).toEqual(sent);
      expect(passedOn).toEqual([]);
      await heartbeats.record(device, { ...sent, DeploymentResult: result('own-plan') });
      expect(passedOn).toEqual(['own-plan']);
    },
  );
});
