/**
 * The server's disk full while it runs (finding F3): a write the disk refuses is an outage of the database or
 * blob store, answered 503 DependencyUnavailable with Retry-After saying the disk is full, logged once with the
 * real cause (SQLITE_FULL, ENOSPC). /readyz reports a component not ready from the free space of the file system
 * under it (storage.minFreeBytes), not from one refused write. Real parts: a SQLite file capped with
 * `PRAGMA max_page_count` on the server's own connection, a floor above the test disk's free space, and a blob
 * folder on a 256 KiB tmpfs (mounted when the tests run as root; skipped otherwise).
 */
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, statfs, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { sql } from 'kysely';
import { getTestModel } from '@edgefleet/core';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalBlobStore } from '../../src/blobs/index.js';
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

  it('answers 503 "disk is full" with Retry-After and logs SQLITE_FULL once; /readyz asks the file system', async () => {
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

    // The file system under the database still has room (only the file was capped): /readyz stays ready, as
    // one write too large for the space left does not make a full disk.
    expect((await t.call('GET', '/readyz')).status).toBe(200);

    // The cause is in the log once (not a 500 with a stack per request), as SQLITE_FULL, not a failed ROLLBACK.
    const outage = log.lines.filter((line) => /database cannot be used/.test(line.msg));
    expect(outage).toHaveLength(1);
    expect(outage[0]).toMatchObject({ level: 50, err: { code: 'SQLITE_FULL' } });
    expect(log.lines.filter((line) => line.msg === 'request failed')).toEqual([]);
    expect(JSON.stringify(log.lines)).not.toMatch(/cannot rollback/);

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

  it('answers 503 for a write larger than the space left while /readyz stays ready; fails blobStore while the disk is below the floor', async (context) => {
    if (mount === undefined) {
      context.skip();
      return;
    }
    const log = collectLog();
    const t = await startTestServer({
      blob: path.join(mount, 'blobs'),
      config: { storage: { minFreeBytes: 64 * 1024 } },
      logger: log.logger,
    });
    try {
      expect((await t.call('GET', '/readyz')).status).toBe(200);
      // A 600 KiB model (valid ONNX) into the 256 KiB file system: ENOSPC from the kernel.
      const model = getTestModel('slow').build();
      expect(model.length).toBeGreaterThan(512 * 1024);
      const upload = () =>
        fetch(`${t.url}/api/v1/models/big/versions/1`, {
          method: 'POST',
          headers: { authorization: `Bearer ${t.adminToken}`, 'content-type': 'application/octet-stream' },
          body: model,
        });
      const answer = await upload();
      expect(answer.status).toBe(503);
      expect(answer.headers.get('retry-after')).toBe('5');
      expect(await answer.json()).toMatchObject({
        code: 'DependencyUnavailable',
        message: expect.stringMatching(
          /^the server's blob store cannot be used now: the server's disk is full/,
        ),
        details: { component: 'blobStore', cause: 'diskFull' },
      });
      expect((await upload()).status).toBe(503);
      const outage = log.lines.filter((line) => /blob store cannot be used/.test(line.msg));
      expect(outage).toEqual([
        expect.objectContaining({ level: 50, err: expect.objectContaining({ code: 'ENOSPC' }) }),
      ]);
      // The disk still has room for everything smaller: the server stays in the balancer.
      expect((await t.call('GET', '/readyz')).status).toBe(200);

      // Filled to below the floor: not ready until space is freed, then ready at the next probe.
      const filler = path.join(mount, 'filler');
      const { bavail, bsize } = await statfs(mount);
      await writeFile(filler, Buffer.alloc(Math.max(0, Number(bavail) * Number(bsize) - 16 * 1024)));
      expect(await t.call('GET', '/readyz')).toMatchObject({
        status: 503,
        body: { code: 'NotReady', details: { failing: ['blobStore'] } },
      });
      expect((await t.call('GET', '/readyz')).status).toBe(503);
      await rm(filler);
      expect((await t.call('GET', '/readyz')).status).toBe(200);
    } finally {
      await t.stop();
    }
  });
});

describe('a floor of free space above what the disk has', () => {
  it('fails /readyz for the SQLite database and the blob folder, saying how much is free', async () => {
    const log = collectLog();
    const t = await startTestServer({
      config: { storage: { minFreeBytes: Number.MAX_SAFE_INTEGER } },
      logger: log.logger,
    });
    try {
      expect(await t.call('GET', '/readyz')).toMatchObject({
        status: 503,
        body: { code: 'NotReady', details: { failing: expect.arrayContaining(['database', 'blobStore']) } },
      });
      const reasons = log.lines.filter((line) => /readiness check \w+ failed/.test(line.msg));
      expect(reasons.map((line) => line.msg).sort()).toEqual([
        expect.stringMatching(/blobStore's disk is full: \d+ bytes free .* below storage\.minFreeBytes/),
        expect.stringMatching(/database's disk is full: \d+ bytes free .* below storage\.minFreeBytes/),
      ]);
    } finally {
      await t.stop();
    }
  });
});

describe('readiness after an I/O error of the disk', () => {
  it('fails the component for the window after the last I/O error, by the injected clock; a full disk is not noted', () => {
    let now = 1_000_000;
    const faults = new RecentDiskFaults({ now: () => now, windowMs: 30_000 });
    faults.record(Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' }));
    faults.record(Object.assign(new Error('no space left on device'), { code: 'ENOSPC' }));
    expect(() => faults.check('database')).not.toThrow();
    expect(() => faults.check('blobStore')).not.toThrow();

    faults.record(Object.assign(new Error('disk I/O error'), { code: 'SQLITE_IOERR_WRITE' }));
    now += 29_999;
    expect(() => faults.check('database')).toThrow(/its disk failed it \(an I\/O error\)/);
    expect(() => faults.check('blobStore')).not.toThrow();
    now += 1;
    expect(() => faults.check('database')).not.toThrow();
  });

  it('clears a component at its next write that succeeds, the other component left as it was', () => {
    const faults = new RecentDiskFaults({ now: () => 1_000_000 });
    faults.record(Object.assign(new Error('disk I/O error'), { code: 'SQLITE_IOERR_WRITE' }));
    faults.record(Object.assign(new Error('i/o error, write'), { code: 'EIO' }));
    expect(() => faults.check('database')).toThrow(/ready again at the next write that succeeds/);
    faults.writeSucceeded('database');
    expect(() => faults.check('database')).not.toThrow();
    expect(() => faults.check('blobStore')).toThrow(/its disk failed it/);
    faults.writeSucceeded('blobStore');
    expect(() => faults.check('blobStore')).not.toThrow();
  });

  it('hears a blob stored in a local folder, not a put that failed', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-blob-written-'));
    try {
      let written = 0;
      const store = new LocalBlobStore(dir, { onWritten: () => void (written += 1) });
      await store.put('a/b', Buffer.from('x'));
      expect(written).toBe(1);
      // 'a/b' is a blob: 'a/b/c' cannot be stored under it.
      await expect(store.put('a/b/c', Buffer.from('y'))).rejects.toThrow();
      expect(written).toBe(1);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
