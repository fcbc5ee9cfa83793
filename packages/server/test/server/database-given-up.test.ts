/**
 * A server that gives its database up stops and exits for its supervisor to restart it, rather than answering 503
 * until someone restarts it by hand. Two ways it gives up: SQLite found the file damaged while serving (a real
 * `serve` process, its file damaged under it as a disk would: pages overwritten), and a failed transaction left
 * open on the one SQLite connection (a real server in this process, the ROLLBACK refused by SQLite itself).
 */
import { copyFile, mkdtemp, open, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import SqliteDatabase from 'better-sqlite3';
import { sql, type Kysely } from 'kysely';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DATABASE_GIVEN_UP_EXIT_CODE, type DatabaseGivenUp } from '../../src/server/index.js';
import { runServerCli, startServerProcess } from '../support/process.js';
import { startTestServer } from '../support/server.js';

/** Bytes that look random but are the same at every run (a linear congruential sequence). */
function noise(length: number, seed: number): Buffer {
  const bytes = Buffer.alloc(length);
  let state = seed;
  for (let i = 0; i < length; i++) {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    bytes[i] = state >>> 24;
  }
  return bytes;
}

/**
 * Overwrites every page of the api_tokens table and its indexes, through the file, after a write of another
 * connection: that write changes the WAL index, so a running server drops its page cache and reads the damaged
 * pages at its next query (as it would pages it had not cached).
 */
async function damageTokenPages(file: string): Promise<void> {
  const other = new SqliteDatabase(file);
  let pages: number[];
  let pageSize: number;
  try {
    pageSize = other.pragma('page_size', { simple: true }) as number;
    pages = (
      other
        .prepare(`select rootpage from sqlite_master where tbl_name = 'api_tokens' and rootpage > 0`)
        .all() as {
        rootpage: number;
      }[]
    ).map((row) => row.rootpage);
    other.pragma('user_version = 7');
    other.pragma('wal_checkpoint(TRUNCATE)');
  } finally {
    other.close();
  }
  const handle = await open(file, 'r+');
  try {
    for (const page of pages) await handle.write(noise(pageSize, page), 0, pageSize, (page - 1) * pageSize);
  } finally {
    await handle.close();
  }
}

describe('a SQLite database found damaged while serving', { timeout: 120_000 }, () => {
  let dataDir: string;
  let stateDb: string;
  let adminToken: string;
  beforeAll(async () => {
    dataDir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-given-up-'));
    const t = await startTestServer({ dataDir });
    stateDb = t.server.database.description.replace(/^sqlite:/, '');
    adminToken = t.adminToken;
    await t.stop();
    await copyFile(stateDb, `${stateDb}.intact`);
  });
  afterAll(async () => rm(dataDir, { recursive: true, force: true }));

  it('answers 503 databaseDamaged, logs one line with the way out, exits 3 (restarted); the restart refuses the file (exit 2)', async () => {
    const config = path.join(dataDir, 'test-config.json');
    const server = await startServerProcess(['--config', config, '--log-level', 'info'], dataDir);
    const exited = new Promise<number | null>((resolve) => {
      if (server.child.exitCode !== null) resolve(server.child.exitCode);
      else server.child.once('exit', (code) => resolve(code));
    });
    try {
      const before = await fetch(`${server.operatorUrl}/api/v1/fleets`, {
        headers: { authorization: `Bearer ${adminToken}` },
      });
      expect(before.status).toBe(200);

      await damageTokenPages(stateDb);
      const answer = await fetch(`${server.operatorUrl}/api/v1/fleets`, {
        headers: { authorization: `Bearer ${adminToken}` },
      });
      expect(answer.status).toBe(503);
      const body = (await answer.json()) as {
        code: string;
        message: string;
        details: Record<string, unknown>;
      };
      expect(body.code).toBe('DependencyUnavailable');
      expect(body.details).toMatchObject({ component: 'database', cause: 'databaseDamaged' });
      expect(body.message).toMatch(/damaged: an operator must restore a backup/);
      // The file's path stays in the log.
      expect(body.message).not.toContain(stateDb);

      expect(await exited).toBe(DATABASE_GIVEN_UP_EXIT_CODE);
      const givenUp = server.logs.filter((line) => line.event === 'database_given_up');
      expect(givenUp).toHaveLength(1);
      expect(givenUp[0]).toMatchObject({
        level: 50,
        reason: 'damaged',
        exitCode: DATABASE_GIVEN_UP_EXIT_CODE,
      });
      expect(String(givenUp[0]!.msg)).toContain(`exiting with code ${DATABASE_GIVEN_UP_EXIT_CODE}`);
      expect(String(givenUp[0]!.msg)).toContain(`the SQLite database ${stateDb} is damaged`);
      expect(String(givenUp[0]!.msg)).toContain('edgefleet-server restore --from <backup file>');
      expect(server.logs.some((line) => line.msg === 'edgefleet-server stopped')).toBe(true);
    } finally {
      await server.stop('SIGKILL');
    }

    // What the supervisor's restart meets: the start check refuses the damaged file, exit 2, which it does not restart.
    const restarted = await runServerCli(['serve', '--config', config, '--log-level', 'warn'], dataDir);
    expect(restarted.code).toBe(2);
    expect(restarted.stderr).toContain(`the SQLite database ${stateDb} is damaged (`);
  });
});

describe('a transaction left open on the SQLite connection', { timeout: 60_000 }, () => {
  it('stops the server: not ready at once, one error line, then the supervisor callback', async () => {
    const lines: Record<string, unknown>[] = [];
    const logger = pino(
      { level: 'info' },
      { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) },
    );
    let stopped: (givenUp: DatabaseGivenUp) => void = () => undefined;
    const givenUp = new Promise<DatabaseGivenUp>((resolve) => (stopped = resolve));
    const t = await startTestServer({ logger, start: { onStoppedForDatabaseGivenUp: (g) => stopped(g) } });
    let reading: AsyncIterator<unknown> | undefined;
    try {
      expect((await t.call('GET', '/readyz')).status).toBe(200);
      const db = t.server.database.db as unknown as Kysely<{ api_tokens: { id: string } }>;
      await db
        .transaction()
        .execute(async (trx) => {
          await sql`update api_tokens set name = name`.execute(trx);
          // A query still being read keeps the connection busy: SQLite refuses the ROLLBACK (both tries).
          reading = trx.selectFrom('api_tokens').select('id').stream()[Symbol.asyncIterator]();
          await reading.next();
          throw new Error('the callback failed');
        })
        .catch(() => undefined);
      // The stream ended, as a request's would: the connection can close (the transaction is still open on it).
      await reading?.return?.();
      const ready = await t.call('GET', '/readyz').catch(() => undefined);
      // Not ready at once; or already closed (the listener stopped accepting).
      if (ready !== undefined) expect(ready.status).toBe(503);
      expect((await givenUp).reason).toBe('rollbackFailed');
      const logged = lines.filter((line) => line.event === 'database_given_up');
      expect(logged).toHaveLength(1);
      expect(String(logged[0]!.msg)).toMatch(/discards the transaction left open/);
      await expect(fetch(`${t.url}/healthz`)).rejects.toThrow();
    } finally {
      await t.stop();
    }
  });
});
