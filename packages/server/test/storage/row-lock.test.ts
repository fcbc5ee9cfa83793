/**
 * storage lockingRows: the engine the caller gives (ServerDatabase.engine) chooses the lock, a real database
 * of each engine runs it. On PostgreSQL the SELECT must carry FOR UPDATE (the stale-progress and renewal
 * guards rely on it); SQLite has no FOR UPDATE and needs none.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { lockingRows } from '../../src/storage/index.js';
import type { ServerDatabase } from '../../src/storage/index.js';
import { databaseEngines, openFreshDatabase } from '../support/engines.js';

const engines = await databaseEngines();

describe.each(engines)('lockingRows on $engine', (fixture) => {
  let database: ServerDatabase;
  beforeAll(async () => {
    if (fixture.available) database = await openFreshDatabase(fixture);
  });
  afterAll(() => database?.close());

  it.skipIf(!fixture.available)('locks the rows it reads on PostgreSQL only, and runs', async () => {
    expect(database.engine).toBe(fixture.engine);
    await database.db.transaction().execute(async (trx) => {
      const query = lockingRows(database.engine, trx.selectFrom('devices').select('name'));
      expect(query.compile().sql.endsWith(' for update')).toBe(fixture.engine === 'postgres');
      expect(await query.execute()).toEqual([]);
    });
  });
});
