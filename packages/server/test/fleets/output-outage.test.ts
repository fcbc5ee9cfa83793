/**
 * A fleet output's outage on the fleet's row (fleets/output-outage.ts) on both engines: marked once with its
 * start kept, its problem replaced (never by an older failure written late), cleared, and left alone once the fleet has moved to another location.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  clearOutputOutage,
  FleetStore,
  markOutputOutage,
  OUTAGE_LAST_FAILURE_RESOLUTION_MS,
  outageNeedsRecording,
} from '../../src/fleets/index.js';
import { migrateTo, migrateToLatest, openDatabase, type ServerDatabase } from '../../src/storage/index.js';
import { databaseEngines, openFreshDatabase } from '../support/engines.js';

const engines = await databaseEngines();

describe.each(engines)("a fleet output's outage on $engine", (fixture) => {
  let database: ServerDatabase;
  let fleets: FleetStore;
  beforeAll(async () => {
    if (!fixture.available) return;
    database = await openFreshDatabase(fixture);
    fleets = new FleetStore(database.db);
    await fleets.create({ name: 'plant', outputConfig: { s3OutputLocation: 's3://b/p' } });
  });
  afterAll(() => database?.close());

  it.skipIf(!fixture.available)('keeps its start across problems, and ends with its location', async () => {
    expect((await fleets.get('plant')).outputOutage).toBeUndefined();
    await markOutputOutage(database.db, 'plant', 's3://b/p', {
      problem: 'unreachable',
      reason: 'r1',
      at: 1000,
    });
    await markOutputOutage(database.db, 'plant', 's3://b/p', {
      problem: 'missing-bucket',
      reason: 'r2',
      at: 2000,
    });
    expect((await fleets.get('plant')).outputOutage).toEqual({
      outputLocation: 's3://b/p',
      since: 1000,
      lastFailureAt: 2000,
      problem: 'missing-bucket',
      reason: 'r2',
    });
    // The same problem again moves the last failure on only; the start stays.
    await markOutputOutage(database.db, 'plant', 's3://b/p', {
      problem: 'missing-bucket',
      reason: 'r2',
      at: 2000 + OUTAGE_LAST_FAILURE_RESOLUTION_MS,
    });
    expect((await fleets.get('plant')).outputOutage).toMatchObject({
      since: 1000,
      lastFailureAt: 2000 + OUTAGE_LAST_FAILURE_RESOLUTION_MS,
    });
    // An older failure written late (another replica, an upload read before the newer one wrote): the last
    // failure does not move back, and the problem and reason stay the newer failure's.
    await markOutputOutage(database.db, 'plant', 's3://b/p', {
      problem: 'forbidden',
      reason: 'older',
      at: 2500,
    });
    expect((await fleets.get('plant')).outputOutage).toMatchObject({
      since: 1000,
      lastFailureAt: 2000 + OUTAGE_LAST_FAILURE_RESOLUTION_MS,
      problem: 'missing-bucket',
      reason: 'r2',
    });
    // Written for another location (the fleet moved while an upload ran): nothing changes.
    await clearOutputOutage(database.db, 'plant', 's3://b/elsewhere');
    expect((await fleets.get('plant')).outputOutage?.since).toBe(1000);
    await clearOutputOutage(database.db, 'plant', 's3://b/p');
    expect((await fleets.get('plant')).outputOutage).toBeUndefined();
    const row = await database.db
      .selectFrom('fleets')
      .select('output_outage_last_failure_at')
      .where('name', '=', 'plant')
      .executeTakeFirstOrThrow();
    expect(row.output_outage_last_failure_at).toBeNull();
    await markOutputOutage(database.db, 'plant', 's3://b/elsewhere', {
      problem: 'forbidden',
      reason: 'r',
      at: 3000,
    });
    expect((await fleets.get('plant')).outputOutage).toBeUndefined();
  });

  it.skipIf(!fixture.available)(
    'the migration gives an outage already recorded its start as its last failure',
    async () => {
      const old = await openDatabase(await fixture.createLocation());
      try {
        await migrateTo(old.db, '0019_devices_deployed_models_not_loaded');
        for (const [name, since] of [
          ['down', 5000],
          ['up', null],
        ] as const)
          await old.db
            .insertInto('fleets')
            .values({
              name,
              description: null,
              output_s3_location: 's3://b/p',
              output_kms_key_id: null,
              role_arn: null,
              tags: '[]',
              created_at: 1,
              updated_at: 1,
              output_outage_since: since,
              output_outage_problem: since === null ? null : 'unreachable',
              output_outage_reason: since === null ? null : 'r',
            } as never)
            .execute();
        await migrateToLatest(old.db);
        const store = new FleetStore(old.db);
        expect((await store.get('down')).outputOutage).toMatchObject({ since: 5000, lastFailureAt: 5000 });
        expect((await store.get('up')).outputOutage).toBeUndefined();
      } finally {
        await old.close();
      }
    },
  );
});

describe('whether a failed upload is written to the outage', () => {
  const recorded = { problem: 'unreachable', lastFailureAt: 10_000 };
  it('is written when it starts an outage or changes its problem', () => {
    expect(
      outageNeedsRecording({ problem: null, lastFailureAt: null }, { problem: 'forbidden', at: 1 }),
    ).toBe(true);
    expect(outageNeedsRecording(recorded, { problem: 'forbidden', at: 10_001 })).toBe(true);
  });
  it('moves the last failure on at most once per resolution, not per upload', () => {
    expect(outageNeedsRecording(recorded, { problem: 'unreachable', at: 10_001 })).toBe(false);
    expect(
      outageNeedsRecording(recorded, {
        problem: 'unreachable',
        at: 10_000 + OUTAGE_LAST_FAILURE_RESOLUTION_MS - 1,
      }),
    ).toBe(false);
    expect(
      outageNeedsRecording(recorded, {
        problem: 'unreachable',
        at: 10_000 + OUTAGE_LAST_FAILURE_RESOLUTION_MS,
      }),
    ).toBe(true);
  });
});
