/**
 * PostgreSQL reporting damaged data or an internal error (SQLSTATE class XX) is answered as SQLite's damage is:
 * 503 DependencyUnavailable, cause databaseDamaged, one log line saying what the operator does; the server goes on
 * serving (it does not own PostgreSQL's files). Before, these were 500 InternalError. The errors come from a real
 * PostgreSQL: a trigger raises each code as the server writes a fleet.
 */
import { sql } from 'kysely';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCalls } from '../support/deployment-calls.js';
import { databaseEngines } from '../support/engines.js';
import { startTestServer, type TestServer } from '../support/server.js';

const engines = (await databaseEngines()).filter((fixture) => fixture.engine === 'postgres');

describe.each(engines)('PostgreSQL damage codes on $engine', (fixture) => {
  let t: TestServer;
  const { admin, createFleet } = adminCalls(() => t);
  const lines: { level: number; msg: string; component?: string }[] = [];

  beforeAll(async () => {
    if (!fixture.available) return;
    t = await startTestServer({
      database: await fixture.createLocation(),
      logger: pino({ level: 'info' }, { write: (line: string) => lines.push(JSON.parse(line)) }),
    });
    // A fleet named damaged-<SQLSTATE> fails as PostgreSQL fails on damaged data: with that code.
    await sql`create function edgefleet_test_damage() returns trigger language plpgsql as $$
      begin
        if new.name like 'damaged-%' then
          raise exception 'test damage' using errcode = substr(new.name, 9);
        end if;
        return new;
      end $$`.execute(t.server.database.db);
    await sql`create trigger edgefleet_test_damage before insert on fleets for each row
      execute function edgefleet_test_damage()`.execute(t.server.database.db);
  });
  afterAll(() => t?.stop());

  it.skipIf(!fixture.available).each(['XX000', 'XX001', 'XX002'])(
    'answers %s with 503 databaseDamaged, logs what to do, and goes on serving',
    async (code) => {
      const before = lines.length;
      const answer = await admin('POST', '/api/v1/fleets', {
        name: `damaged-${code}`,
        outputConfig: { s3OutputLocation: 's3://c/d' },
      });
      expect(answer.status).toBe(503);
      expect(answer.body).toMatchObject({
        code: 'DependencyUnavailable',
        details: { component: 'database', cause: 'databaseDamaged' },
      });
      expect(answer.body.message).toContain(`SQLSTATE ${code}`);
      expect(answer.body.message).toMatch(/an operator must repair it or restore PostgreSQL's backup/);
      // Logged once a minute per component: the first of the three is the one line.
      if (code === 'XX000') {
        const logged = lines.slice(before).filter((line) => line.component === 'database');
        expect(logged).toHaveLength(1);
        expect(logged[0]!.level).toBe(50);
        expect(logged[0]!.msg).toMatch(/SQLSTATE XX000: an operator must repair it .*docs\/operations\.md/);
      }
      // Not given up: what does not meet the damage still works.
      await createFleet(`healthy-${code.toLowerCase()}`);
    },
  );

  it.skipIf(!fixture.available)('counts them in /metrics as database errors of kind damaged', async () => {
    const metrics = await t.call('GET', '/metrics', { token: t.readToken });
    expect(String(metrics.body)).toMatch(/^edgefleet_server_database_errors_total\{kind="damaged"\} 3$/m);
  });
});
