import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import SqliteDatabase, { type Database } from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ModelActivity, ModelCountersRepository, migrate } from '../../src/state/index.js';

interface Line {
  level: 'warn' | 'info';
  details: Record<string, unknown>;
  message: string;
}

/** A logger that keeps its lines and lets a test wait for one. */
function recordingLogger() {
  const lines: Line[] = [];
  const waiters: { match: (line: Line) => boolean; resolve: (line: Line) => void }[] = [];
  const add = (line: Line) => {
    lines.push(line);
    for (const waiter of waiters.filter((w) => w.match(line))) {
      waiters.splice(waiters.indexOf(waiter), 1);
      waiter.resolve(line);
    }
  };
  return {
    lines,
    warn: (details: Record<string, unknown>, message: string) => add({ level: 'warn', details, message }),
    info: (details: Record<string, unknown>, message: string) => add({ level: 'info', details, message }),
    next: (event: string) =>
      new Promise<Line>((resolve) =>
        waiters.push({ match: (line) => line.details.event === event, resolve }),
      ),
  };
}

/**
 * Fills the database up to SQLite's own size limit (PRAGMA max_page_count, on this connection): from then on a
 * counter row for a new model does not fit, and the write fails with a real SQLITE_FULL.
 */
function fill(db: Database, repository: ModelCountersRepository): void {
  const pages = db.pragma('page_count', { simple: true }) as number;
  db.pragma(`max_page_count = ${pages + 2}`);
  for (let i = 0; ; i++) {
    try {
      repository.add([
        { model: `filler-${i}`, inferences: 1, samples: 0, lastInferenceAt: 1, lastSampleAt: null },
      ]);
    } catch (error) {
      expect((error as { code?: string }).code).toBe('SQLITE_FULL');
      return;
    }
  }
}

let root: string;
let db: Database;
let repository: ModelCountersRepository;
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'edgefleet-activity-'));
  db = new SqliteDatabase(join(root, 'agent.db'));
  db.pragma('journal_mode = WAL');
  migrate(db);
  repository = new ModelCountersRepository(db);
});
afterEach(async () => {
  db.close();
  await rm(root, { recursive: true, force: true });
});

const countsOf = (model: string) => repository.list().find((counters) => counters.model === model);

describe('ModelActivity on a full database', () => {
  it('its timer-driven flush survives SQLITE_FULL, keeps the counts, and writes them once space returns', async () => {
    fill(db, repository);
    const logger = recordingLogger();
    const activity = new ModelActivity({ repository, flushIntervalMs: 5, logger });
    try {
      const unwritable = logger.next('model-counters-unwritable');
      activity.inference('resnet', 100);
      activity.sample('resnet', 90);
      // Before the fix the timer's flush threw: an uncaught exception (the agent exited 1, a crash loop).
      const warned = await unwritable;
      expect(warned.level).toBe('warn');
      expect(warned.message).toMatch(/database or disk is full.*kept in memory/);
      // The device's state, not a bug: no stack.
      expect(warned.details.err).toBeUndefined();
      expect(warned.details.code).toBe('SQLITE_FULL');
      activity.inference('resnet', 120);
      expect(countsOf('resnet')).toBeUndefined();
      expect(activity.snapshot().find((c) => c.model === 'resnet')).toMatchObject({
        inferences: 2,
        samples: 1,
        lastInferenceAt: 120,
      });

      const written = logger.next('model-counters-written');
      db.pragma('max_page_count = 1000000');
      await written;
      // Every count exactly once: the failed transactions counted nothing.
      expect(countsOf('resnet')).toEqual({
        model: 'resnet',
        inferences: 2,
        samples: 1,
        lastInferenceAt: 120,
        lastSampleAt: 90,
      });
    } finally {
      activity.close();
    }
  });

  it('warns once, then at most once a minute with the number left out; close does not throw', () => {
    fill(db, repository);
    const logger = recordingLogger();
    let now = 1_000_000;
    const activity = new ModelActivity({ repository, flushIntervalMs: 3_600_000, logger, now: () => now });
    activity.inference('mlp');
    expect(activity.flush()).toBe(false);
    for (let i = 0; i < 5; i++) {
      now += 10_000;
      activity.inference('mlp');
      expect(activity.flush()).toBe(false);
    }
    expect(logger.lines.filter((l) => l.details.event === 'model-counters-unwritable')).toHaveLength(1);
    now += 10_000;
    activity.inference('mlp');
    expect(activity.flush()).toBe(false);
    const warnings = logger.lines.filter((l) => l.details.event === 'model-counters-unwritable');
    expect(warnings).toHaveLength(2);
    expect(warnings[1]!.details.failuresNotLogged).toBe(5);
    expect(() => activity.close()).not.toThrow();
    expect(activity.snapshot().find((c) => c.model === 'mlp')?.inferences).toBe(7);
    // Closing is the last chance: what is lost is said, whatever the once-a-minute limit.
    const lost = logger.lines.filter((l) => l.details.event === 'model-counters-lost');
    expect(lost).toHaveLength(1);
    expect(lost[0]!.details).toMatchObject({ models: ['mlp'], inferences: 7 });
  });
});
