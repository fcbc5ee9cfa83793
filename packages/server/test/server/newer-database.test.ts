/**
 * A database migrated by a newer build (a downgrade, or a rolled-back package): every command that opens it
 * refuses before writing, names the unknown migrations and what to do, and exits with the "a person must act"
 * code the systemd unit does not restart on.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import SqliteDatabase from 'better-sqlite3';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  migrateToLatest,
  migrationNames,
  NewerDatabaseError,
  openDatabase,
} from '../../src/storage/index.js';
import { restoreSqlite } from '../../src/backup/index.js';
import { databaseEngines } from '../support/engines.js';
import { runServerCli } from '../support/process.js';
import { startTestServer } from '../support/server.js';

const engines = await databaseEngines();
const FUTURE = '9999_from_a_newer_build';
const version = (
  JSON.parse(await readFile(new URL('../../package.json', import.meta.url), 'utf8')) as {
    version: string;
  }
).version;

describe.each(engines)('a database a newer build migrated, on $engine', (fixture) => {
  it.skipIf(!fixture.available)('the server refuses to start on it and changes nothing', async () => {
    const location = await fixture.createLocation();
    const database = await openDatabase(location);
    try {
      await migrateToLatest(database.db);
      await sql`insert into edgefleet_migrations (name, timestamp) values (${FUTURE}, '2030-01-01T00:00:00.000Z')`.execute(
        database.db,
      );
    } finally {
      await database.close();
    }
    const failure = await startTestServer({ database: location }).then(
      async (started) => {
        await started.stop();
        return undefined;
      },
      (error: unknown) => error,
    );
    expect(failure).toBeInstanceOf(NewerDatabaseError);
    expect((failure as NewerDatabaseError).unknown).toEqual([FUTURE]);
    expect((failure as Error).message).toMatch(
      new RegExp(
        `made by a newer EdgeFleet: migration ${FUTURE} is unknown to this build \\(version ${version.replace(/\./g, '\\.')}, schema ${migrationNames.at(-1)}\\); run the newer build, or restore the backup taken before the upgrade`,
      ),
    );
    expect((failure as Error).message).not.toMatch(/corrupted/);
    const after = await openDatabase(location);
    try {
      const rows = await sql<{ name: string }>`select name from edgefleet_migrations order by name`.execute(
        after.db,
      );
      expect(rows.rows.map((r) => r.name)).toEqual([...migrationNames, FUTURE]);
    } finally {
      await after.close();
    }
  });
});

describe('edgefleet-server on a newer build’s SQLite database (real processes)', { timeout: 120_000 }, () => {
  let cwd: string;
  let dataDir: string;
  let stateFile: string;
  const sha = async () =>
    createHash('sha256')
      .update(await readFile(stateFile))
      .digest('hex');

  beforeAll(async () => {
    cwd = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-newer-'));
    dataDir = path.join(cwd, 'data');
    expect((await runServerCli(['init', '--data-dir', dataDir], cwd)).code).toBe(0);
    stateFile = path.join(dataDir, 'state.db');
    const sqlite = new SqliteDatabase(stateFile);
    sqlite
      .prepare('insert into edgefleet_migrations (name, timestamp) values (?, ?)')
      .run(FUTURE, '2030-01-01T00:00:00.000Z');
    sqlite.close();
  });
  afterAll(() => rm(cwd, { recursive: true, force: true }));

  it.each([
    ['serve', '--listen', '127.0.0.1:0', '--device-listen', '127.0.0.1:0'],
    ['init'],
    ['token', 'create', '--name', 'x', '--scope', 'read-only'],
  ])('%s exits 2 with the reason and what to do, the database unchanged', async (...args) => {
    const before = await sha();
    const result = await runServerCli([...args, '--data-dir', dataDir], cwd);
    expect(result.code, result.stderr).toBe(2);
    expect(result.stderr).toMatch(
      `edgefleet-server: database sqlite:${stateFile}: made by a newer EdgeFleet: migration ${FUTURE} is unknown to this build (version ${version}`,
    );
    expect(result.stderr).toMatch(/run the newer build, or restore the backup taken before the upgrade/);
    expect(result.stdout).toBe('');
    expect(await sha()).toBe(before);
  });

  it('restore of a newer build’s backup says the same words', async () => {
    await expect(restoreSqlite(stateFile, path.join(cwd, 'restored', 'state.db'))).rejects.toThrow(
      `${stateFile}: made by a newer EdgeFleet: migration ${FUTURE} is unknown to this build (version ${version}`,
    );
  });
});
