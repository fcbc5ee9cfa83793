import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DeviceStore } from '../../src/devices/index.js';
import { FleetStore } from '../../src/fleets/index.js';
import { fleetReport, HeartbeatService, pruneExpired } from '../../src/heartbeats/index.js';
import type { ServerDatabase } from '../../src/storage/index.js';
import { databaseEngines, openFreshDatabase } from '../support/engines.js';

const engines = await databaseEngines();

describe.each(engines)('offline detection and retention on $engine', (fixture) => {
  let database: ServerDatabase;
  let clock = 1_700_000_000_000;
  const now = () => clock;
  const interval = 30_000;
  const missed = 3;
  let devices: DeviceStore;
  let fleets: FleetStore;
  let heartbeats: HeartbeatService;
  const device = {
    deviceName: 'dev-1',
    fleetName: 'fleet-1',
    serial: '01',
    notAfter: Number.MAX_SAFE_INTEGER,
  };

  beforeAll(async () => {
    if (!fixture.available) return;
    database = await openFreshDatabase(fixture);
    fleets = new FleetStore(database.db, now);
    devices = new DeviceStore(database.db, { offlineAfterMs: interval * missed, now });
    heartbeats = new HeartbeatService(database.db, {
      databaseEngine: database.engine,
      registrationCacheTtlSeconds: 60,
      now,
    });
    await fleets.create({ name: 'fleet-1', outputConfig: { s3OutputLocation: 's3://b/p' } });
    await devices.register('fleet-1', [{ name: 'dev-1' }, { name: 'dev-2' }], []);
  });
  afterAll(() => database?.close());

  const beat = (metrics: number) =>
    heartbeats.record(device, {
      DeviceName: 'dev-1',
      DeviceFleetName: 'fleet-1',
      AgentVersion: '1',
      AgentMetrics: Array.from({ length: metrics }, (_, i) => ({ MetricName: 'm', Value: i })),
    });
  const metricCount = async () =>
    Number(
      (
        await database.db
          .selectFrom('device_metric_batches')
          .select((eb) => eb.fn.coalesce(eb.fn.sum<number>('metric_count'), eb.lit(0)).as('n'))
          .executeTakeFirstOrThrow()
      ).n,
    );
  const statusOf = async (name: string) => ((await devices.get(name)).online ? 'online' : 'offline');
  const listed = async (status: 'online' | 'offline') =>
    (await devices.list({ limit: 10, status })).map((d) => d.name);

  it.skipIf(!fixture.available)(
    'is offline until a heartbeat, then offline again after N missed ones',
    async () => {
      expect(await statusOf('dev-1')).toBe('offline');
      await beat(2);
      expect(await statusOf('dev-1')).toBe('online');
      expect(await listed('online')).toEqual(['dev-1']);

      clock += interval * missed - 1;
      expect(await statusOf('dev-1')).toBe('online');
      clock += 1;
      expect(await statusOf('dev-1')).toBe('online');
      clock += 1;
      expect(await statusOf('dev-1')).toBe('offline');
      expect(await listed('offline')).toEqual(['dev-1', 'dev-2']);
      const report = await fleetReport(database.db, fleets, 'fleet-1', {
        offlineAfterMs: interval * missed,
        now: clock,
      });
      // dev-1 was heard from and has gone silent (offline); dev-2 never sent a heartbeat.
      expect(report.deviceStats).toEqual({
        registeredDeviceCount: 2,
        connectedDeviceCount: 0,
        neverSeenDeviceCount: 1,
      });

      await beat(0);
      expect(await statusOf('dev-1')).toBe('online');
    },
  );

  it.skipIf(!fixture.available)('writes many concurrent heartbeats together, losing none', async () => {
    await devices.register('fleet-1', [{ name: 'burst-1' }, { name: 'burst-2' }], []);
    const before = await metricCount();
    const writes = Array.from({ length: 200 }, (_, i) => {
      const name = `burst-${(i % 2) + 1}`;
      return heartbeats.record(
        { deviceName: name, fleetName: 'fleet-1', serial: 'x', notAfter: Number.MAX_SAFE_INTEGER },
        {
          DeviceName: name,
          DeviceFleetName: 'fleet-1',
          AgentVersion: `v${i}`,
          AgentMetrics: [
            { MetricName: 'a', Value: i },
            { MetricName: 'b', Value: i },
          ],
          Models: [{ ModelName: 'm', ModelVersion: String(i) }],
        },
      );
    });
    await Promise.all(writes);
    expect((await metricCount()) - before).toBe(400);
    for (const name of ['burst-1', 'burst-2']) {
      const state = await devices.get(name);
      // The state is the one of the device's last heartbeat: version and model list agree.
      expect(state.models).toEqual([
        {
          name: 'm',
          version: state.agentVersion?.slice(1),
          latestSampleTime: null,
          latestInferenceTime: null,
        },
      ]);
    }
    expect((await devices.get('burst-2')).agentVersion).toBe('v199');
  });

  it.skipIf(!fixture.available)(
    'prunes metrics received before the retention window, and nothing newer',
    async () => {
      const start = clock;
      await beat(3);
      clock += 60_000;
      await beat(4);
      const count = async () =>
        Number(
          (
            await database.db
              .selectFrom('device_metric_batches')
              .select((eb) => eb.fn.coalesce(eb.fn.sum<number>('metric_count'), eb.lit(0)).as('n'))
              .where('received_at', '>=', start)
              .where('device_name', '=', 'dev-1')
              .executeTakeFirstOrThrow()
          ).n,
        );
      expect(await count()).toBe(7);
      // Retention 30 s at clock = start + 60 s: the first heartbeat's three go, the second's four stay.
      const removed = await pruneExpired(database.db, { metricsRetentionMs: 30_000, now: clock });
      // dev-1's first heartbeat and the 200 of the burst were all received before the window.
      expect(removed.metricBatches).toBeGreaterThanOrEqual(1 + 200);
      expect(await count()).toBe(4);
      expect(
        (await pruneExpired(database.db, { metricsRetentionMs: 30_000, now: clock })).metricBatches,
      ).toBe(0);
    },
  );
});
