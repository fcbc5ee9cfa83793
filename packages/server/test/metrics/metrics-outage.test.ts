/**
 * GET /metrics while the database cannot be used: a token that scraped lately is still let in, so that the
 * scrape answers 200 with `edgefleet_server_database_usable 0` (the documented alert can fire) rather than the
 * 503 of the token lookup; a token never verified by this server, or revoked through it, is still refused.
 * Both engines, each with a real outage of its own: PostgreSQL stopped (or, on an external server, its database
 * dropped), SQLite's database closed under the running server.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { startTestPostgres } from '../support/postgres.js';
import { startTestServer, type TestServer } from '../support/server.js';

const postgres = await startTestPostgres();
const sqliteDir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-metrics-outage-'));
afterAll(async () => {
  await postgres?.stop();
  await rm(sqliteDir, { recursive: true, force: true });
});

interface Outage {
  engine: 'sqlite' | 'postgres';
  available: boolean;
  start(): Promise<TestServer>;
  /** Makes the running server's database unusable, for real. */
  breakDatabase(t: TestServer): Promise<void>;
  /** What a token lookup that fails answers on this engine. */
  refusal: { status: number; code: string };
}

const outages: Outage[] = [
  {
    engine: 'postgres',
    available: postgres !== undefined,
    start: async () =>
      startTestServer({
        database: { engine: 'postgres', url: await postgres!.createDatabase() },
        start: { fleetStateTtlMs: 0 },
      }),
    breakDatabase: () => postgres!.stop(),
    refusal: { status: 503, code: 'DependencyUnavailable' },
  },
  {
    engine: 'sqlite',
    available: true,
    start: () =>
      startTestServer({
        database: { engine: 'sqlite', file: path.join(sqliteDir, 'state.db') },
        start: { fleetStateTtlMs: 0 },
      }),
    breakDatabase: (t) => t.server.database.close(),
    // A closed SQLite database is no outage the server names (it has no other): refused all the same.
    refusal: { status: 500, code: 'InternalError' },
  },
];

describe.each(outages)('GET /metrics with the database down, on $engine', { timeout: 60_000 }, (outage) => {
  let t: TestServer | undefined;
  afterAll(async () => {
    await t?.stop().catch(() => undefined);
  });

  const scrape = (token: string) => t!.call('GET', '/metrics', { token });

  it.skipIf(!outage.available)(
    'answers a token that scraped lately 200 with database_usable 0; refuses one never seen or revoked here',
    async () => {
      t = await outage.start();
      const scraper = t.readToken;
      const revokedLater = (
        await t.call('POST', '/api/v1/tokens', {
          token: t.adminToken,
          body: { name: 'old-scraper', scope: 'read-only' },
        })
      ).body as { token: string; id: string };
      for (const token of [scraper, revokedLater.token]) {
        const before = await scrape(token);
        expect(before.status).toBe(200);
        expect(before.body).toMatch(/^edgefleet_server_database_usable 1$/m);
      }
      // Revoked through this server: forgotten at once, not after the minute.
      expect(
        (await t.call('DELETE', `/api/v1/tokens/${revokedLater.id}`, { token: t.adminToken })).status,
      ).toBe(204);
      // A token the server knows but that never scraped.
      const neverScraped = t.adminToken;

      await outage.breakDatabase(t);

      const during = await scrape(scraper);
      expect(during.status).toBe(200);
      expect(during.body).toMatch(/^edgefleet_server_database_usable 0$/m);
      // Still refused: every other route, and /metrics for a token not verified by a scrape here.
      expect(await t.call('GET', '/api/v1/fleets', { token: scraper })).toMatchObject({
        status: outage.refusal.status,
        body: { code: outage.refusal.code },
      });
      for (const token of [neverScraped, revokedLater.token, 'efo_never-issued'])
        expect(await scrape(token)).toMatchObject({
          status: outage.refusal.status,
          body: { code: outage.refusal.code },
        });
      expect((await t.call('GET', '/metrics')).status).toBe(401);
    },
  );
});
