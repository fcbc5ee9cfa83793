import { sql } from 'kysely';
import { afterEach, describe, expect, it } from 'vitest';
import {
  appliedMigrations,
  isForeignKeyViolation,
  isUniqueViolation,
  migrateToLatest,
  migrationNames,
  openDatabase,
  parseDatabaseLocation,
  type ServerDatabase,
} from '../../src/storage/index.js';
import { databaseEngines } from '../support/engines.js';

const engines = await databaseEngines();

describe('parseDatabaseLocation', () => {
  it('reads postgres URLs, sqlite: prefixes and plain paths', () => {
    expect(parseDatabaseLocation('postgres://u:p@h:5432/db', '/base')).toEqual({
      engine: 'postgres',
      url: 'postgres://u:p@h:5432/db',
    });
    expect(parseDatabaseLocation('postgresql://h/db', '/base').engine).toBe('postgres');
    expect(parseDatabaseLocation('sqlite:state.db', '/base')).toEqual({
      engine: 'sqlite',
      file: '/base/state.db',
    });
    expect(parseDatabaseLocation('/abs/x.db', '/base')).toEqual({ engine: 'sqlite', file: '/abs/x.db' });
  });

  it('refuses empty values and other schemes', () => {
    expect(() => parseDatabaseLocation('  ', '/base')).toThrow(/empty/);
    expect(() => parseDatabaseLocation('mysql://h/db', '/base')).toThrow(/unsupported database location/);
  });
});

describe.each(engines)('state database on $engine', (fixture) => {
  const opened: ServerDatabase[] = [];
  afterEach(async () => {
    for (const database of opened.splice(0)) await database.close();
  });
  const open = async (location?: Awaited<ReturnType<typeof fixture.createLocation>>) => {
    const database = await openDatabase(location ?? (await fixture.createLocation()));
    opened.push(database);
    return database;
  };

  it.skipIf(!fixture.available)('applies every migration once, in order', async () => {
    const database = await open();
    const first = await migrateToLatest(database.db);
    expect(first.map((r) => r.migrationName)).toEqual(migrationNames);
    expect(await migrateToLatest(database.db)).toEqual([]);
    expect(await appliedMigrations(database.db)).toEqual(migrationNames);
  });

  // Replicas share PostgreSQL only; a SQLite file belongs to one server process.
  it.skipIf(!fixture.available || fixture.engine !== 'postgres')(
    'two servers migrating one database at once apply each migration once',
    async () => {
      const location = await fixture.createLocation();
      const [a, b] = [await open(location), await open(location)];
      const results = await Promise.all([migrateToLatest(a.db), migrateToLatest(b.db)]);
      const applied = results.flat().map((r) => r.migrationName);
      expect(applied.sort()).toEqual([...migrationNames].sort());
      expect(await appliedMigrations(b.db)).toEqual(migrationNames);
    },
  );

  it.skipIf(!fixture.available)('round-trips epoch milliseconds and counts as numbers', async () => {
    const database = await open();
    await migrateToLatest(database.db);
    const at = 1_900_000_000_123;
    await database.db
      .insertInto('device_metric_batches')
      .values({
        device_name: 'd',
        fleet_name: 'f',
        received_at: at,
        first_timestamp: at,
        last_timestamp: at,
        metric_count: 1,
        metrics: JSON.stringify([['m', null, null, null, 0.125, at]]),
      })
      .execute();
    const row = await database.db.selectFrom('device_metric_batches').selectAll().executeTakeFirstOrThrow();
    expect(row.received_at).toBe(at);
    expect(row.metric_count).toBe(1);
    expect(JSON.parse(row.metrics)).toEqual([['m', null, null, null, 0.125, at]]);
    const { count } = await database.db
      .selectFrom('device_metric_batches')
      .select((eb) => eb.fn.countAll<number>().as('count'))
      .executeTakeFirstOrThrow();
    expect(count).toBe(1);
  });

  it.skipIf(!fixture.available)('reports unique and foreign-key violations recognisably', async () => {
    const database = await open();
    await migrateToLatest(database.db);
    const fleet = {
      name: 'f1',
      description: null,
      output_s3_location: 's3://b/p',
      output_kms_key_id: null,
      role_arn: null,
      tags: '[]',
      created_at: 1,
      updated_at: 1,
    };
    await database.db.insertInto('fleets').values(fleet).execute();
    const duplicate = await database.db
      .insertInto('fleets')
      .values(fleet)
      .execute()
      .catch((e: unknown) => e);
    expect(isUniqueViolation(duplicate)).toBe(true);
    expect(isForeignKeyViolation(duplicate)).toBe(false);

    const device = {
      name: 'd1',
      fleet_name: 'no-such-fleet',
      description: null,
      iot_thing_name: null,
      tags: '[]',
      registered_at: 1,
      updated_at: 1,
      agent_version: null,
      last_heartbeat_at: null,
      deployment_result: null,
    };
    const orphan = await database.db
      .insertInto('devices')
      .values(device)
      .execute()
      .catch((e: unknown) => e);
    expect(isForeignKeyViolation(orphan)).toBe(true);

    // A fleet with devices cannot be deleted; a device's tags go with it.
    await database.db
      .insertInto('devices')
      .values({ ...device, fleet_name: 'f1' })
      .execute();
    await database.db.insertInto('device_tags').values({ device_name: 'd1', key: 'k', value: 'v' }).execute();
    const restricted = await database.db
      .deleteFrom('fleets')
      .where('name', '=', 'f1')
      .execute()
      .catch((e: unknown) => e);
    expect(isForeignKeyViolation(restricted)).toBe(true);
    await database.db.deleteFrom('devices').where('name', '=', 'd1').execute();
    expect(await database.db.selectFrom('device_tags').selectAll().execute()).toEqual([]);
  });

  it.skipIf(!fixture.available)('keeps its state across close and reopen', async () => {
    const location = await fixture.createLocation();
    const first = await openDatabase(location);
    await migrateToLatest(first.db);
    await first.db.insertInto('server_settings').values({ key: 'k', value: 'v' }).execute();
    await first.close();
    const second = await open(location);
    expect(await migrateToLatest(second.db)).toEqual([]);
    const rows = await sql<{ value: string }>`select value from server_settings where key = 'k'`.execute(
      second.db,
    );
    expect(rows.rows).toEqual([{ value: 'v' }]);
  });
});
