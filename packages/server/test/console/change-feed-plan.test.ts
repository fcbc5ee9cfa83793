/**
 * The console change feed's poll stays cheap at fleet size: one statement, whose per-device reads (the newest
 * device update, the newest and the oldest online heartbeat, the newest target update) are each an index
 * walk that stops at its first entry. Checked on the database's own plan for the statement the feed runs,
 * over 10,000 devices and as many deployment targets, on both engines; and its values are those of the rows.
 */
import { CompiledQuery } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readSnapshot, snapshotQuery } from '../../src/console/change-feed.js';
import type { ServerDatabase } from '../../src/storage/index.js';
import { databaseEngines, openFreshDatabase } from '../support/engines.js';

const engines = await databaseEngines();
const DEVICES = 10_000;
const BATCH = 500;

describe.each(engines)('console change feed query plan on $engine', (fixture) => {
  let database: ServerDatabase;
  const at = 1_800_000_000_000;
  // A third never seen; the rest heard from over the last 997 s.
  const heartbeatOf = (i: number) => (i % 3 === 0 ? null : at - (i % 997) * 1000);
  const onlineSince = at - 500_000;

  beforeAll(async () => {
    if (!fixture.available) return;
    database = await openFreshDatabase(fixture);
    const { db } = database;
    await db
      .insertInto('fleets')
      .values({ name: 'big', output_s3_location: 's3://big/', tags: '[]', created_at: at, updated_at: at })
      .execute();
    await db
      .insertInto('deployment_plans')
      .values({
        name: 'rollout',
        fleet_name: 'big',
        model_configs: '[]',
        options: '{}',
        tags: '[]',
        created_at: at,
        updated_at: at,
      })
      .execute();
    await db
      .insertInto('deployment_stages')
      .values({
        plan_name: 'rollout',
        name: 'all',
        position: 0,
        selection: '{}',
        failure_policy: '{}',
        status: 'INPROGRESS',
        status_message: null,
        started_at: at,
        ended_at: null,
        updated_at: at,
      })
      .execute();
    for (let start = 0; start < DEVICES; start += BATCH) {
      const names = Array.from({ length: BATCH }, (_, i) => start + i);
      await db
        .insertInto('devices')
        .values(
          names.map((i) => ({
            name: `cam-${String(i).padStart(5, '0')}`,
            fleet_name: 'big',
            tags: '[]',
            registered_at: at - i,
            updated_at: at - i * 7,
            last_heartbeat_at: heartbeatOf(i),
          })),
        )
        .execute();
      await db
        .insertInto('deployment_targets')
        .values(
          names.map((i) => ({
            plan_name: 'rollout',
            device_name: `cam-${String(i).padStart(5, '0')}`,
            stage_name: 'all',
            fleet_name: 'big',
            status: 'INPROGRESS',
            status_message: null,
            attempts: 1,
            result_digest: null,
            started_at: at,
            ended_at: null,
            updated_at: at - i * 3,
          })),
        )
        .execute();
    }
    await db.executeQuery(CompiledQuery.raw('analyze'));
  });
  afterAll(() => database?.close());

  const plan = async (): Promise<string> => {
    const compiled = snapshotQuery(database.db, onlineSince).compile();
    const explain = fixture.engine === 'sqlite' ? 'explain query plan ' : 'explain ';
    const result = await database.db.executeQuery<Record<string, unknown>>(
      CompiledQuery.raw(explain + compiled.sql, [...compiled.parameters]),
    );
    return result.rows.map((row) => String(row.detail ?? row['QUERY PLAN'])).join('\n');
  };

  it.skipIf(!fixture.available)('reads each newest or oldest value as one index entry', async () => {
    const text = await plan();
    if (fixture.engine === 'sqlite') {
      // One scalar subquery per value, in the one statement.
      expect(text.match(/SCALAR SUBQUERY/g), text).toHaveLength(21);
      expect(text, text).toContain('devices_updated_at');
      // The oldest online heartbeat starts at the online line in the expression index.
      expect(text, text).toMatch(/SEARCH devices USING COVERING INDEX devices_last_seen \(<expr>>\?\)/);
      expect(text, text).toContain('deployment_targets_updated_at');
    } else {
      // One statement: every value is an InitPlan of it.
      expect(text.match(/InitPlan \d+/g), text).toHaveLength(21);
      expect(text, text).toMatch(/Limit.*\n.*Scan Backward using devices_updated_at on devices/);
      // An expression index is not read index-only: the Limit stops it at one entry and its row.
      expect(text, text).toMatch(/Limit.*\n.*Index (Only )?Scan Backward using devices_last_seen on devices/);
      expect(text, text).toMatch(
        /Limit.*\n.*Index (Only )?Scan using devices_last_seen on devices.*\n.*Index Cond: \(COALESCE/,
      );
      expect(text, text).toMatch(
        /Limit.*\n.*Scan Backward using deployment_targets_updated_at on deployment_targets/,
      );
    }
    // Each `order by … limit 1` is served by its index: no sort of the table (SQLite's temp B-tree,
    // PostgreSQL's Sort node), so it stops at the first entry.
    expect(text, text).not.toMatch(/TEMP B-TREE|Sort/);
  });

  it.skipIf(!fixture.available)('gives the values of the rows', async () => {
    const row = await snapshotQuery(database.db, onlineSince).executeTakeFirstOrThrow();
    const heartbeats = Array.from({ length: DEVICES }, (_, i) => heartbeatOf(i) ?? -1);
    expect(Number(row.devices_n)).toBe(DEVICES);
    expect(Number(row.devices_u)).toBe(at);
    expect(Number(row.devices_h)).toBe(Math.max(...heartbeats));
    expect(Number(row.devices_oldest_online)).toBe(Math.min(...heartbeats.filter((h) => h > onlineSince)));
    expect(Number(row.targets_t)).toBe(at);
    // And the feed's fingerprints come from it.
    expect((await readSnapshot(database.db, onlineSince)).devices).toContain(
      String(row.devices_oldest_online),
    );
  });
});
