/**
 * `/readyz` under a hung check and under a flood of probes: each check has a deadline (a hung one answers not
 * ready, naming it, and is not started again while it hangs), and probes that arrive together share one run of
 * the checks. Real apps (real HTTP for the flood), a real SQLite database for a query stuck behind a transaction.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { buildApp } from '../../src/http/app.js';
import { Readiness, type ReadinessCheck } from '../../src/http/readiness.js';
import { openDatabase, pingDatabase, type ServerDatabase } from '../../src/storage/index.js';

/** A check that waits for `open()` each time it is run, counting its runs. */
function gatedCheck(name: string) {
  let open: () => void = () => undefined;
  let gate = new Promise<void>((resolve) => (open = resolve));
  const gated = {
    runs: 0,
    open: () => open(),
    /** A new gate for the runs after this. */
    close: () => {
      gate = new Promise<void>((resolve) => (open = resolve));
    },
    check: {
      name,
      check: async () => {
        gated.runs += 1;
        await gate;
      },
    } satisfies ReadinessCheck,
  };
  return gated;
}

const appOptions = (readiness: Readiness) => ({
  logger: pino({ level: 'silent' }),
  authenticators: {},
  readiness,
  isShuttingDown: () => false,
  requestTimeoutMs: 60_000,
});

describe('readiness probes arriving together', () => {
  it('share one run of each check, across the listeners that share the Readiness', async () => {
    const database = gatedCheck('database');
    const readiness = new Readiness([database.check]);
    const apps = [await buildApp(appOptions(readiness)), await buildApp(appOptions(readiness))];
    // Counts the probes that reached their handler: the gate opens once all have.
    let arrived = 0;
    for (const app of apps) app.addHook('preHandler', async () => void (arrived += 1));
    const urls: string[] = [];
    for (const app of apps) urls.push(await app.listen({ host: '127.0.0.1', port: 0 }));
    try {
      const probes = Array.from({ length: 40 }, (_, i) => fetch(`${urls[i % 2]}/readyz`));
      while (arrived < 40) await new Promise((resolve) => setTimeout(resolve, 5));
      await new Promise((resolve) => setImmediate(resolve));
      database.open();
      const answers = await Promise.all(probes);
      expect(answers.map((answer) => answer.status)).toEqual(Array(40).fill(200));
      expect(database.runs).toBe(1);
      // A probe after that evaluation runs the check again: a shared result is never a stale one.
      expect((await fetch(`${urls[0]}/readyz`)).status).toBe(200);
      expect(database.runs).toBe(2);
    } finally {
      for (const app of apps) await app.close();
    }
  });
});

describe('a server that begins to stop while the checks run', () => {
  it('answers not ready, to the probe that started the evaluation and to one sharing it', async () => {
    const database = gatedCheck('database');
    let shuttingDown = false;
    const app = await buildApp({
      ...appOptions(new Readiness([database.check])),
      isShuttingDown: () => shuttingDown,
    });
    try {
      const first = app.inject({ method: 'GET', url: '/readyz' });
      const second = app.inject({ method: 'GET', url: '/readyz' });
      while (database.runs < 1) await new Promise((resolve) => setImmediate(resolve));
      // The database given up while its ping ran: the check itself still passes.
      shuttingDown = true;
      database.open();
      for (const answer of await Promise.all([first, second])) {
        expect(answer.statusCode).toBe(503);
        expect(answer.json()).toMatchObject({ code: 'NotReady', message: 'the server is shutting down' });
      }
      expect(database.runs).toBe(1);
    } finally {
      await app.close();
    }
  });
});

describe('a readiness check that does not answer', () => {
  it('fails the probe, naming the check as not answering, and is not started again until it answers', async () => {
    const statfs = gatedCheck('blobStore');
    const app = await buildApp(
      appOptions(
        new Readiness([statfs.check, { name: 'database', check: async () => {} }], { timeoutMs: 20 }),
      ),
    );
    try {
      for (let probe = 0; probe < 3; probe++) {
        const answer = await app.inject({ method: 'GET', url: '/readyz' });
        expect(answer.statusCode).toBe(503);
        expect(answer.json()).toMatchObject({
          code: 'NotReady',
          details: { failing: ['blobStore'], timedOut: ['blobStore'] },
        });
        expect(answer.json().message).toMatch(/blobStore: no answer within the check's deadline/);
      }
      // The hung run is waited on, not repeated: one statfs held, not one per probe.
      expect(statfs.runs).toBe(1);
      statfs.open();
      await new Promise((resolve) => setImmediate(resolve));
      expect((await app.inject({ method: 'GET', url: '/readyz' })).statusCode).toBe(200);
      expect(statfs.runs).toBe(2);
    } finally {
      await app.close();
    }
  });

  describe('a database query waiting behind a transaction (real SQLite)', () => {
    let dir: string;
    let database: ServerDatabase;
    beforeEach(async () => {
      dir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-readiness-'));
      database = await openDatabase({ engine: 'sqlite', file: path.join(dir, 'state.db') });
    });
    afterEach(async () => {
      await database.close();
      await rm(dir, { recursive: true, force: true });
    });

    it('answers not ready while the transaction holds the connection, ready once it ends', async () => {
      const app = await buildApp(
        appOptions(
          new Readiness([{ name: 'database', check: () => pingDatabase(database) }], { timeoutMs: 200 }),
        ),
      );
      let end: () => void = () => undefined;
      const held = new Promise<void>((resolve) => (end = resolve));
      let begun: () => void = () => undefined;
      const holding = new Promise<void>((resolve) => (begun = resolve));
      const transaction = database.db.transaction().execute(async () => {
        begun();
        await held;
      });
      try {
        await holding;
        const answer = await app.inject({ method: 'GET', url: '/readyz' });
        expect(answer.statusCode).toBe(503);
        expect(answer.json()).toMatchObject({ details: { failing: ['database'], timedOut: ['database'] } });
        end();
        await transaction;
        // The ping that waited gets the connection now; the next probe finds the database ready.
        await new Promise((resolve) => setImmediate(resolve));
        expect((await app.inject({ method: 'GET', url: '/readyz' })).statusCode).toBe(200);
      } finally {
        end();
        await app.close();
      }
    });
  });
});
