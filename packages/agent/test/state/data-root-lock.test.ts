import { spawn, type ChildProcess } from 'node:child_process';
import { execFileSync, spawnSync } from 'node:child_process';
import { statSync } from 'node:fs';
import {
  chmod,
  chown,
  lstat,
  mkdir,
  mkdtemp,
  readFile,
  rm,
  stat,
  symlink,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import SqliteDatabase from 'better-sqlite3';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  DATA_ROOT_FOLDER,
  DATA_ROOT_LOCK_FILE,
  DataRootLock,
  FolderInUseError,
  FolderLockError,
  lockHolder,
} from '../../src/state/index.js';
import { REPO_ROOT, buildAgent } from '../daemon/process-helpers.js';

const LOCK_MODULE = fileURLToPath(new URL('../../dist/state/data-root-lock.js', import.meta.url));

let root: string;
const held: DataRootLock[] = [];
const children: ChildProcess[] = [];

beforeAll(async () => {
  buildAgent(); // the other process takes the lock with the built module
  root = await mkdtemp(join(tmpdir(), 'data-root-lock-'));
}, 120_000);
afterEach(async () => {
  for (const lock of held.splice(0)) lock.release();
  const killed = children.splice(0);
  for (const child of killed) child.kill('SIGKILL');
  await Promise.all(killed.map((child) => exitOf(child)));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

function acquire(dataRoot: string, options?: Parameters<typeof DataRootLock.acquire>[1]): DataRootLock {
  const lock = DataRootLock.acquire(dataRoot, options);
  held.push(lock);
  return lock;
}

function refusal(dataRoot: string, options?: Parameters<typeof DataRootLock.acquire>[1]): unknown {
  try {
    acquire(dataRoot, options);
  } catch (error) {
    return error;
  }
  throw new Error(`the lock on ${dataRoot} was taken; expected it refused`);
}

function exitOf(child: ChildProcess): Promise<unknown> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', resolve));
}

/** Another process that takes the lock on `dataRoot` with the agent's module and holds it until killed. */
function holdInAnotherProcess(dataRoot: string): Promise<ChildProcess> {
  return runInAnotherProcess(`
    const { DataRootLock } = await import(${JSON.stringify(LOCK_MODULE)});
    DataRootLock.acquire(${JSON.stringify(dataRoot)});
  `);
}

/** Tries to take the lock from another process: 'taken', or the error's name and the holder's pid. */
async function tryInAnotherProcess(dataRoot: string): Promise<string> {
  const script = `
    const { DataRootLock } = await import(${JSON.stringify(LOCK_MODULE)});
    try {
      DataRootLock.acquire(${JSON.stringify(dataRoot)}).release();
      process.stdout.write('taken');
    } catch (error) {
      process.stdout.write(error.name + ' ' + error.holderPid);
    }
  `;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
  await new Promise((resolve) => child.once('close', resolve)); // 'close': its output read to the end
  return out;
}

/** Runs `setup` (an ES module's code) in another process, which then says so and lives until killed. */
async function runInAnotherProcess(setup: string): Promise<ChildProcess> {
  const script = `${setup}
    process.stdout.write('held\\n');
    setInterval(() => {}, 60_000);
  `;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
    cwd: REPO_ROOT, // where better-sqlite3 resolves
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  await new Promise<void>((resolve, reject) => {
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
      if (chunk.includes('held')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`the holder exited (${code}) first: ${stderr}`)));
  });
  return child;
}

describe('DataRootLock', () => {
  it('creates the data root (0700) and its lock file; a second lock is refused, naming the data root and the holder; free again once released', async () => {
    const dataRoot = join(root, 'fresh', 'data');
    const lock = acquire(dataRoot);
    expect(lock.held).toBe(true);
    expect(lock.path).toBe(join(dataRoot, DATA_ROOT_LOCK_FILE));
    expect((await stat(dataRoot)).mode & 0o777).toBe(0o700);
    // Owner-only whatever the umask: whoever can open it could lock it and keep the agent from starting.
    expect((await stat(lock.path)).mode & 0o777).toBe(0o600);

    // A second lock in this process (two daemons in one test process) is refused like another process's.
    const error = refusal(dataRoot);
    expect(error).toBeInstanceOf(FolderInUseError);
    expect(error).toMatchObject({ kind: DATA_ROOT_FOLDER, folder: dataRoot, holderPid: process.pid });
    expect((error as Error).message).toBe(
      `the data root ${dataRoot} (sagemaker_edge_local_data_root_path) is in use by another edgefleet-agent (pid ${process.pid}); one agent per data root: stop that agent, or give this one a data root of its own`,
    );

    // The refused attempt closed its own connection to the file: POSIX locks are the process's and a close can
    // drop them, so another process must still find the data root held.
    expect(await tryInAnotherProcess(dataRoot)).toBe(`FolderInUseError ${process.pid}`);

    lock.release();
    lock.release(); // twice is fine
    expect(lock.held).toBe(false);
    expect(acquire(dataRoot).held).toBe(true);
  });

  it('held by another process: refused with that pid; free at once when that process is SIGKILLed (no stale lock)', async () => {
    const dataRoot = join(root, 'shared');
    const holder = await holdInAnotherProcess(dataRoot);
    const error = refusal(dataRoot);
    expect(error).toBeInstanceOf(FolderInUseError);
    expect(error).toMatchObject({ kind: DATA_ROOT_FOLDER, folder: dataRoot, holderPid: holder.pid });
    expect((error as Error).message).toContain(`(pid ${holder.pid})`);

    holder.kill('SIGKILL');
    await exitOf(holder);
    expect(acquire(dataRoot).held).toBe(true);
    expect(await tryInAnotherProcess(dataRoot)).toBe(`FolderInUseError ${process.pid}`);
  });

  it('a tool keeping a read open on the lock file holds it too, and is named', async () => {
    const dataRoot = join(root, 'read-open');
    acquire(dataRoot).release();
    const reader = await runInAnotherProcess(`
      const { default: Database } = await import('better-sqlite3');
      const db = new Database(${JSON.stringify(join(dataRoot, DATA_ROOT_LOCK_FILE))});
      db.exec('BEGIN');
      db.prepare('SELECT count(*) FROM sqlite_master').get();
    `);
    expect(refusal(dataRoot)).toMatchObject({
      kind: DATA_ROOT_FOLDER,
      folder: dataRoot,
      holderPid: reader.pid,
    });
  });

  it('without /proc/locks the holder is not named, and the refusal stands', async () => {
    const dataRoot = join(root, 'no-proc');
    await holdInAnotherProcess(dataRoot);
    const error = refusal(dataRoot, { procLocksPath: join(root, 'no-such-proc-locks') });
    expect(error).toBeInstanceOf(FolderInUseError);
    expect((error as FolderInUseError).holderPid).toBeUndefined();
    expect((error as Error).message).not.toContain('pid');
  });

  it('another data root is unaffected, even beside a held one', async () => {
    await holdInAnotherProcess(join(root, 'one'));
    expect(acquire(join(root, 'two')).held).toBe(true);
    expect(acquire(join(root, 'one', 'nested')).held).toBe(true);
  });

  it('does not lock the agent database: a reader and a writer of agent.db beside it work while it is held', async () => {
    const dataRoot = join(root, 'readers');
    acquire(dataRoot);
    const db = new SqliteDatabase(join(dataRoot, 'agent.db'), { timeout: 0 });
    try {
      db.exec('CREATE TABLE t (x); INSERT INTO t VALUES (1)');
      expect(db.prepare('SELECT x FROM t').pluck().get()).toBe(1);
    } finally {
      db.close();
    }
  });

  it('a data root that cannot be made is a FolderLockError saying what was expected', async () => {
    const file = join(root, 'a-file');
    await writeFile(file, 'not a folder');
    const error = refusal(join(file, 'data'));
    expect(error).toBeInstanceOf(FolderLockError);
    expect((error as Error).message).toBe(
      `cannot create the data root ${join(file, 'data')}: a part of its path is a file, not a folder (ENOTDIR); expected a folder the agent can create and write: fix the folder's permissions or mount, or set sagemaker_edge_local_data_root_path to a folder the agent's user (uid ${process.getuid!()}) can write`,
    );
  });

  it('the lock file is 0600 from its creation, even with umask 0: no moment when another user could open it', () => {
    // In a child: a worker thread cannot set the umask. The mode is read just before SQLite opens the file, while
    // the lock is not yet taken: a chmod after locking is too late (a descriptor opened before it outlives it).
    const dataRoot = join(root, 'umask-0');
    const script = `
      const { statSync } = await import('node:fs');
      const { default: Database } = await import('better-sqlite3');
      const { DataRootLock } = await import(${JSON.stringify(LOCK_MODULE)});
      process.umask(0);
      DataRootLock.acquire(${JSON.stringify(dataRoot)}, {
        openDatabase(path) {
          process.stdout.write((statSync(path).mode & 0o777).toString(8));
          return new Database(path, { timeout: 0 });
        },
      }).release();
    `;
    const child = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
      cwd: REPO_ROOT,
      encoding: 'utf8',
    });
    expect(child.stderr).toBe('');
    expect(child.stdout).toBe('600');
  });

  it('an older run’s lock file with a loose mode is made 0600 before SQLite opens it', async () => {
    const dataRoot = join(root, 'loose');
    await mkdir(dataRoot, { recursive: true });
    const path = join(dataRoot, DATA_ROOT_LOCK_FILE);
    await writeFile(path, '', { mode: 0o644 });
    await chmod(path, 0o644);
    const seen: number[] = [];
    acquire(dataRoot, {
      openDatabase(opened) {
        seen.push(statSync(opened).mode & 0o777);
        return new SqliteDatabase(opened, { timeout: 0 });
      },
    });
    expect(seen).toEqual([0o600]);
    expect((await stat(path)).mode & 0o777).toBe(0o600);
  });

  it('a symbolic link at agent.lock is refused, and neither its target nor a missing target is touched', async () => {
    const dataRoot = join(root, 'linked');
    await mkdir(dataRoot, { recursive: true });
    const path = join(dataRoot, DATA_ROOT_LOCK_FILE);
    const target = join(root, 'link-target');
    await writeFile(target, '');
    await chmod(target, 0o644);
    await symlink(target, path);
    const error = refusal(dataRoot);
    expect(error).toBeInstanceOf(FolderLockError);
    expect((error as Error).message).toBe(
      `the lock file ${path} is a symbolic link; expected a regular file owned by the agent's user (uid ${process.getuid!()}), or none (the agent creates it): remove it (it keeps nothing)`,
    );
    expect((await stat(target)).mode & 0o777).toBe(0o644);
    expect(await readFile(target, 'utf8')).toBe('');
    expect((await lstat(path)).isSymbolicLink()).toBe(true);

    // A dangling link: following it would create a file wherever it points.
    const dangling = join(root, 'dangling');
    await rm(path);
    await symlink(join(dangling, 'agent.lock'), path);
    await mkdir(dangling);
    await rm(dangling, { recursive: true });
    expect((refusal(dataRoot) as Error).message).toContain('is a symbolic link');
    await expect(stat(dangling)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('a folder or a FIFO at agent.lock is refused as not a regular file, without blocking', async () => {
    const folder = join(root, 'folder-lock');
    await mkdir(join(folder, DATA_ROOT_LOCK_FILE), { recursive: true });
    expect((refusal(folder) as Error).message).toBe(
      `the lock file ${join(folder, DATA_ROOT_LOCK_FILE)} is not a regular file; expected a regular file owned by the agent's user (uid ${process.getuid!()}), or none (the agent creates it): remove it (it keeps nothing)`,
    );
    const fifo = join(root, 'fifo-lock');
    await mkdir(fifo, { recursive: true });
    execFileSync('mkfifo', ['-m', '600', join(fifo, DATA_ROOT_LOCK_FILE)]);
    expect(refusal(fifo)).toBeInstanceOf(FolderLockError);
    expect((refusal(fifo) as Error).message).toContain('is not a regular file');
  });

  // Only root can give a file to another user.
  it.skipIf(process.getuid?.() !== 0)(
    'a lock file owned by another user is refused, and left as it was (that user could hold it)',
    async () => {
      const dataRoot = join(root, 'other-owner');
      await mkdir(dataRoot, { recursive: true });
      const path = join(dataRoot, DATA_ROOT_LOCK_FILE);
      await writeFile(path, '', { mode: 0o600 });
      await chown(path, 65534, 65534);
      const error = refusal(dataRoot);
      expect(error).toBeInstanceOf(FolderLockError);
      expect((error as Error).message).toContain(`is owned by uid 65534; expected a regular file owned by`);
      expect(await stat(path)).toMatchObject({ uid: 65534, size: 0 });
    },
  );

  it('a lock file that is not a SQLite file is a FolderLockError, and is left as it was', async () => {
    const dataRoot = join(root, 'damaged');
    await rm(dataRoot, { recursive: true, force: true });
    acquire(dataRoot).release();
    const garbage = 'x'.repeat(4096);
    await writeFile(join(dataRoot, DATA_ROOT_LOCK_FILE), garbage);
    const error = refusal(dataRoot);
    expect(error).toBeInstanceOf(FolderLockError);
    expect((error as Error).message).toMatch(/^cannot lock .*agent\.lock: .*; expected a SQLite lock file/);
    expect(await readFile(join(dataRoot, DATA_ROOT_LOCK_FILE), 'utf8')).toBe(garbage);
  });
});

describe('lockHolder', () => {
  // fe:00 is major 254, minor 0: dev 0xfe00 in glibc's encoding.
  const dev = 0xfe00n;
  const ino = 2272354n;

  it('finds the one process holding locks on the file, skipping waiters, flock() locks and other files', () => {
    const text = [
      '1: POSIX  ADVISORY  READ 4321 fe:00:2272354 128 128',
      '2: POSIX  ADVISORY  WRITE 4321 fe:00:2272354 1073741824 1073742335',
      '2: -> POSIX  ADVISORY  WRITE 999 fe:00:2272354 1073741824 1073742335',
      '3: POSIX  ADVISORY  WRITE 222 fe:01:2272354 1073741824 1073742335',
      '4: POSIX  ADVISORY  WRITE 333 fe:00:2272355 1073741824 1073742335',
      '5: FLOCK  ADVISORY  WRITE 444 fe:00:2272354 0 EOF',
      '',
    ].join('\n');
    expect(lockHolder(text, dev, ino)).toBe(4321);
    // A tool keeping a read transaction open on the file holds it too (a shared lock): it is named.
    expect(lockHolder('7: POSIX  ADVISORY  READ 555 fe:00:2272354 1073741826 1073742335\n', dev, ino)).toBe(
      555,
    );
  });

  it('names nobody when several processes or none hold it, or the holder is hidden (pid 0, or -1 for OFD locks)', () => {
    const line = (pid: number) => `1: POSIX  ADVISORY  WRITE ${pid} fe:00:2272354 1073741824 1073742335`;
    expect(lockHolder([line(1), line(2)].join('\n'), dev, ino)).toBeUndefined();
    expect(lockHolder('', dev, ino)).toBeUndefined();
    expect(lockHolder(line(0), dev, ino)).toBeUndefined();
    expect(
      lockHolder('1: OFDLCK ADVISORY  WRITE -1 fe:00:2272354 1073741824 1073742335', dev, ino),
    ).toBeUndefined();
  });

  it('decodes large device numbers as glibc encodes them (major and minor above 8 bits)', () => {
    // major 0x103, minor 0x1234 → (0x103 << 8) | 0x34 | (0x12 << 20) in glibc's dev_t.
    const bigDev = (0x103n << 8n) | 0x34n | (0x12n << 20n);
    expect(lockHolder('1: POSIX  ADVISORY  WRITE 77 103:1234:5 0 EOF', bigDev, 5n)).toBe(77);
  });
});
