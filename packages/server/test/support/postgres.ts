/**
 * A throwaway PostgreSQL for tests. Uses EDGEFLEET_TEST_DATABASE_URL when set (an admin URL; each suite gets
 * its own fresh database on it); otherwise starts a private cluster with Debian's initdb/pg_ctl in a temp
 * folder on 127.0.0.1 and a free port, run as the `postgres` user when we are root. Without either, the
 * PostgreSQL suites fail loudly in CI (CI=true) and are skipped elsewhere.
 */
import { execFile } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { chown, mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import pg from 'pg';

const run = promisify(execFile);

export interface TestPostgres {
  /** Creates an empty database and returns its URL. */
  createDatabase(): Promise<string>;
  stop(): Promise<void>;
}

function findBinDir(): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(':')) {
    if (dir && existsSync(path.join(dir, 'initdb')) && existsSync(path.join(dir, 'pg_ctl'))) return dir;
  }
  const debianRoot = '/usr/lib/postgresql';
  if (!existsSync(debianRoot)) return undefined;
  const versions = readdirSync(debianRoot)
    .filter((v) => existsSync(path.join(debianRoot, v, 'bin', 'initdb')))
    .sort((a, b) => Number(b) - Number(a));
  return versions[0] === undefined ? undefined : path.join(debianRoot, versions[0], 'bin');
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
    });
  });
}

function withDatabase(adminUrl: string, database: string): string {
  const url = new URL(adminUrl);
  url.pathname = `/${database}`;
  return url.toString();
}

async function adminQuery(adminUrl: string, text: string): Promise<void> {
  const client = new pg.Client({ connectionString: adminUrl });
  await client.connect();
  try {
    await client.query(text);
  } finally {
    await client.end();
  }
}

function databaseFactory(adminUrl: string, created: string[]): () => Promise<string> {
  return async () => {
    const name = `ef_test_${randomBytes(6).toString('hex')}`;
    await adminQuery(adminUrl, `CREATE DATABASE ${name}`);
    created.push(name);
    return withDatabase(adminUrl, name);
  };
}

async function startCluster(binDir: string): Promise<TestPostgres> {
  const isRoot = process.getuid?.() === 0;
  const dir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-pg-'));
  if (isRoot) await chown(dir, ...(await postgresIds()));
  const asOwner = (bin: string, args: string[]) =>
    isRoot
      ? run('runuser', ['-u', 'postgres', '--', path.join(binDir, bin), ...args])
      : run(path.join(binDir, bin), args);
  const dataDir = path.join(dir, 'data');
  await asOwner('initdb', [
    '-D',
    dataDir,
    '-U',
    'postgres',
    '--auth=trust',
    '-E',
    'UTF8',
    '--locale=C',
    '-N',
  ]);
  const port = await freePort();
  const options = [
    `-c listen_addresses=127.0.0.1`,
    `-p ${port}`,
    `-k ${dir}`,
    // Throwaway data: skip the disk syncs.
    `-c fsync=off -c synchronous_commit=off -c full_page_writes=off`,
    `-c max_connections=200`,
  ].join(' ');
  await asOwner('pg_ctl', ['-D', dataDir, '-o', options, '-l', path.join(dir, 'log'), '-w', 'start']);
  const adminUrl = `postgres://postgres@127.0.0.1:${port}/postgres`;
  const created: string[] = [];
  return {
    createDatabase: databaseFactory(adminUrl, created),
    stop: async () => {
      await asOwner('pg_ctl', ['-D', dataDir, '-m', 'immediate', '-w', 'stop']).catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

async function postgresIds(): Promise<[number, number]> {
  const { stdout: uid } = await run('id', ['-u', 'postgres']);
  const { stdout: gid } = await run('id', ['-g', 'postgres']);
  return [Number(uid.trim()), Number(gid.trim())];
}

/**
 * Starts (or connects to) PostgreSQL for one test file. Returns undefined only outside CI when no PostgreSQL
 * is available; throws in CI.
 */
export async function startTestPostgres(): Promise<TestPostgres | undefined> {
  const external = process.env.EDGEFLEET_TEST_DATABASE_URL;
  if (external) {
    const created: string[] = [];
    return {
      createDatabase: databaseFactory(external, created),
      stop: async () => {
        for (const name of created) {
          await adminQuery(external, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`).catch(() => undefined);
        }
      },
    };
  }
  const binDir = findBinDir();
  if (binDir === undefined) {
    const message =
      'PostgreSQL not found: no initdb/pg_ctl on PATH or in /usr/lib/postgresql/*/bin and no EDGEFLEET_TEST_DATABASE_URL. ' +
      'Install it with `apt-get install -y postgresql` (Debian) or set EDGEFLEET_TEST_DATABASE_URL.';
    if (process.env.CI) throw new Error(message);
    console.warn(`${message} Skipping the PostgreSQL suites (they fail in CI).`);
    return undefined;
  }
  return startCluster(binDir);
}

/**
 * Waits until at least `count` sessions wait for a lock (what a test that holds a lock needs to know before
 * it lets go: everyone under test has reached the point it wants to race), and returns how many do.
 */
export async function lockWaiters(client: pg.Client, count: number): Promise<number> {
  const waiting = async () =>
    Number(
      (await client.query<{ n: string }>('SELECT count(DISTINCT pid) AS n FROM pg_locks WHERE NOT granted'))
        .rows[0]?.n,
    );
  for (let i = 0; i < 400 && (await waiting()) < count; i++)
    await new Promise((resolve) => setTimeout(resolve, 25));
  return waiting();
}
