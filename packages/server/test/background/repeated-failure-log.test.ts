/**
 * A background worker that keeps failing (a database outage) logs its first failure, then at most one line a
 * minute with the number left out, and says when it works again; the clock is injected.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { pino, type Logger } from 'pino';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { RepeatedFailureLog } from '../../src/background/index.js';
import { startPeriodicTask } from '../../src/background/periodic-task.js';
import { LocalBlobStore } from '../../src/blobs/index.js';
import { ModelStore } from '../../src/models/index.js';
import { PackagingJobStore, PackagingWorker } from '../../src/packaging/index.js';
import { migrateToLatest, openDatabase } from '../../src/storage/index.js';

function memoryLogger(): { logger: Logger; lines: () => Record<string, unknown>[] } {
  const written: string[] = [];
  const logger = pino(
    new Writable({
      write(chunk: Buffer, _encoding, done) {
        written.push(chunk.toString('utf8'));
        done();
      },
    }),
  );
  return {
    logger,
    lines: () =>
      written
        .join('')
        .split('\n')
        .filter((line) => line !== '')
        .map((line) => JSON.parse(line) as Record<string, unknown>),
  };
}

describe('RepeatedFailureLog', () => {
  it('logs the first failure, then at most one a minute with the count left out, and the recovery', () => {
    const { logger, lines } = memoryLogger();
    let now = 1_000_000;
    const log = new RepeatedFailureLog({
      logger,
      message: 'worker: could not poll; will retry',
      now: () => now,
    });
    for (let second = 0; second < 60; second += 1) {
      now = 1_000_000 + second * 1000;
      log.failed(new Error('connect ECONNREFUSED'));
    }
    expect(lines()).toHaveLength(1);
    expect(lines()[0]).toMatchObject({
      level: 40,
      msg: 'worker: could not poll; will retry (repeats logged at most once a minute)',
      err: { message: 'connect ECONNREFUSED' },
    });
    now = 1_000_000 + 60_000;
    log.failed(new Error('connect ECONNREFUSED'));
    expect(lines()).toHaveLength(2);
    expect(lines()[1]).toMatchObject({
      level: 40,
      failuresNotLogged: 59,
      msg: 'worker: could not poll; will retry (still failing; 59 more such failure(s) since the last line, not logged)',
    });
    log.succeeded();
    log.succeeded();
    expect(lines()).toHaveLength(3);
    expect(lines()[2]).toMatchObject({
      level: 30,
      failures: 61,
      msg: 'no longer failing after 61 failures in a row: worker: could not poll; will retry',
    });
    // A new outage is logged at once.
    now += 1000;
    log.failed(new Error('again'));
    expect(lines()).toHaveLength(4);
    expect(lines()[3]).toMatchObject({ err: { message: 'again' } });
  });
});

describe('background workers during an outage', () => {
  const folders: string[] = [];
  afterAll(async () => {
    for (const folder of folders) await rm(folder, { recursive: true, force: true });
  });

  it('a periodic task failing every tick writes one line a minute', async () => {
    vi.useFakeTimers();
    try {
      const { logger, lines } = memoryLogger();
      let now = 0;
      const task = startPeriodicTask(() => Promise.reject(new Error('database unreachable')), {
        intervalMs: 1000,
        logger,
        failureMessage: 'deployment sweep failed; will retry',
        now: () => now,
      });
      for (let tick = 1; tick <= 120; tick += 1) {
        now = tick * 1000;
        await vi.advanceTimersByTimeAsync(1000);
      }
      await task.stop();
      expect(lines().map((l) => l.failuresNotLogged)).toEqual([undefined, 59]);
    } finally {
      vi.useRealTimers();
    }
  });

  it('the packaging worker on a database that is gone writes one line a minute, not one a poll', async () => {
    const work = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-failure-log-'));
    folders.push(work);
    const database = await openDatabase({ engine: 'sqlite', file: path.join(work, 'state.db') });
    await migrateToLatest(database.db);
    const blobs = new LocalBlobStore(path.join(work, 'blobs'));
    const models = new ModelStore(database.db, { blobs, workDir: work, maxUploadBytes: 1024 });
    const { logger, lines } = memoryLogger();
    let now = 0;
    const worker = new PackagingWorker({
      jobs: new PackagingJobStore(database.db, models),
      models,
      blobs,
      signing: undefined as never, // no job is ever claimed: the database is closed before the first poll
      workDir: work,
      pollIntervalMs: 3_600_000,
      logger,
      now: () => now,
    });
    // The outage: the database no longer answers (a real closed connection, not a stand-in).
    await database.close();
    for (let poll = 0; poll < 90; poll += 1) {
      now = poll * 1000;
      await worker.drain();
    }
    await worker.stop();
    expect(lines()).toHaveLength(2);
    expect(lines()[0]!.msg).toMatch(/^packaging worker: could not look for jobs; will retry/);
    expect(lines()[1]).toMatchObject({ failuresNotLogged: 59 });
  });
});
