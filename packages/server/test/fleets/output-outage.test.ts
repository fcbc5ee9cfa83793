/**
 * A fleet output's outage on the fleet's row (fleets/output-outage.ts) on both engines: marked once with its
 * start kept, its problem replaced, cleared, and left alone once the fleet has moved to another location.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clearOutputOutage, FleetStore, markOutputOutage } from '../../src/fleets/index.js';
import type { ServerDatabase } from '../../src/storage/index.js';
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
      problem: 'missing-bucket',
      reason: 'r2',
    });
    // Written for another location (the fleet moved while an upload ran): nothing changes.
    await clearOutputOutage(database.db, 'plant', 's3://b/elsewhere');
    expect((await fleets.get('plant')).outputOutage?.since).toBe(1000);
    await clearOutputOutage(database.db, 'plant', 's3://b/p');
    expect((await fleets.get('plant')).outputOutage).toBeUndefined();
    await markOutputOutage(database.db, 'plant', 's3://b/elsewhere', {
      problem: 'forbidden',
      reason: 'r',
      at: 3000,
    });
    expect((await fleets.get('plant')).outputOutage).toBeUndefined();
  });
});
