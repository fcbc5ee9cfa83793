/**
 * The plan list newest first (order=newest), across fleets or of one, is an index walk from the page's position:
 * no scan of every plan, no sort of them. Before migration 0025 there was no index on (created_at, name), so
 * every page of the list sorted all plans. Checked on the database's own plan, over 5,000 plans, on both engines.
 */
import { CompiledQuery } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { planListQuery, type PlanListQuery } from '../../src/deployments/index.js';
import type { ServerDatabase } from '../../src/storage/index.js';
import { databaseEngines, openFreshDatabase } from '../support/engines.js';

const engines = await databaseEngines();
const PLANS = 5_000;
const FLEETS = 10;

describe.each(engines)('plan list query plans on $engine', (fixture) => {
  let database: ServerDatabase;
  beforeAll(async () => {
    if (!fixture.available) return;
    database = await openFreshDatabase(fixture);
    const at = Date.now();
    await database.db
      .insertInto('fleets')
      .values(
        Array.from({ length: FLEETS }, (_, i) => ({
          name: `fleet-${i}`,
          output_s3_location: `s3://out/${i}`,
          tags: '[]',
          created_at: at,
          updated_at: at,
        })),
      )
      .execute();
    for (let start = 0; start < PLANS; start += 500) {
      await database.db
        .insertInto('deployment_plans')
        .values(
          Array.from({ length: 500 }, (_, i) => ({
            name: `plan-${String(start + i).padStart(5, '0')}`,
            fleet_name: `fleet-${(start + i) % FLEETS}`,
            model_configs: '[]',
            options: '{}',
            tags: '[]',
            // Some share a creation time: the name breaks the tie.
            created_at: at - Math.floor((start + i) / 2) * 1000,
            updated_at: at,
          })),
        )
        .execute();
    }
    await database.db.executeQuery(CompiledQuery.raw('analyze'));
  });
  afterAll(() => database?.close());

  const plan = async (query: PlanListQuery): Promise<string> => {
    const compiled = planListQuery(database.db, query).compile();
    const explain = fixture.engine === 'sqlite' ? 'explain query plan ' : 'explain ';
    const result = await database.db.executeQuery<Record<string, unknown>>(
      CompiledQuery.raw(explain + compiled.sql, [...compiled.parameters]),
    );
    return result.rows.map((row) => String(row.detail ?? row['QUERY PLAN'])).join('\n');
  };

  const after = { createdAt: Date.now() - 1_000_000, name: 'plan-02000' };
  const cases: [PlanListQuery, string][] = [
    [{ limit: 51, order: 'newest' }, 'deployment_plans_newest'],
    [{ limit: 51, order: 'newest', afterNewest: after }, 'deployment_plans_newest'],
    [{ limit: 51, order: 'newest', fleetName: 'fleet-3' }, 'deployment_plans_fleet_newest'],
    [
      { limit: 51, order: 'newest', fleetName: 'fleet-3', afterNewest: after },
      'deployment_plans_fleet_newest',
    ],
  ];
  it.skipIf(!fixture.available).each(cases)('walks an index for %o', async (query, index) => {
    const text = await plan(query);
    expect(text, text).toContain(index);
    // No sort of the plans: SQLite's temp B-tree, PostgreSQL's Sort node.
    expect(text, text).not.toMatch(/TEMP B-TREE|Sort/);
    // And the page it gives is the order asked for.
    const rows = await planListQuery(database.db, query).execute();
    expect(rows).toHaveLength(51);
    const keys = rows.map((r) => [Number(r.created_at), r.name] as const);
    for (let i = 1; i < keys.length; i++) {
      const [a, b] = [keys[i - 1]!, keys[i]!];
      expect(a[0] > b[0] || (a[0] === b[0] && a[1] > b[1]), `${a} before ${b}`).toBe(true);
    }
  });
});
