/**
 * The server's disk full while it runs (finding F3): a write the disk refuses is an outage of the database or
 * blob store, answered 503 DependencyUnavailable with Retry-After saying the disk is full, logged once with the
 * real cause (SQLITE_FULL, ENOSPC), and /readyz reports the component not ready. Real parts: a SQLite file capped
 * with `PRAGMA max_page_count` on the server's own connection, and a blob folder on a 256 KiB tmpfs (mounted
 * when the tests run as root; skipped otherwise).
 */
import { spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import Fastify, { type FastifyBaseLogger } from 'fastify';
import { sql } from 'kysely';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalBlobStore } from '../../src/blobs/index.js';
import { installErrorHandlers } from '../../src/http/errors.js';
import { OutageLog } from '../../src/http/outage-log.js';
import { RecentDiskFaults } from '../../src/http/recent-disk-faults.js';
import { startTestServer, type TestServer } from '../support/server.js';

interface LogLine {
  level: number;
  msg: string;
  err?: { message?: string; code?: string; stack?: string };
}

function collectLog(): { lines: LogLine[]; logger: pino.Logger } {
  const lines: LogLine[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n').filter(Boolean)) lines.push(JSON.parse(line));
      done();
    },
  });
  return { lines, logger: pino({ level: 'info' }, sink) };
}

describe('the SQLite database on a full disk', { timeout: 60_000 }, () => {
  let t: TestServer;
  const log = collectLog();
  beforeAll(async () => {
    t = await startTestServer({ logger: log.logger });
    expect(t.server.database.engine).toBe('sqlite');
    await t.call('POST', '/api/v1/fleets', {
      token: t.adminToken,
      body: { name: 'plant', outputConfig: { s3OutputLocation: 's3://captures/plant' } },
    });
  });
  afterAll(async () => t?.stop());

  /** Registers a device (a write in a transaction) and answers the server's reply. */
  const register = (name: string) =>
    t.call('POST', '/api/v1/fleets/plant/devices', { token: t.adminToken, body: { devices: [{ name }] } });

  it('answers 503 "disk is full" with Retry-After, logs SQLITE_FULL once, and /readyz fails the database', async () => {
    expect((await register('before')).status).toBe(201);
    expect((await t.call('GET', '/readyz')).status).toBe(200);

    // The file may grow by no page from now on: the next write that needs one fails with SQLITE_FULL.
    const { rows } = await sql<{ page_count: number }>`pragma page_count`.execute(t.server.database.db);
    await sql.raw(`pragma max_page_count = ${rows[0]!.page_count}`).execute(t.server.database.db);
    let answer = await register('full-0');
    for (let i = 1; answer.status === 201 && i < 200; i++) answer = await register(`full-${i}`);

    expect(answer).toMatchObject({
      status: 503,
      body: {
        code: 'DependencyUnavailable',
        details: { component: 'database', cause: 'diskFull' },
      },
    });
    expect(answer.body.message).toMatch(
      /^the server's database cannot be used now: the server's disk is full/,
    );
    expect(answer.headers.get('retry-after')).toBe('5');
    for (let i = 0; i < 3; i++) expect((await register(`again-${i}`)).status).toBe(503);

    const ready = await t.call('GET', '/readyz');
    expect(ready).toMatchObject({
      status: 503,
      body: { code: 'NotReady', details: { failing: ['database'] } },
    });

    // The cause is in the log once (not a 500 with a stack per request), as SQLITE_FULL, not a failed ROLLBACK.
    const outage = log.lines.filter((line) => /database cannot be used/.test(line.msg));
    expect(outage).toHaveLength(1);
    expect(outage[0]).toMatchObject({ level: 50, err: { code: 'SQLITE_FULL' } });
    expect(log.lines.filter((line) => line.msg === 'request failed')).toEqual([]);
    expect(JSON.stringify(log.lines)).not.toMatch(/cannot rollback/);
    const readinessLines = log.lines.filter((line) => /readiness check database failed/.test(line.msg));
    expect(readinessLines).toEqual([
      expect.objectContaining({ level: 40, msg: expect.stringMatching(/its disk is full/) }),
    ]);

    // Space again: the next write succeeds on the same connection.
    await sql.raw('pragma max_page_count = 1073741823').execute(t.server.database.db);
    expect((await register('after')).status).toBe(201);
  });
});

/** Whether this process may mount a tmpfs (root in the test container; a developer's machine usually not). */
const mayMount =
  process.getuid?.() === 0 && spawnSync('mount', ['--version'], { stdio: 'ignore' }).status === 0;

describe('the blob folder on a full disk', () => {
  let mount: string | undefined;
  beforeAll(async () => {
    if (!mayMount) return;
    const dir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-full-blobs-'));
    const result = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=256k,mode=0700', 'tmpfs', dir]);
    if (result.status === 0) mount = dir;
    else await rm(dir, { recursive: true, force: true });
  });
  afterAll(async () => {
    if (mount === undefined) return;
    spawnSync('umount', [mount]);
    await rm(mount, { recursive: true, force: true });
  });

  it('answers 503 naming the blob store and the full disk, and /readyz fails blobStore until the window ends', async (context) => {
    if (mount === undefined) {
      context.skip();
      return;
    }
    const blobsDir = path.join(mount, 'blobs');
    await mkdir(blobsDir);
    const store = new LocalBlobStore(blobsDir);
    const log = collectLog();
    let now = 1_000_000;
    const diskFaults = new RecentDiskFaults({ now: () => now, windowMs: 30_000 });
    const app = Fastify({ loggerInstance: log.logger as FastifyBaseLogger });
    installErrorHandlers(app, new OutageLog({ now: () => now, diskFaults }));
    // A write of 512 KiB into the 256 KiB file system: ENOSPC from the kernel.
    app.put('/blob', async () => store.put('models/m/1/model.onnx', Buffer.alloc(512 * 1024, 1)));
    app.get('/readyz', async () => {
      diskFaults.check('blobStore');
      return { status: 'ready' };
    });
    await app.listen({ host: '127.0.0.1', port: 0 });
    const url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
    try {
      const answer = await fetch(`${url}/blob`, { method: 'PUT' });
      expect(answer.status).toBe(503);
      expect(answer.headers.get('retry-after')).toBe('5');
      expect(await answer.json()).toMatchObject({
        code: 'DependencyUnavailable',
        message: expect.stringMatching(
          /^the server's blob store cannot be used now: the server's disk is full/,
        ),
        details: { component: 'blobStore', cause: 'diskFull' },
      });
      expect((await fetch(`${url}/blob`, { method: 'PUT' })).status).toBe(503);
      const outage = log.lines.filter((line) => /blob store cannot be used/.test(line.msg));
      expect(outage).toEqual([
        expect.objectContaining({ level: 50, err: expect.objectContaining({ code: 'ENOSPC' }) }),
      ]);

      expect((await fetch(`${url}/readyz`)).status).toBe(500);
      // The window after the last refused write ends: ready again.
      now += 30_000;
      expect((await fetch(`${url}/readyz`)).status).toBe(200);
    } finally {
      await app.close();
    }
  });
});
