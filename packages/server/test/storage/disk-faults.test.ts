/**
 * A full disk under the SQLite database, made for real: `PRAGMA max_page_count` on the server's own connection
 * to a real database file, so the next write that needs a page fails with SQLITE_FULL. SQLite has then rolled
 * the transaction back itself; the error that says why must be the one thrown, not kysely's failed ROLLBACK.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { sql, type Kysely } from 'kysely';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  DatabaseUnavailableError,
  diskFaultOf,
  isDatabaseOutage,
  openDatabase,
  type ServerDatabase,
} from '../../src/storage/index.js';
import { diskFaultComponentOf } from '../../src/errors/dependency-unavailable.js';

describe('a transaction on a full SQLite disk', () => {
  let dir: string;
  let database: ServerDatabase;
  const rollbackFailures: { error: unknown; outcome: string }[] = [];
  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-disk-full-'));
    rollbackFailures.length = 0;
    database = await openDatabase(
      { engine: 'sqlite', file: path.join(dir, 'state.db') },
      { onRollbackFailure: (error, outcome) => rollbackFailures.push({ error, outcome }) },
    );
    await sql`create table t (v blob)`.execute(database.db);
  });
  afterEach(async () => {
    await database.close();
    await rm(dir, { recursive: true, force: true });
  });

  /** Caps the file at the pages it has now: SQLite answers SQLITE_FULL for the next page it needs. */
  async function fillDisk(): Promise<void> {
    const { rows } = await sql<{ page_count: number }>`pragma page_count`.execute(database.db);
    await sql.raw(`pragma max_page_count = ${rows[0]!.page_count}`).execute(database.db);
  }

  it('throws SQLITE_FULL, an outage, not "cannot rollback - no transaction is active"', async () => {
    await fillDisk();
    const failure: unknown = await database.db
      .transaction()
      .execute(async (trx) => {
        await sql`insert into t (v) values (${Buffer.alloc(64 * 1024)})`.execute(trx);
      })
      .then(
        () => undefined,
        (error: unknown) => error,
      );
    expect(failure).toMatchObject({ code: 'SQLITE_FULL' });
    expect(String((failure as Error).message)).not.toMatch(/rollback/);
    expect(isDatabaseOutage(failure)).toBe(true);
    expect(diskFaultOf(failure)).toBe('full');
    // SQLite had ended the transaction: no ROLLBACK was tried, so none failed.
    expect(rollbackFailures).toEqual([]);

    // Space freed: the same connection writes again (no transaction was left open on it).
    await sql.raw('pragma max_page_count = 1000000').execute(database.db);
    await database.db.transaction().execute(async (trx) => {
      await sql`insert into t (v) values (${Buffer.alloc(64 * 1024)})`.execute(trx);
    });
    const { rows } = await sql<{ n: number }>`select count(*) as n from t`.execute(database.db);
    expect(rows[0]!.n).toBe(1);
  });

  it('rolls back as before a transaction that failed for another reason', async () => {
    const failure: unknown = await database.db
      .transaction()
      .execute(async (trx) => {
        await sql`insert into t (v) values (${'kept until the rollback'})`.execute(trx);
        throw new Error('the callback failed');
      })
      .then(
        () => undefined,
        (error: unknown) => error,
      );
    expect(failure).toMatchObject({ message: 'the callback failed' });
    const { rows } = await sql<{ n: number }>`select count(*) as n from t`.execute(database.db);
    expect(rows[0]!.n).toBe(0);
    expect(rollbackFailures).toEqual([]);
  });

  it('refuses every later use when a ROLLBACK fails and leaves the transaction open', async () => {
    await sql`insert into t (v) values (${'a'}), (${'b'})`.execute(database.db);
    let reading: AsyncIterator<unknown> | undefined;
    const failure: unknown = await database.db
      .transaction()
      .execute(async (trx) => {
        await sql`insert into t (v) values (${'never committed'})`.execute(trx);
        // A query still being read keeps the connection busy: SQLite refuses the ROLLBACK (both tries).
        const rows = (trx as unknown as Kysely<{ t: { v: string } }>).selectFrom('t').selectAll().stream();
        reading = rows[Symbol.asyncIterator]();
        await reading.next();
        throw new Error('the callback failed');
      })
      .then(
        () => undefined,
        (error: unknown) => error,
      );
    expect(failure).toMatchObject({ message: 'the callback failed' });
    expect(rollbackFailures.map(({ outcome }) => outcome)).toEqual(['unusable']);
    // The connection is still inside the transaction: a write now would join it and be lost at restart.
    const later: unknown = await sql`insert into t (v) values (${'after'})`.execute(database.db).then(
      () => undefined,
      (error: unknown) => error,
    );
    expect(later).toBeInstanceOf(DatabaseUnavailableError);
    expect(String((later as Error).message)).toMatch(/restart the server/);
    // Lets the connection close at the end of the test (a server exits instead).
    await reading?.return?.();
  });

  it('refuses a use that was waiting for the connection while the failed transaction held it', async () => {
    let reading: AsyncIterator<unknown> | undefined;
    let waiting: Promise<unknown> | undefined;
    await database.db
      .transaction()
      .execute(async (trx) => {
        await sql`insert into t (v) values (${'never committed'})`.execute(trx);
        // Queued behind the transaction: it gets the connection right after the failed ROLLBACK.
        waiting = sql`insert into t (v) values (${'waited'})`.execute(database.db).then(
          () => undefined,
          (error: unknown) => error,
        );
        const rows = (trx as unknown as Kysely<{ t: { v: string } }>).selectFrom('t').selectAll().stream();
        reading = rows[Symbol.asyncIterator]();
        await reading.next();
        throw new Error('the callback failed');
      })
      .catch(() => undefined);
    expect(rollbackFailures.map(({ outcome }) => outcome)).toEqual(['unusable']);
    expect(await waiting).toBeInstanceOf(DatabaseUnavailableError);
    await reading?.return?.();
  });
});

describe('writes that reached the SQLite file (onWriteCommitted)', () => {
  let dir: string;
  let database: ServerDatabase;
  let heard = 0;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-write-committed-'));
    heard = 0;
    database = await openDatabase(
      { engine: 'sqlite', file: path.join(dir, 'state.db') },
      { onWriteCommitted: () => void (heard += 1) },
    );
    await sql`create table t (v text)`.execute(database.db);
    heard = 0;
  });
  afterEach(async () => {
    await database.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('hears a write outside a transaction and a committed transaction that changed rows, once each', async () => {
    await sql`insert into t (v) values (${'a'})`.execute(database.db);
    expect(heard).toBe(1);
    await database.db.transaction().execute(async (trx) => {
      await sql`insert into t (v) values (${'b'})`.execute(trx);
      await sql`insert into t (v) values (${'c'})`.execute(trx);
      // Not yet: the transaction may still fail at its COMMIT.
      expect(heard).toBe(1);
    });
    expect(heard).toBe(2);
  });

  it('does not hear reads, writes that changed nothing, or a transaction rolled back', async () => {
    await sql`select count(*) from t`.execute(database.db);
    await sql`update t set v = ${'x'} where v = ${'absent'}`.execute(database.db);
    await database.db
      .transaction()
      .execute(async (trx) => {
        await sql`insert into t (v) values (${'undone'})`.execute(trx);
        throw new Error('the callback failed');
      })
      .catch(() => undefined);
    expect(heard).toBe(0);
  });

  it('does not hear a write that changed nothing after a transaction SQLite rolled back itself (SQLITE_FULL)', async () => {
    // Room for the small insert's page, not for the large one: SQLite ends the transaction itself.
    const { rows } = await sql<{ page_count: number }>`pragma page_count`.execute(database.db);
    await sql.raw(`pragma max_page_count = ${rows[0]!.page_count + 1}`).execute(database.db);
    const failure = await database.db
      .transaction()
      .execute(async (trx) => {
        await sql`insert into t (v) values (${'small'})`.execute(trx);
        await sql`insert into t (v) values (${'x'.repeat(256 * 1024)})`.execute(trx);
      })
      .then(
        () => undefined,
        (error: unknown) => error,
      );
    expect(failure).toMatchObject({ code: 'SQLITE_FULL' });
    // A sweeper's UPDATE matching no row, then a read-only transaction: nothing reached the file.
    await sql`update t set v = ${'x'} where v = ${'absent'}`.execute(database.db);
    await database.db.transaction().execute(async (trx) => {
      await sql`select count(*) from t`.execute(trx);
    });
    const { rows: left } = await sql<{ n: number }>`select count(*) as n from t`.execute(database.db);
    expect(left[0]!.n).toBe(0);
    expect(heard).toBe(0);
  });

  it('hears a write that returns rows (RETURNING)', async () => {
    await sql`insert into t (v) values (${'a'}) returning v`.execute(database.db);
    expect(heard).toBe(1);
  });
});

describe('which disk fault an error is, and whose', () => {
  const coded = (code: string, message = code) => Object.assign(new Error(message), { code });

  it('takes SQLITE_IOERR_NOMEM for what it is, memory, not a disk error', () => {
    expect(diskFaultOf(coded('SQLITE_IOERR_NOMEM'))).toBeUndefined();
    expect(diskFaultComponentOf(coded('SQLITE_IOERR_NOMEM'))).toBeUndefined();
    expect(diskFaultOf(coded('SQLITE_IOERR_WRITE'))).toBe('io');
  });

  it("names the database for a SQLite error wrapped in a plain Error, the blob store for a file system's", () => {
    const wrapped = new Error('saving the device failed', { cause: coded('SQLITE_FULL') });
    expect(diskFaultComponentOf(wrapped)).toEqual({ component: 'database', fault: 'full' });
    const fileSystem = new Error('writing the blob failed', { cause: coded('ENOSPC') });
    expect(diskFaultComponentOf(fileSystem)).toEqual({ component: 'blobStore', fault: 'full' });
  });
});
