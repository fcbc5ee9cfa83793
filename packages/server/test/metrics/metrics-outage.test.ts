/**
 * GET /metrics while the database cannot be used: a token that scraped lately is still let in, so that the
 * scrape answers 200 with `edgefleet_server_database_usable 0` (the documented alert can fire) rather than the
 * 503 of the token lookup; a token never verified by this server, revoked through it, or refused by the database
 * since (revoked through another replica), is still refused. Only an outage the server recognises lets a token in:
 * PostgreSQL stopped (or, on an external server, its database dropped). SQLite's reads cannot be made to fail
 * with another connection (in WAL mode a writer, even one holding BEGIN EXCLUSIVE, never blocks a reader), so its
 * arm closes the database under the running server, which is no outage but an error: nothing is let in.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { ApiTokenStore } from '../../src/auth/index.js';
import { startTestPostgres } from '../support/postgres.js';
import { startTestServer, type TestServer } from '../support/server.js';

const postgres = await startTestPostgres();
/** The servers' log lines, to count the fallback's warning. */
const logLines: Array<{ event?: string }> = [];
const logger = pino(
  { level: 'warn' },
  new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n').filter(Boolean)) logLines.push(JSON.parse(line));
      done();
    },
  }),
);
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
  /** Whether the server recognises the break as an outage of its database, and so lets a recent scraper in. */
  recognised: boolean;
}

const outages: Outage[] = [
  {
    engine: 'postgres',
    available: postgres !== undefined,
    start: async () =>
      startTestServer({
        database: { engine: 'postgres', url: await postgres!.createDatabase() },
        start: { fleetStateTtlMs: 0 },
        logger,
      }),
    breakDatabase: () => postgres!.stop(),
    refusal: { status: 503, code: 'DependencyUnavailable' },
    recognised: true,
  },
  {
    engine: 'sqlite',
    available: true,
    start: () =>
      startTestServer({
        database: { engine: 'sqlite', file: path.join(sqliteDir, 'state.db') },
        start: { fleetStateTtlMs: 0 },
        logger,
      }),
    breakDatabase: (t) => t.server.database.close(),
    // A closed SQLite database is no outage the server names but an error: no remembered token is let in.
    refusal: { status: 500, code: 'InternalError' },
    recognised: false,
  },
];

describe.each(outages)('GET /metrics with the database down, on $engine', { timeout: 60_000 }, (outage) => {
  let t: TestServer | undefined;
  afterAll(async () => {
    await t?.stop().catch(() => undefined);
  });

  const scrape = (token: string) => t!.call('GET', '/metrics', { token });

  it.skipIf(!outage.available)(
    'answers a token that scraped lately 200 with database_usable 0 in an outage; refuses one never seen or revoked',
    async () => {
      logLines.length = 0;
      t = await outage.start();
      const scraper = t.readToken;
      const revokedLater = (
        await t.call('POST', '/api/v1/tokens', {
          token: t.adminToken,
          body: { name: 'old-scraper', scope: 'read-only' },
        })
      ).body as { token: string; id: string };
      const revokedElsewhere = (
        await t.call('POST', '/api/v1/tokens', {
          token: t.adminToken,
          body: { name: 'replica-revoked-scraper', scope: 'read-only' },
        })
      ).body as { token: string; id: string };
      for (const token of [scraper, revokedLater.token, revokedElsewhere.token]) {
        const before = await scrape(token);
        expect(before.status).toBe(200);
        expect(before.body).toMatch(/^edgefleet_server_database_usable 1$/m);
      }
      // Revoked through this server: forgotten at once, not after the minute.
      expect(
        (await t.call('DELETE', `/api/v1/tokens/${revokedLater.id}`, { token: t.adminToken })).status,
      ).toBe(204);
      // Revoked through another replica (a store of its own on the same database): this server hears nothing,
      // but its next scrape is refused by the database, which makes the server forget the token.
      await new ApiTokenStore(t.server.database.db).revoke(revokedElsewhere.id);
      expect((await scrape(revokedElsewhere.token)).status).toBe(401);
      // A token the server knows but that never scraped.
      const neverScraped = t.adminToken;

      await outage.breakDatabase(t);

      const during = await scrape(scraper);
      if (outage.recognised) {
        expect(during.status).toBe(200);
        expect(during.body).toMatch(/^edgefleet_server_database_usable 0$/m);
      } else {
        expect(during).toMatchObject({ status: outage.refusal.status, body: { code: outage.refusal.code } });
      }
      // Still refused: every other route, and /metrics for a token not verified by a scrape here.
      expect(await t.call('GET', '/api/v1/fleets', { token: scraper })).toMatchObject({
        status: outage.refusal.status,
        body: { code: outage.refusal.code },
      });
      for (const token of [neverScraped, revokedLater.token, revokedElsewhere.token, 'efo_never-issued'])
        expect(await scrape(token)).toMatchObject({
          status: outage.refusal.status,
          body: { code: outage.refusal.code },
        });
      expect((await t.call('GET', '/metrics')).status).toBe(401);
      // Told once per outage, however many scrapes it lets in; never for an error that is no outage.
      if (outage.recognised) expect((await scrape(scraper)).status).toBe(200);
      expect(logLines.filter((line) => line.event === 'metrics_token_fallback')).toHaveLength(
        outage.recognised ? 1 : 0,
      );
    },
  );
});
