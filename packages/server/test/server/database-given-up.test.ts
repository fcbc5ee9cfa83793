/**
 * A server that gives its database up stops and exits, rather than answering 503 until someone restarts it by
 * hand. Two ways it gives up: SQLite found the file damaged while serving (a real `serve` process, its file
 * damaged under it as a disk would: pages overwritten; exit 2, not restarted), and a failed transaction left
 * open on the one SQLite connection (a real server in this process, the ROLLBACK refused by SQLite itself; exit
 * 3, restarted). One shutdown whenever it happens: while starting, while serving, during a close under way.
 */
import { copyFile, mkdtemp, open, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import SqliteDatabase from 'better-sqlite3';
import { sql, type Kysely } from 'kysely';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DATABASE_DAMAGED_EXIT_CODE,
  DATABASE_GIVEN_UP_EXIT_CODE,
  type DatabaseGivenUp,
} from '../../src/server/index.js';
import { DatabaseOpenError } from '../../src/storage/index.js';
import { noise } from '../support/noise.js';
import { runServerCli, startServerProcess } from '../support/process.js';
import { startTestServer } from '../support/server.js';

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

  it('answers 503 databaseDamaged, logs one line with the way out, exits 2 (not restarted), as a start would', async () => {
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

      // Not 3: a restart could not help, and its start check may not see the damage (a file over 1 GiB, an
      // index no longer matching its table), which would serve and exit again for ever.
      expect(await exited).toBe(DATABASE_DAMAGED_EXIT_CODE);
      const givenUp = server.logs.filter((line) => line.event === 'database_given_up');
      expect(givenUp).toHaveLength(1);
      expect(givenUp[0]).toMatchObject({
        level: 50,
        reason: 'damaged',
        exitCode: DATABASE_DAMAGED_EXIT_CODE,
      });
      expect(String(givenUp[0]!.msg)).toContain(`exiting with code ${DATABASE_DAMAGED_EXIT_CODE}`);
      expect(String(givenUp[0]!.msg)).toContain(`the SQLite database ${stateDb} is damaged`);
      expect(String(givenUp[0]!.msg)).toContain('edgefleet-server restore --from <backup file>');
      expect(server.logs.some((line) => line.msg === 'edgefleet-server stopped')).toBe(true);
    } finally {
      await server.stop('SIGKILL');
    }

    // Started by hand anyway: the start check refuses the damaged file with the same code.
    const restarted = await runServerCli(['serve', '--config', config, '--log-level', 'warn'], dataDir);
    expect(restarted.code).toBe(2);
    expect(restarted.stderr).toContain(`the SQLite database ${stateDb} is damaged (`);
  });
});

/**
 * Sends GET /readyz on a raw connection and resolves once the server has taken the request in (its
 * `100 Continue`, written when the request is handed to the app): the request is then in flight, and a close
 * waits for its answer. `answer` resolves with the status and the body.
 */
async function probeInFlight(url: string): Promise<{ answer: Promise<{ status: number; body: string }> }> {
  const { hostname, port } = new URL(url);
  const socket = net.connect(Number(port), hostname);
  let received = '';
  let taken: () => void = () => undefined;
  const inFlight = new Promise<void>((resolve) => (taken = resolve));
  const answer = new Promise<{ status: number; body: string }>((resolve, reject) => {
    socket.on('data', (chunk) => {
      received += chunk.toString('latin1');
      if (received.startsWith('HTTP/1.1 100')) taken();
      const response = received.replace(/^HTTP\/1\.1 100[^\n]*\r\n\r\n/, '');
      const final = /^HTTP\/1\.1 ([2-5]\d\d)[^]*?\r\ncontent-length: (\d+)\r\n[^]*?\r\n\r\n/i.exec(response);
      if (final !== null && response.length >= final[0].length + Number(final[2])) {
        resolve({ status: Number(final[1]), body: response.slice(final[0].length) });
        socket.destroy();
      }
    });
    socket.on('error', reject);
    socket.on('close', () => reject(new Error(`closed without an answer: ${JSON.stringify(received)}`)));
  });
  answer.catch(() => undefined);
  socket.write(
    'GET /readyz HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n',
  );
  await Promise.race([inFlight, answer]);
  return { answer };
}

/**
 * In `trx`: a write, then a query still being read, which keeps the connection busy so that SQLite refuses the
 * ROLLBACK (both tries) once the callback throws. Resolves the stream's iterator, to end as a request's would.
 */
async function holdReadOpen(trx: Kysely<{ api_tokens: { id: string } }>): Promise<AsyncIterator<unknown>> {
  await sql`update api_tokens set name = name`.execute(trx);
  const reading = trx.selectFrom('api_tokens').select('id').stream()[Symbol.asyncIterator]();
  await reading.next();
  return reading;
}

describe('a transaction left open on the SQLite connection', { timeout: 60_000 }, () => {
  it('stops the server: a probe in flight answers not ready, one error line, then the supervisor callback; exit 3', async () => {
    const lines: Record<string, unknown>[] = [];
    const logger = pino(
      { level: 'info' },
      { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) },
    );
    let stopped: (givenUp: DatabaseGivenUp) => void = () => undefined;
    const givenUp = new Promise<DatabaseGivenUp>((resolve) => (stopped = resolve));
    const t = await startTestServer({ logger, start: { onStoppedForDatabaseGivenUp: (g) => stopped(g) } });
    let reading: AsyncIterator<unknown> | undefined;
    let probe: Awaited<ReturnType<typeof probeInFlight>> | undefined;
    try {
      expect((await t.call('GET', '/readyz')).status).toBe(200);
      const db = t.server.database.db as unknown as Kysely<{ api_tokens: { id: string } }>;
      await db
        .transaction()
        .execute(async (trx) => {
          reading = await holdReadOpen(trx);
          // Its ping waits for the connection this transaction holds; the close waits for its answer.
          probe = await probeInFlight(t.url);
          throw new Error('the callback failed');
        })
        .catch(() => undefined);
      // Decided at the give-up, before the close has begun.
      expect(t.server.exitCode()).toBe(DATABASE_GIVEN_UP_EXIT_CODE);
      await reading?.return?.();
      // Not ready because the server is stopping, said before its checks ran (the ping's failure would also be 503).
      const answer = await probe!.answer;
      expect(answer.status).toBe(503);
      expect(JSON.parse(answer.body)).toMatchObject({ message: 'the server is shutting down' });
      expect((await givenUp).reason).toBe('rollbackFailed');
      const logged = lines.filter((line) => line.event === 'database_given_up');
      expect(logged).toHaveLength(1);
      expect(logged[0]).toMatchObject({ exitCode: DATABASE_GIVEN_UP_EXIT_CODE });
      expect(String(logged[0]!.msg)).toMatch(/discards the transaction left open/);
      expect(lines.filter((line) => line.msg === 'edgefleet-server stopped')).toHaveLength(1);
      await expect(fetch(`${t.url}/healthz`)).rejects.toThrow();
    } finally {
      await t.stop();
    }
  });

  it('during a close already under way (SIGTERM): logs the line, keeps that one close, and its exit code wins', async () => {
    const lines: Record<string, unknown>[] = [];
    const logger = pino(
      { level: 'info' },
      { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) },
    );
    let callbacks = 0;
    const t = await startTestServer({
      logger,
      start: { onStoppedForDatabaseGivenUp: () => void (callbacks += 1) },
    });
    let reading: AsyncIterator<unknown> | undefined;
    let closed: Promise<void> | undefined;
    try {
      const db = t.server.database.db as unknown as Kysely<{ api_tokens: { id: string } }>;
      await db
        .transaction()
        .execute(async (trx) => {
          reading = await holdReadOpen(trx);
          // The signal's close begins; the failed ROLLBACK below comes within the same turn, before it ends.
          closed = t.server.close();
          throw new Error('the callback failed');
        })
        .catch(() => undefined);
      await reading?.return?.();
      await closed;
      const logged = lines.filter((line) => line.event === 'database_given_up');
      expect(logged).toHaveLength(1);
      expect(logged[0]).toMatchObject({ reason: 'rollbackFailed', exitCode: DATABASE_GIVEN_UP_EXIT_CODE });
      // What `serve` exits with after the signal's close: the give-up's code, not 0.
      expect(t.server.exitCode()).toBe(DATABASE_GIVEN_UP_EXIT_CODE);
      expect(lines.filter((line) => line.msg === 'edgefleet-server stopped')).toHaveLength(1);
      expect(callbacks).toBe(0);
    } finally {
      await t.stop();
    }
  });
});

/**
 * An index whose contents no longer match its table (its SQL rewritten to name another column), which
 * quick_check does not see, and a stale row the start's server registration deletes (a table scan: the index
 * names no column it filters on): that DELETE looks for the row's index entry, does not find it
 * (SQLITE_CORRUPT_INDEX), after the stores opened and the apps were built, before the server listens.
 */
function damageServerInstancesIndex(file: string): void {
  const other = new SqliteDatabase(file);
  try {
    other
      .prepare(
        `insert into server_instances (id, host, pid, version, schema_version, started_at, last_seen_at)
         values ('stale', 'elsewhere', 1, '0.0.0', 'none', 0, 0)`,
      )
      .run();
    other.exec('create index damaged_by_test on server_instances (pid)');
    // Defensive mode (better-sqlite3's default) forbids writing the schema table.
    other.unsafeMode(true);
    other.pragma('writable_schema = ON');
    other
      .prepare(
        `update sqlite_master set sql = 'CREATE INDEX damaged_by_test ON server_instances (host)' where name = 'damaged_by_test'`,
      )
      .run();
    other.pragma('writable_schema = OFF');
  } finally {
    other.close();
  }
  const check = new SqliteDatabase(file);
  try {
    expect(check.pragma('quick_check', { simple: true })).toBe('ok');
  } finally {
    check.close();
  }
}

describe('a database given up while the server starts', { timeout: 60_000 }, () => {
  it('fails the start once, with the damage (exit 2): no stop path, no supervisor callback', async () => {
    const dataDir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-given-up-start-'));
    try {
      const first = await startTestServer({ dataDir });
      const file = first.server.database.description.replace(/^sqlite:/, '');
      await first.stop();
      damageServerInstancesIndex(file);

      const lines: Record<string, unknown>[] = [];
      const logger = pino(
        { level: 'info' },
        { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) },
      );
      let callbacks = 0;
      const failure: unknown = await startTestServer({
        dataDir,
        logger,
        start: { onStoppedForDatabaseGivenUp: () => void (callbacks += 1) },
      }).then(
        async (t) => {
          await t.stop();
          return undefined;
        },
        (error: unknown) => error,
      );
      // The damage itself, which serve maps to exit 2 (DatabaseOpenError 'unsafe'), as the start check's.
      expect(failure).toBeInstanceOf(DatabaseOpenError);
      expect(failure).toMatchObject({ problem: 'unsafe' });
      expect((failure as Error).message).toContain(`the SQLite database ${file} is damaged`);
      await new Promise((resolve) => setImmediate(resolve));
      expect(callbacks).toBe(0);
      // The start's own failure reports it; no stop path ran beside it.
      expect(lines.filter((line) => line.event === 'database_given_up')).toEqual([]);
      expect(lines.filter((line) => line.msg === 'edgefleet-server stopped')).toEqual([]);
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});
