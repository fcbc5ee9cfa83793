import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readSnapshot } from '../../src/console/change-feed.js';
import { DeviceStore } from '../../src/devices/index.js';
import { clearOutputOutage, FleetStore, markOutputOutage } from '../../src/fleets/index.js';
import type { ServerDatabase } from '../../src/storage/index.js';
import { databaseEngines, openFreshDatabase } from '../support/engines.js';

const engines = await databaseEngines();

// The console change feed's devices fingerprint: it must change when a device goes quiet (which writes
// nothing), is heard from, edited or removed, and must not change while nothing crosses the online line.
describe.each(engines)('console change feed fingerprints on $engine', (fixture) => {
  let database: ServerDatabase;
  const clock = 1_700_000_000_000;
  let devices: DeviceStore;

  beforeAll(async () => {
    if (!fixture.available) return;
    database = await openFreshDatabase(fixture);
    await new FleetStore(database.db, () => clock).create({
      name: 'f',
      outputConfig: { s3OutputLocation: 's3://b/p' },
    });
    devices = new DeviceStore(database.db, { offlineAfterMs: 90_000, now: () => clock });
    await devices.register('f', [{ name: 'a' }, { name: 'b' }, { name: 'never' }], []);
    for (const [name, at] of [
      ['a', clock + 1000],
      ['b', clock + 2000],
    ] as const)
      await database.db
        .updateTable('devices')
        .set({ last_heartbeat_at: at })
        .where('name', '=', name)
        .execute();
  });
  afterAll(() => database?.close());

  /** The devices fingerprint with heartbeats after `clock + offset` online. */
  const devicesAt = async (offset: number) => (await readSnapshot(database.db, clock + offset)).devices;

  it.skipIf(!fixture.available)('changes exactly when a device goes quiet, and on every write', async () => {
    // a and b online at both instants: the same.
    expect(await devicesAt(900)).toBe(await devicesAt(500));
    // a went quiet (its heartbeat is no longer after the line): changed; then the same until b does.
    expect(await devicesAt(1000)).not.toBe(await devicesAt(900));
    expect(await devicesAt(1999)).toBe(await devicesAt(1000));
    expect(await devicesAt(2000)).not.toBe(await devicesAt(1999));
    expect(await devicesAt(5000)).toBe(await devicesAt(2000));
    // The other topics are not affected by the line.
    const early = await readSnapshot(database.db, clock);
    const late = await readSnapshot(database.db, clock + 5000);
    expect({ ...late, devices: '' }).toEqual({ ...early, devices: '' });

    // A heartbeat, an edit and a removal each change it, whatever the line.
    let before = await devicesAt(5000);
    await database.db
      .updateTable('devices')
      .set({ last_heartbeat_at: clock + 3000 })
      .where('name', '=', 'never')
      .execute();
    expect(await devicesAt(5000)).not.toBe(before);
    before = await devicesAt(5000);
    await database.db
      .updateTable('devices')
      .set({ updated_at: clock + 4000 })
      .where('name', '=', 'a')
      .execute();
    expect(await devicesAt(5000)).not.toBe(before);
    before = await devicesAt(5000);
    await devices.deregister('b');
    expect(await devicesAt(5000)).not.toBe(before);
  });

  // Review N8: an outage whose problem changes keeps its start time; the console must still refetch the fleet.
  it.skipIf(!fixture.available)(
    'the fleets fingerprint changes when an output outage starts, changes its problem, and ends',
    async () => {
      const fleets = async () => (await readSnapshot(database.db, clock)).fleets;
      const mark = (problem: string) =>
        markOutputOutage(database.db, 'f', 's3://b/p', { problem, reason: problem, at: clock + 10 });
      const quiet = await fleets();
      await mark('forbidden');
      const forbidden = await fleets();
      expect(forbidden).not.toBe(quiet);
      await mark('missing-bucket');
      const missing = await fleets();
      expect(missing).not.toBe(forbidden);
      await mark('missing-bucket');
      expect(await fleets()).toBe(missing);
      await clearOutputOutage(database.db, 'f', 's3://b/p');
      expect(await fleets()).toBe(quiet);
    },
  );
});
