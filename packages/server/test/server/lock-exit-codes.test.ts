/**
 * `serve`'s exit codes when it cannot take the SQLite database's lock (core's FolderLock), and for an unusable
 * command line or config: 2 where a person must act (the unit does not restart it), 1 where starting again may
 * succeed (the unit restarts it), each with a message naming the path and the cause. Real server processes; a
 * read-only filesystem and one with no inodes left are real mounts in a user and mount namespace (unshare),
 * where the system allows one; a folder the server may not write is one it runs in as nobody (when the tests run
 * as root) or that is made read-only.
 */
import { spawn, spawnSync } from 'node:child_process';
import { chmod, chown, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import SqliteDatabase from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runServerCli, serverCommand, type CliResult } from '../support/process.js';

const flags = ['--listen', '127.0.0.1:0', '--device-listen', '127.0.0.1:0', '--log-level', 'warn'];

/** Whether this system lets an unprivileged process make a user and mount namespace and mount in it. */
const namespaces =
  spawnSync('unshare', ['-rm', 'sh', '-c', 'mount -t tmpfs tmpfs /mnt'], { stdio: 'ignore' }).status === 0;

/** The user the server runs as where a folder must be one it cannot write: root writes any folder, so nobody. */
const asRoot = process.getuid!() === 0;
const serverUid = asRoot ? 65534 : process.getuid!();

/** Runs `serve` as serverUid (through setpriv when this is root). */
function serveAs(args: string[], cwd: string): Promise<CliResult> {
  if (!asRoot) return runServerCli(['serve', ...flags, ...args], cwd);
  return new Promise((resolve, reject) => {
    const ids = [`--reuid=${serverUid}`, `--regid=${serverUid}`, '--clear-groups'];
    const child = spawn('setpriv', [...ids, ...serverCommand(), 'serve', ...flags, ...args], {
      cwd,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Runs `serve` inside a new user and mount namespace, after the shell `mounts` (which see $DIR). */
function serveInNamespace(mounts: string, args: string[], cwd: string): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const command = [...serverCommand(), 'serve', ...flags, ...args].map((word) => `'${word}'`).join(' ');
    const child = spawn('unshare', ['-rm', 'sh', '-c', `set -e; ${mounts}; exec ${command}`], {
      cwd,
      env: { ...process.env, DIR: cwd },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

describe('serve exits 2 when a person must act, 1 when starting again may do', { timeout: 120_000 }, () => {
  let cwd: string;
  beforeAll(async () => {
    cwd = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-lock-exit-'));
  });
  afterAll(() => rm(cwd, { recursive: true, force: true }));

  it('a database folder that cannot be made (a file in its path): 2, naming the folder, the cause and the setting', async () => {
    const file = path.join(cwd, 'a-file');
    await writeFile(file, 'not a folder');
    const result = await runServerCli(
      ['serve', ...flags, '--data-dir', path.join(cwd, 'data'), '--database', path.join(file, 'state.db')],
      cwd,
    );
    expect(result.code).toBe(2);
    expect(result.stderr).toContain(
      `edgefleet-server: cannot create the SQLite database folder ${file}: a file is there, not a folder (EEXIST); expected a folder the server can create and write: fix the folder's permissions or mount, or set database (--database, EDGEFLEET_DATABASE; default <data-dir>/state.db) to a folder the server's user (uid ${process.getuid!()}) can write`,
    );
  });

  it.runIf(namespaces)(
    'a database on a read-only filesystem: 2, naming the lock file and the read-only filesystem',
    async () => {
      const ro = path.join(cwd, 'read-only');
      await mkdir(ro, { recursive: true });
      const result = await serveInNamespace(
        'mount --bind "$DIR/read-only" "$DIR/read-only"; mount -o remount,bind,ro "$DIR/read-only"',
        ['--data-dir', path.join(cwd, 'data-ro'), '--database', path.join(ro, 'state.db')],
        cwd,
      );
      expect(result.code, result.stderr).toBe(2);
      expect(result.stderr).toContain(
        `edgefleet-server: cannot create or open the lock file ${path.join(ro, 'state.db.lock')}: the filesystem is read-only (EROFS); expected a file the server can create and write in the SQLite database folder: fix the folder's permissions or mount`,
      );
    },
  );

  it.runIf(namespaces)(
    'a database folder mounted read-only since its lock file was made: 2, naming the database and the cause',
    async () => {
      // The lock is taken (a lock needs no write), then the database cannot be opened for writing.
      const ro = path.join(cwd, 'read-only-since');
      await mkdir(ro, { recursive: true });
      await writeFile(path.join(ro, 'state.db.lock'), '', { mode: 0o600 });
      const result = await serveInNamespace(
        'mount --bind "$DIR/read-only-since" "$DIR/read-only-since"; mount -o remount,bind,ro "$DIR/read-only-since"',
        ['--data-dir', path.join(cwd, 'data-ro-since'), '--database', path.join(ro, 'state.db')],
        cwd,
      );
      expect(result.code, result.stderr).toBe(2);
      expect(result.stderr).toContain(
        `edgefleet-server: cannot open the SQLite database ${path.join(ro, 'state.db')}: the filesystem is read-only (EROFS); expected a database file the server can create and write: fix its folder's permissions or mount, or set database (--database, EDGEFLEET_DATABASE) to a file the server's user (uid ${process.getuid!()}) can write`,
      );
    },
  );

  it("a database file the server owns in a folder it cannot write: 2 (SQLite's extended code), naming the database", async () => {
    // SQLite needs the folder for its WAL file: SQLITE_READONLY_DIRECTORY, an extended result code.
    const folder = path.join(cwd, 'folder-not-writable');
    const data = path.join(cwd, 'data-folder-not-writable');
    await mkdir(folder);
    await mkdir(data, { mode: 0o700 });
    const database = path.join(folder, 'state.db');
    const sqlite = new SqliteDatabase(database);
    sqlite.pragma('journal_mode = WAL');
    sqlite.close();
    // The lock file as a server left it (an exclusive transaction ran in it once).
    const lock = new SqliteDatabase(`${database}.lock`);
    lock.pragma('locking_mode = EXCLUSIVE');
    lock.exec('BEGIN EXCLUSIVE');
    lock.exec('COMMIT');
    lock.close();
    await chmod(`${database}.lock`, 0o600);
    for (const file of [database, `${database}.lock`, data]) await chown(file, serverUid, serverUid);
    // Root's folder, readable by all (root case); the server's own folder, made read-only (otherwise).
    await chmod(folder, asRoot ? 0o755 : 0o555);
    await chmod(cwd, 0o755);
    try {
      const result = await serveAs(['--data-dir', data, '--database', database], cwd);
      expect(result.code, result.stderr).toBe(2);
      expect(result.stderr).toContain(
        `edgefleet-server: cannot open the SQLite database ${database}: attempt to write a readonly database (SQLITE_READONLY_DIRECTORY); expected a database file the server can create and write: fix its folder's permissions or mount, or set database (--database, EDGEFLEET_DATABASE) to a file the server's user (uid ${serverUid}) can write`,
      );
    } finally {
      await chmod(folder, 0o755);
    }
  });

  it.runIf(namespaces)(
    'a database folder with no inodes left: 1 (the unit restarts it), naming the lock file and the cause',
    async () => {
      const full = path.join(cwd, 'full');
      await mkdir(full, { recursive: true });
      const result = await serveInNamespace(
        'mount -t tmpfs -o size=1m,nr_inodes=1 tmpfs "$DIR/full"',
        ['--data-dir', path.join(cwd, 'data-full'), '--database', path.join(full, 'state.db')],
        cwd,
      );
      expect(result.code, result.stderr).toBe(1);
      expect(result.stderr).toContain(
        `edgefleet-server: cannot create or open the lock file ${path.join(full, 'state.db.lock')}: no space or no inodes left on its filesystem (ENOSPC); expected a file the server can create and write in the SQLite database folder; starting the server again may succeed once that passes`,
      );
    },
  );

  it('a wrong command line and a config file that cannot be read: 2, as the unit file says', async () => {
    const usage = await runServerCli(['serve', '--no-such-option'], cwd);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toContain("error: unknown option '--no-such-option'");
    const config = await runServerCli(['serve', '--config', path.join(cwd, 'missing.json')], cwd);
    expect(config.code).toBe(2);
    expect(config.stderr).toContain(
      `edgefleet-server: cannot read config file ${path.join(cwd, 'missing.json')}`,
    );
    expect((await runServerCli(['--help'], cwd)).code).toBe(0);
  });
});
