import { randomUUID } from 'node:crypto';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import SqliteDatabase from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runServerCli, startServerProcess } from '../support/process.js';
import { startTestS3, type TestS3 } from '../support/s3.js';

let cwd: string;
let s3: TestS3;
beforeAll(async () => {
  cwd = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-blob-binding-'));
  s3 = await startTestS3();
});
afterAll(async () => {
  await s3?.stop();
  await rm(cwd, { recursive: true, force: true });
});

const flags = ['--listen', '127.0.0.1:0', '--device-listen', '127.0.0.1:0', '--log-level', 'info'];
const folderUrl = (folder: string) => pathToFileURL(folder).toString();

/** Runs serve; resolves with its stderr when it exits before listening, or 'it started' (then stopped). */
async function serveOutcome(args: string[], dir = cwd, env?: Record<string, string>): Promise<string> {
  return startServerProcess([...flags, ...args], dir, env).then(
    async (started) => {
      expect(await started.stop()).toBe(0);
      return 'it started';
    },
    (error: Error) => error.message,
  );
}

/** The tables of a SQLite file: none while nothing created its schema. */
function tables(stateFile: string): string[] {
  const db = new SqliteDatabase(stateFile, { readonly: true });
  try {
    return (
      db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all() as { name: string }[]
    ).map((row) => row.name);
  } finally {
    db.close();
  }
}

function settings(stateFile: string): Record<string, string> {
  const db = new SqliteDatabase(stateFile, { readonly: true });
  try {
    const rows = db
      .prepare("SELECT key, value FROM server_settings WHERE key IN ('blob_store_id', 'blob_store_location')")
      .all() as {
      key: string;
      value: string;
    }[];
    return Object.fromEntries(rows.map((r) => [r.key, r.value]));
  } finally {
    db.close();
  }
}

// Each CLI run starts Node with tsx; on a busy two-core machine that takes seconds.
describe(
  'a server refuses a blob store its database does not use (real processes)',
  { timeout: 180_000 },
  () => {
    it('records the store at init, refuses another (naming both and the setting), and follows a store moved with its objects', async () => {
      const dataDir = path.join(cwd, '.edgefleet', 'server');
      const stateFile = path.join(dataDir, 'state.db');
      const blobs = path.join(dataDir, 'blobs');
      expect((await runServerCli(['init'], cwd)).code).toBe(0);
      const marker = (await readFile(path.join(blobs, 'edgefleet-store-id'), 'utf8')).trim();
      expect(settings(stateFile)).toEqual({ blob_store_id: marker, blob_store_location: folderUrl(blobs) });

      // Another store (a replica's server.env without EDGEFLEET_BLOB, a typo): refused before it serves.
      const other = path.join(cwd, 'other-blobs');
      const refused = await serveOutcome(['--blob', other]);
      expect(refused).toContain('exited (2) before listening');
      expect(refused).toContain(
        `the blob store ${folderUrl(other)} is not this database's: the database's blobs are in ${folderUrl(blobs)} (store id ${marker}), and ${folderUrl(other)} holds no edgefleet-store-id marker; give every server the store the others use (blob (--blob, EDGEFLEET_BLOB)`,
      );

      // Another database's store: its marker says so.
      const elsewhere = await mkdtemp(path.join(cwd, 'elsewhere-'));
      expect((await runServerCli(['init'], elsewhere)).code).toBe(0);
      const elsewhereBlobs = path.join(elsewhere, '.edgefleet', 'server', 'blobs');
      const foreign = (await readFile(path.join(elsewhereBlobs, 'edgefleet-store-id'), 'utf8')).trim();
      expect(await serveOutcome(['--blob', elsewhereBlobs])).toContain(
        `and ${folderUrl(elsewhereBlobs)} belongs to another database (its edgefleet-store-id is ${foreign})`,
      );
      // Nothing was written into either store by the refusals.
      expect((await readFile(path.join(elsewhereBlobs, 'edgefleet-store-id'), 'utf8')).trim()).toBe(foreign);

      // A deliberate move: copy every object, the marker among them, then point the setting at the copy.
      const moved = path.join(cwd, 'moved-blobs');
      await cp(blobs, moved, { recursive: true });
      expect(await serveOutcome(['--blob', moved])).toBe('it started');
      expect(settings(stateFile)).toEqual({ blob_store_id: marker, blob_store_location: folderUrl(moved) });
    });

    it('a database from before the check (no store recorded) records its store at the next start', async () => {
      const dir = await mkdtemp(path.join(cwd, 'older-'));
      expect((await runServerCli(['init'], dir)).code).toBe(0);
      const dataDir = path.join(dir, '.edgefleet', 'server');
      const stateFile = path.join(dataDir, 'state.db');
      // As an older server left it: no settings, no marker.
      const db = new SqliteDatabase(stateFile);
      db.prepare("DELETE FROM server_settings WHERE key LIKE 'blob_store%'").run();
      db.close();
      await rm(path.join(dataDir, 'blobs', 'edgefleet-store-id'));

      expect(await serveOutcome([], dir)).toBe('it started');
      const marker = (await readFile(path.join(dataDir, 'blobs', 'edgefleet-store-id'), 'utf8')).trim();
      expect(marker).toMatch(/^[0-9a-f-]{36}$/);
      expect(settings(stateFile)).toEqual({
        blob_store_id: marker,
        blob_store_location: folderUrl(path.join(dataDir, 'blobs')),
      });
    });

    it("a new database is refused on an S3 store that holds another database's marker, at init and at serve, and stays empty", async () => {
      const s3Env = {
        EDGEFLEET_BLOB: `s3://${s3.bucket}/shared`,
        EDGEFLEET_BLOB_ENDPOINT: s3.endpoint,
        AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId,
        AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
      };
      const location = `s3://${s3.bucket}/shared at ${s3.endpoint}`;
      const first = await mkdtemp(path.join(cwd, 's3-first-'));
      expect((await runServerCli(['init'], first, s3Env)).code).toBe(0);
      const firstState = path.join(first, '.edgefleet', 'server', 'state.db');
      const id = settings(firstState).blob_store_id;
      expect(id).toMatch(/^[0-9a-f-]{36}$/);

      // An unrelated install (a staging server given production's bucket, a mistyped database): refused.
      const second = await mkdtemp(path.join(cwd, 's3-second-'));
      const secondState = path.join(second, '.edgefleet', 'server', 'state.db');
      const expected =
        `the blob store ${location} holds another database's blobs (its edgefleet-store-id is ${id}), and the ` +
        `database sqlite:${secondState} is new (empty): give this server an empty blob store or prefix of its own`;
      const init = await runServerCli(['init'], second, s3Env);
      expect(init.code).toBe(2);
      expect(init.stdout).toBe('');
      expect(init.stderr).toContain(expected);
      expect(tables(secondState)).toEqual([]);
      const served = await serveOutcome([], second, s3Env);
      expect(served).toContain('exited (2) before listening');
      expect(served).toContain(expected);
      expect(tables(secondState)).toEqual([]);

      // Its own prefix works; and allowEmptyDatabase takes the store over, as it says.
      const ownPrefix = await runServerCli(['init'], second, {
        ...s3Env,
        EDGEFLEET_BLOB: `s3://${s3.bucket}/second`,
      });
      expect(ownPrefix.code).toBe(0);
      expect(settings(secondState).blob_store_id).not.toBe(id);
      const third = await mkdtemp(path.join(cwd, 's3-third-'));
      const takeover = await runServerCli(['init'], third, {
        ...s3Env,
        EDGEFLEET_ALLOW_EMPTY_DATABASE: 'true',
      });
      expect(takeover.code).toBe(0);
      expect(settings(path.join(third, '.edgefleet', 'server', 'state.db')).blob_store_id).toBe(id);
      // The first database still starts on its store.
      expect(settings(firstState).blob_store_id).toBe(id);
      expect(await serveOutcome([], first, s3Env)).toBe('it started');
    });

    it("a store that did not answer at start, found to be another database's when it answers, stops the server (exit 2) with no readiness poll", async () => {
      const store = await startTestS3();
      const envFor = (prefix: string) => ({
        EDGEFLEET_BLOB: `s3://${store.bucket}/${prefix}`,
        EDGEFLEET_BLOB_ENDPOINT: store.endpoint,
        AWS_ACCESS_KEY_ID: store.credentials.accessKeyId,
        AWS_SECRET_ACCESS_KEY: store.credentials.secretAccessKey,
      });
      const a = await mkdtemp(path.join(cwd, 'late-a-'));
      const b = await mkdtemp(path.join(cwd, 'late-b-'));
      expect((await runServerCli(['init'], a, envFor('a'))).code).toBe(0);
      expect((await runServerCli(['init'], b, envFor('b'))).code).toBe(0);
      await store.stop({ keepObjects: true });

      // B's database given A's store while it does not answer: it starts, as an outage must not keep it down.
      const server = await startServerProcess(flags, b, envFor('a'));
      const exited = new Promise<number | null>((done) => {
        if (server.child.exitCode !== null) done(server.child.exitCode);
        else server.child.once('exit', (code) => done(code));
      });
      expect(server.logs).toContainEqual(
        expect.objectContaining({ msg: expect.stringContaining('cannot check that the blob store') }),
      );
      const back = await startTestS3(store.bucket, { port: store.port, directory: store.directory });
      try {
        // Nothing polls /readyz: the background check finds it.
        expect(await exited).toBe(2);
        expect(server.logs).toContainEqual(
          expect.objectContaining({
            level: 50,
            msg: expect.stringContaining(
              `stopping: the blob store s3://${store.bucket}/a at ${store.endpoint} is not this database's`,
            ),
          }),
        );
      } finally {
        await server.stop('SIGKILL');
        await back.stop();
      }
    });

    it("a new database started while its store did not answer is stopped (exit 2) once the store answers with another database's marker", async () => {
      const store = await startTestS3();
      const env = {
        EDGEFLEET_BLOB: `s3://${store.bucket}/taken`,
        EDGEFLEET_BLOB_ENDPOINT: store.endpoint,
        AWS_ACCESS_KEY_ID: store.credentials.accessKeyId,
        AWS_SECRET_ACCESS_KEY: store.credentials.secretAccessKey,
      };
      const owner = await mkdtemp(path.join(cwd, 'taken-owner-'));
      expect((await runServerCli(['init'], owner, env)).code).toBe(0);
      const id = settings(path.join(owner, '.edgefleet', 'server', 'state.db')).blob_store_id;
      await store.stop({ keepObjects: true });

      // An outage does not keep a new server from starting...
      const fresh = await mkdtemp(path.join(cwd, 'taken-new-'));
      const server = await startServerProcess(flags, fresh, env);
      const exited = new Promise<number | null>((done) => {
        if (server.child.exitCode !== null) done(server.child.exitCode);
        else server.child.once('exit', (code) => done(code));
      });
      const back = await startTestS3(store.bucket, { port: store.port, directory: store.directory });
      try {
        // ...but it does not take over the store it finds another database's when it answers.
        expect(await exited).toBe(2);
        expect(server.logs).toContainEqual(
          expect.objectContaining({
            level: 50,
            msg: expect.stringContaining(
              `stopping: the blob store s3://${store.bucket}/taken at ${store.endpoint} holds another database's blobs (its edgefleet-store-id is ${id}), and this database is new (its first start could not check the store, which did not answer)`,
            ),
          }),
        );
        expect(settings(path.join(fresh, '.edgefleet', 'server', 'state.db')).blob_store_id).toBeUndefined();
      } finally {
        await server.stop('SIGKILL');
        await back.stop();
      }
    });

    it('a damaged marker is refused at start as the wrong store, not taken for an outage', async () => {
      const dir = await mkdtemp(path.join(cwd, 'damaged-'));
      expect((await runServerCli(['init'], dir)).code).toBe(0);
      const blobs = path.join(dir, '.edgefleet', 'server', 'blobs');
      await writeFile(path.join(blobs, 'edgefleet-store-id'), 'not an id\n');
      const refused = await serveOutcome([], dir);
      expect(refused).toContain('exited (2) before listening');
      expect(refused).toContain(
        `the blob store ${folderUrl(blobs)} cannot be told apart from another database's: its edgefleet-store-id object is damaged ("not an id")`,
      );
      // A large object there is damaged too, and only its first bytes are read.
      await writeFile(path.join(blobs, 'edgefleet-store-id'), 'x'.repeat(64 * 1024 * 1024));
      const large = await serveOutcome([], dir);
      expect(large).toContain('exited (2) before listening');
      expect(large).toContain(`its edgefleet-store-id object is damaged ("${'x'.repeat(40)}")`);
    });

    it('a marker a replica of this database wrote, left by a replica that lost the first start and stopped, is put right', async () => {
      const dir = await mkdtemp(path.join(cwd, 'replica-race-'));
      expect((await runServerCli(['init'], dir)).code).toBe(0);
      const dataDir = path.join(dir, '.edgefleet', 'server');
      const markerFile = path.join(dataDir, 'blobs', 'edgefleet-store-id');
      const recorded = (await readFile(markerFile, 'utf8')).trim();
      // As such a replica leaves it: its own id noted in the database, then written into the store.
      const lost = randomUUID();
      const db = new SqliteDatabase(path.join(dataDir, 'state.db'));
      db.prepare('INSERT INTO server_settings (key, value) VALUES (?, ?)').run(
        `blob_store_proposal:${lost}`,
        folderUrl(path.join(dataDir, 'blobs')),
      );
      db.close();
      await writeFile(markerFile, `${lost}\n`);

      expect(await serveOutcome([], dir)).toBe('it started');
      expect((await readFile(markerFile, 'utf8')).trim()).toBe(recorded);
    });
  },
);
