import { lstat, mkdir, mkdtemp, readlink, rm, symlink } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  appliedMigrations,
  lockSqliteDatabase,
  migrateTo,
  migrationNames,
  openDatabase,
} from '../../src/storage/index.js';
import { runServerCli, startServerProcess, type ServerProcess } from '../support/process.js';

let cwd: string;
beforeAll(async () => {
  cwd = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-sqlite-one-'));
});
afterAll(() => rm(cwd, { recursive: true, force: true }));

const flags = ['--listen', '127.0.0.1:0', '--device-listen', '127.0.0.1:0', '--log-level', 'info'];

// Each CLI run starts Node with tsx; on a busy two-core machine that takes seconds.
describe('one edgefleet-server per SQLite database (real processes)', { timeout: 120_000 }, () => {
  it('refuses a second serve (exit 4, naming the file and the holder), keeps init, token and backup working, and frees the database when the first is SIGKILLed', async () => {
    const init = await runServerCli(['init'], cwd);
    expect(init.code).toBe(0);
    const token = init.stdout.trim();
    const stateFile = path.join(cwd, '.edgefleet', 'server', 'state.db');

    const first = await startServerProcess(flags, cwd);
    let replacement: ServerProcess | undefined;
    try {
      // Started as a server (not a CLI run), so that without the lock it is stopped here rather than left serving.
      const second = await startServerProcess(flags, cwd).then(
        async (started) => {
          await started.stop('SIGKILL');
          return 'it started';
        },
        (error: Error) => error.message,
      );
      expect(second).toContain(
        `exited (4) before listening: edgefleet-server: database ${stateFile} is in use by another edgefleet-server (pid ${first.child.pid}); SQLite serves one process: stop that server, or use PostgreSQL`,
      );
      expect(second).toMatch(/for replicas\n$/);
      // Refused before it touched anything: the first still serves.
      const fleets = await fetch(`${first.operatorUrl}/api/v1/fleets`, {
        headers: { authorization: `Bearer ${token}` },
      });
      expect(fleets.status).toBe(200);

      // The commands documented to run beside a server still do: they do not take serve's lock.
      const again = await runServerCli(['init'], cwd);
      expect(again.code).toBe(0);
      expect(again.stderr).toMatch(/no token printed: an active admin token already exists/);
      const created = await runServerCli(
        ['token', 'create', '--name', 'beside', '--scope', 'read-only'],
        cwd,
      );
      expect(created.code).toBe(0);
      const backup = await runServerCli(['backup', '--out', path.join(cwd, 'online.db')], cwd);
      expect(backup.code).toBe(0);
      // restore is not: it names the server that holds the database.
      const restore = await runServerCli(['restore', '--from', path.join(cwd, 'online.db')], cwd);
      expect(restore.code).toBe(1);
      expect(restore.stderr).toContain(
        `${stateFile} is in use by edgefleet-server (pid ${first.child.pid}); stop edgefleet-server before restoring`,
      );

      // The kernel drops the lock with the process, however it ends: no stale lock to clear by hand.
      expect(await first.stop('SIGKILL')).toBe(null);
      replacement = await startServerProcess(flags, cwd);
      const after = await fetch(`${replacement.operatorUrl}/api/v1/fleets`, {
        headers: { authorization: `Bearer ${token}` },
      });
      expect(after.status).toBe(200);
    } finally {
      await first.stop('SIGKILL');
      if (replacement) expect(await replacement.stop()).toBe(0);
    }
  });

  it('exits 2 (not restarted by the unit) on a lock file it must not use, naming it, and leaves it as it is', async () => {
    const dir = await mkdtemp(path.join(cwd, 'link-'));
    const dataDir = path.join(dir, '.edgefleet', 'server');
    await mkdir(dataDir, { recursive: true, mode: 0o700 });
    const lockFile = path.join(dataDir, 'state.db.lock');
    // As someone could plant it to make the server lock (and so open) a file of their choosing.
    await symlink(path.join(dir, 'elsewhere'), lockFile);
    const refused = await startServerProcess(flags, dir).then(
      async (started) => {
        await started.stop('SIGKILL');
        return 'it started';
      },
      (error: Error) => error.message,
    );
    expect(refused).toContain(`exited (2) before listening: edgefleet-server: the lock file ${lockFile} is `);
    expect((await lstat(lockFile)).isSymbolicLink()).toBe(true);
    expect(await readlink(lockFile)).toBe(path.join(dir, 'elsewhere'));
  });

  it('token and init refuse to migrate a database an older running server holds, and migrate it once none does', async () => {
    const dir = await mkdtemp(path.join(cwd, 'older-'));
    const dataDir = path.join(dir, '.edgefleet', 'server');
    await mkdir(dataDir, { recursive: true, mode: 0o700 });
    const stateFile = path.join(dataDir, 'state.db');
    // As the previous version left it.
    const older = migrationNames[migrationNames.length - 2]!;
    const db = await openDatabase({ engine: 'sqlite', file: stateFile });
    await migrateTo(db.db, older);
    await db.close();
    const schema = async () => {
      const opened = await openDatabase({ engine: 'sqlite', file: stateFile });
      try {
        return await appliedMigrations(opened.db);
      } finally {
        await opened.close();
      }
    };
    const before = await schema();
    expect(before.at(-1)).toBe(older);

    // That version's server runs (here: this test process holds its lock), the package was upgraded.
    const server = lockSqliteDatabase(stateFile);
    try {
      for (const args of [['token', 'create', '--name', 'ci'], ['init']]) {
        const refused = await runServerCli(args, dir);
        expect(refused.code).toBe(1);
        expect(refused.stdout).toBe('');
        expect(refused.stderr).toContain(
          `edgefleet-server: database sqlite:${stateFile}: a running edgefleet-server (pid ${process.pid}) holds this database, and its schema is older than this version's (1 migration(s) to apply, ${migrationNames.at(-1)}): migrating it would change the schema under that server. Restart the server with this version first`,
        );
        expect(await schema()).toEqual(before);
      }
    } finally {
      server.release();
    }
    const created = await runServerCli(['token', 'create', '--name', 'ci'], dir);
    expect(created.code).toBe(0);
    expect(await schema()).toEqual(migrationNames);
  });
});
