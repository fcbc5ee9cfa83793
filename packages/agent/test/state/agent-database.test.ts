import { spawn } from 'node:child_process';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import SqliteDatabase from 'better-sqlite3';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  AgentDatabase,
  LATEST_SCHEMA_VERSION,
  MIGRATIONS,
  ModelActivity,
  agentDatabasePath,
  capturePayloadFolder,
  migrate,
  type Migration,
} from '../../src/state/index.js';
import { formBatch } from './form-batch.js';

let root: string;
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'edgefleet-state-'));
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

const row = (captureId: string, model = 'resnet', at = 1000) => ({
  captureId,
  model,
  meta: JSON.stringify({ captureId }),
  payload: Buffer.from(`bytes of ${captureId}`),
  enqueuedAt: at,
});

describe('opening the agent database', () => {
  it('creates the file and its folder, in WAL mode with synchronous NORMAL, at the latest schema version', async () => {
    const path = agentDatabasePath(join(root, 'nested', 'data'));
    const db = AgentDatabase.open({ path });
    expect(db.schemaVersion).toBe(LATEST_SCHEMA_VERSION);
    expect(db.synchronous).toBe(1);
    db.loadedModels.record({ name: 'a', url: '/a', loadedAt: 1 });
    await db.syncWal();
    db.close();
    const raw = new SqliteDatabase(path, { readonly: true });
    expect(raw.pragma('journal_mode', { simple: true })).toBe('wal');
    raw.close();
  });

  it('opens an existing database without migrating it again, keeping its data', () => {
    const path = agentDatabasePath(root);
    const first = AgentDatabase.open({ path });
    first.loadedModels.record({ name: 'resnet', url: '/models/resnet', loadedAt: 5 });
    first.close();
    const second = AgentDatabase.open({ path, synchronous: 'FULL' });
    expect(second.synchronous).toBe(2);
    expect(second.loadedModels.list()).toEqual([{ name: 'resnet', url: '/models/resnet', loadedAt: 5 }]);
    second.close();
  });

  it('refuses a database from a newer agent, naming both versions', () => {
    const path = agentDatabasePath(root);
    AgentDatabase.open({ path }).close();
    const raw = new SqliteDatabase(path);
    raw.pragma(`user_version = ${LATEST_SCHEMA_VERSION + 7}`);
    raw.close();
    expect(() => AgentDatabase.open({ path })).toThrow(
      new RegExp(
        `schema version ${LATEST_SCHEMA_VERSION + 7}, newer than this agent knows \\(${LATEST_SCHEMA_VERSION}\\)`,
      ),
    );
  });

  it('refuses a file that is not a database', async () => {
    const path = join(root, 'agent.db');
    await writeFile(
      path,
      'this is not SQLite, it is a text file that happens to be long enough to have a header',
    );
    expect(() => AgentDatabase.open({ path })).toThrow(/cannot use the agent database .*agent\.db/);
  });

  it('applies migrations in order, each with its version bump, and leaves the previous version when one fails', () => {
    const raw = new SqliteDatabase(join(root, 'm.db'));
    const steps: Migration[] = [
      { version: 1, description: 'a', sql: 'CREATE TABLE a (x INTEGER)' },
      { version: 2, description: 'b', sql: 'CREATE TABLE b (y INTEGER)' },
    ];
    expect(migrate(raw, steps)).toEqual([1, 2]);
    expect(migrate(raw, steps)).toEqual([]);
    const broken: Migration[] = [
      ...steps,
      { version: 3, description: 'c', sql: 'CREATE TABLE c (z INTEGER); INSERT INTO nowhere VALUES (1)' },
    ];
    expect(() => migrate(raw, broken)).toThrow(/nowhere/);
    expect(raw.pragma('user_version', { simple: true })).toBe(2);
    expect(raw.prepare("SELECT name FROM sqlite_master WHERE name = 'c'").get()).toBeUndefined();
    raw.close();
  });
});

describe('schema version 4: failed reads of a payload counted across restarts', () => {
  it('upgrades a version 3 database (its queued captures at 0 tries); the tries recorded are read back after a reopen', () => {
    const path = agentDatabasePath(root);
    const old = new SqliteDatabase(path);
    old.pragma('journal_mode = WAL');
    expect(migrate(old, MIGRATIONS.slice(0, 3))).toEqual([1, 2, 3]);
    old
      .prepare(
        "INSERT INTO capture_queue (capture_id, model, meta, payload, enqueued_at) VALUES ('queued-by-v3', 'm', '{}', ?, 1)",
      )
      .run(Buffer.from('bytes'));
    old.close();

    let db = AgentDatabase.open({ path });
    try {
      expect(db.schemaVersion).toBe(LATEST_SCHEMA_VERSION);
      db.captureQueue.enqueue([row('queued-by-v4')]);
      expect(db.captureQueue.waiting(10).map((r) => [r.captureId, r.readTries])).toEqual([
        ['queued-by-v3', 0],
        ['queued-by-v4', 0],
      ]);
      db.captureQueue.recordReadTries([
        { captureId: 'queued-by-v3', tries: 2 },
        { captureId: 'gone-meanwhile', tries: 5 },
      ]);
      expect(() => db.captureQueue.recordReadTries([{ captureId: 'queued-by-v4', tries: -1 }])).toThrow(
        /CHECK constraint/,
      );
      // In the batch's own transaction: taken together with the batch.
      db.captureQueue.assignBatch('b', ['queued-by-v3'], [], 2, [{ captureId: 'queued-by-v4', tries: 1 }]);
    } finally {
      db.close();
    }
    db = AgentDatabase.open({ path });
    try {
      expect(db.captureQueue.waiting(10).map((r) => [r.captureId, r.readTries])).toEqual([
        ['queued-by-v4', 1],
      ]);
      expect(db.captureQueue.openBatches()[0]!.rows.map((r) => [r.captureId, r.readTries])).toEqual([
        ['queued-by-v3', 2],
      ]);
    } finally {
      db.close();
    }
  });
});

describe('schema version 3: large capture payloads as files', () => {
  it('upgrades a version 2 database: captures it queued keep their bytes inline, new large ones go to files', async () => {
    const path = agentDatabasePath(root);
    const old = new SqliteDatabase(path);
    old.pragma('journal_mode = WAL');
    expect(migrate(old, MIGRATIONS.slice(0, 2))).toEqual([1, 2]);
    old
      .prepare(
        "INSERT INTO capture_queue (capture_id, model, meta, payload, enqueued_at) VALUES ('queued-by-v2', 'm', '{}', ?, 1)",
      )
      .run(Buffer.from('bytes kept inline'));
    old.close();

    const db = AgentDatabase.open({ path });
    try {
      expect(db.schemaVersion).toBe(LATEST_SCHEMA_VERSION);
      const name = await db.captureQueue.storePayload([Buffer.from('large '), Buffer.from('bytes')]);
      db.captureQueue.enqueue([{ ...row('queued-by-v3'), payload: Buffer.alloc(0), payloadFile: name }]);
      const batch = formBatch(db.captureQueue, 'b', 10);
      expect(batch.map((r) => [r.captureId, r.payloadFile])).toEqual([
        ['queued-by-v2', null],
        ['queued-by-v3', name],
      ]);
      expect((await db.captureQueue.readPayload(batch[0]!)).toString()).toBe('bytes kept inline');
      expect((await db.captureQueue.readPayload(batch[1]!)).toString()).toBe('large bytes');
      expect(await readdir(capturePayloadFolder(path))).toEqual([name]);
      db.captureQueue.completeBatch('b', 'SUCCESS', 2);
      await db.captureQueue.payloadRemovalsDone();
      expect(await readdir(capturePayloadFolder(path))).toEqual([]);
    } finally {
      db.close();
    }
  });

  it('keeps rows and files consistent: a row names a file or holds bytes, never both; a failed insert removes its file', async () => {
    const db = AgentDatabase.open({ path: agentDatabasePath(root) });
    try {
      const queue = db.captureQueue;
      const name = await queue.storePayload([Buffer.alloc(1000, 1)]);
      expect(() => queue.enqueue([{ ...row('both'), payloadFile: name }])).toThrow(/CHECK constraint/);
      await queue.payloadRemovalsDone();
      expect(await readdir(capturePayloadFolder(db.path))).toEqual([]);

      queue.enqueue([row('taken')]);
      const again = await queue.storePayload([Buffer.alloc(1000, 2)]);
      expect(() =>
        queue.enqueue([{ ...row('taken'), payload: Buffer.alloc(0), payloadFile: again }]),
      ).toThrow(/UNIQUE/);
      await queue.payloadRemovalsDone();
      expect(await readdir(capturePayloadFolder(db.path))).toEqual([]);
    } finally {
      db.close();
    }
  });

  it('never follows a row naming a file the agent did not write (a path out of the folder)', async () => {
    const db = AgentDatabase.open({ path: agentDatabasePath(root) });
    try {
      await expect(
        db.captureQueue.readPayload({
          payload: Buffer.alloc(0),
          payloadFile: '../agent.db',
          payloadBytes: 10,
        }),
      ).rejects.toThrow(/names a payload file "\.\.\/agent\.db"; expected a name the agent writes/);
    } finally {
      db.close();
    }
  });
});

describe('capture queue repository', () => {
  let db: AgentDatabase;
  beforeEach(() => {
    db = AgentDatabase.open({ path: agentDatabasePath(root) });
  });
  afterEach(() => db.close());

  it('queues captures with IN_PROGRESS statuses and refuses an id queued twice', () => {
    const queue = db.captureQueue;
    queue.enqueue([row('a'), row('b')]);
    expect(queue.heldCount()).toBe(2);
    expect(queue.pendingCount()).toBe(2);
    expect(queue.status('a')).toEqual({
      captureId: 'a',
      status: 'IN_PROGRESS',
      model: 'resnet',
      updatedAt: 1000,
      detail: null,
    });
    expect(() => queue.enqueue([row('c'), row('a')])).toThrow(/UNIQUE/);
    // All or none: c was not kept either.
    expect(queue.status('c')).toBeUndefined();
    expect(queue.heldCount()).toBe(2);
  });

  it('forms batches oldest first, reopens them after a restart, and completes them with statuses', () => {
    const queue = db.captureQueue;
    queue.enqueue(['a', 'b', 'c', 'd', 'e'].map((id) => row(id)));
    const first = formBatch(queue, 'batch-1', 2);
    expect(first.map((r) => r.captureId)).toEqual(['a', 'b']);
    expect(first[0]!.payload.toString()).toBe('bytes of a');
    expect(formBatch(queue, 'batch-2', 2).map((r) => r.captureId)).toEqual(['c', 'd']);
    expect(queue.pendingCount()).toBe(1);
    expect(queue.heldCount()).toBe(5);
    db.close();

    db = AgentDatabase.open({ path: agentDatabasePath(root) });
    const reopened = db.captureQueue;
    expect(reopened.openBatches().map((b) => [b.batchId, b.rows.map((r) => r.captureId)])).toEqual([
      ['batch-1', ['a', 'b']],
      ['batch-2', ['c', 'd']],
    ]);
    reopened.completeBatch('batch-1', 'SUCCESS', 2000);
    reopened.completeBatch('batch-2', null, 2000);
    expect(reopened.status('a')?.status).toBe('SUCCESS');
    expect(reopened.status('a')?.updatedAt).toBe(2000);
    expect(reopened.status('c')?.status).toBe('IN_PROGRESS');
    expect(reopened.inProgressOutsideQueue().sort()).toEqual(['c', 'd']);
    reopened.setStatuses(['c', 'd'], 'FAILURE', 3000, 'dropped from the spool');
    expect(reopened.status('d')).toMatchObject({ status: 'FAILURE', detail: 'dropped from the spool' });
    expect(reopened.heldCount()).toBe(1);
    expect(reopened.openBatches()).toEqual([]);
  });

  it('prunes finished statuses by age and count, never IN_PROGRESS ones', () => {
    const queue = db.captureQueue;
    queue.enqueue(['old', 'mid', 'new', 'busy'].map((id, i) => row(id, 'm', i)));
    formBatch(queue, 'b', 3);
    queue.completeBatch('b', 'SUCCESS', 0);
    queue.setStatuses(['mid'], 'FAILURE', 50);
    queue.setStatuses(['new'], 'SUCCESS', 100);
    expect(queue.pruneStatuses({ olderThan: 10, keep: 10 })).toBe(1);
    expect(queue.status('old')).toBeUndefined();
    expect(queue.pruneStatuses({ olderThan: 0, keep: 1 })).toBe(1);
    expect(queue.status('mid')).toBeUndefined();
    expect(queue.status('new')?.status).toBe('SUCCESS');
    expect(queue.pruneStatuses({ olderThan: Number.MAX_SAFE_INTEGER, keep: 0 })).toBe(1);
    expect(queue.status('busy')?.status).toBe('IN_PROGRESS');
  });

  it('keeps every capture exactly once however enqueues and batches interleave (property)', () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.oneof(
            fc.record({ enqueue: fc.integer({ min: 1, max: 4 }) }),
            fc.record({ batch: fc.integer({ min: 1, max: 5 }) }),
          ),
          {
            maxLength: 30,
          },
        ),
        (steps) => {
          const local = AgentDatabase.open({
            path: join(root, `p-${Math.random()}.db`),
            synchronous: 'NORMAL',
          });
          const queue = local.captureQueue;
          let next = 0;
          const batched: string[] = [];
          for (const [i, step] of steps.entries()) {
            if ('enqueue' in step)
              queue.enqueue(Array.from({ length: step.enqueue }, () => row(`c${next++}`)));
            else batched.push(...formBatch(queue, `b${i}`, step.batch).map((r) => r.captureId));
          }
          const open = queue.openBatches().flatMap((b) => b.rows.map((r) => r.captureId));
          expect(open).toEqual(batched);
          expect(batched).toEqual(Array.from({ length: batched.length }, (_, k) => `c${k}`));
          expect(queue.pendingCount()).toBe(next - batched.length);
          local.close();
        },
      ),
      { numRuns: 40 },
    );
  });
});

describe('models and counters', () => {
  it('lists loaded models in load order; reloading a name moves it last; unloading forgets it', () => {
    const db = AgentDatabase.open({ path: agentDatabasePath(root) });
    db.loadedModels.record({ name: 'a', url: '/a', loadedAt: 1 });
    db.loadedModels.record({ name: 'b', url: '/b', loadedAt: 2 });
    db.loadedModels.record({ name: 'a', url: '/a2', loadedAt: 3 });
    expect(db.loadedModels.list().map((m) => [m.name, m.url])).toEqual([
      ['b', '/b'],
      ['a', '/a2'],
    ]);
    expect(db.loadedModels.remove('b')).toBe(true);
    expect(db.loadedModels.remove('b')).toBe(false);
    expect(db.loadedModels.list().map((m) => m.name)).toEqual(['a']);
    db.close();
  });

  it('ModelActivity counts in memory, flushes increments, and resumes from the database', () => {
    const path = agentDatabasePath(root);
    let db = AgentDatabase.open({ path });
    let activity = new ModelActivity({ repository: db.modelCounters, flushIntervalMs: 60_000 });
    activity.inference('resnet', 100);
    activity.inference('resnet', 50);
    activity.sample('resnet', 70);
    activity.inference('mlp', 10);
    expect(db.modelCounters.list()).toEqual([]);
    expect(activity.snapshot()).toEqual([
      { model: 'mlp', inferences: 1, samples: 0, lastInferenceAt: 10, lastSampleAt: null },
      { model: 'resnet', inferences: 2, samples: 1, lastInferenceAt: 100, lastSampleAt: 70 },
    ]);
    activity.close();
    db.close();

    db = AgentDatabase.open({ path });
    activity = new ModelActivity({ repository: db.modelCounters, flushIntervalMs: 60_000 });
    activity.inference('resnet', 90);
    expect(activity.snapshot()[1]).toEqual({
      model: 'resnet',
      inferences: 3,
      samples: 1,
      lastInferenceAt: 100,
      lastSampleAt: 70,
    });
    activity.close();
    expect(db.modelCounters.list()[1]).toMatchObject({ inferences: 3, lastInferenceAt: 100 });
    db.close();
  });

  it('upload ledger marks a file by path, size and mtime', () => {
    const db = AgentDatabase.open({ path: agentDatabasePath(root) });
    const file = { path: 'p/f.jsonl', size: 10, mtimeMs: 1234.5 };
    expect(db.uploadLedger.isUploaded(file)).toBe(false);
    db.uploadLedger.mark(file, 1);
    expect(db.uploadLedger.isUploaded(file)).toBe(true);
    expect(db.uploadLedger.isUploaded({ ...file, size: 11 })).toBe(false);
    db.uploadLedger.retain(new Set(['other']));
    expect(db.uploadLedger.isUploaded(file)).toBe(false);
    db.close();
  });
});

describe('durability', () => {
  it('keeps every committed capture when the process is killed with SIGKILL right after committing', async () => {
    const path = agentDatabasePath(root);
    const stateIndex = new URL('../../src/state/index.ts', import.meta.url).pathname;
    // The child commits captures one transaction at a time and reports each id after its commit returns.
    const script = `
      import { AgentDatabase } from ${JSON.stringify(stateIndex)};
      const db = AgentDatabase.open({ path: ${JSON.stringify(path)} });
      for (let i = 0; ; i++) {
        db.captureQueue.enqueue([{ captureId: 'c' + i, model: 'm', meta: '{}', payload: Buffer.alloc(4096, i), enqueuedAt: i }]);
        process.stdout.write('c' + i + '\\n');
      }
    `;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const acknowledged: string[] = [];
    let buffered = '';
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    await new Promise<void>((resolve, reject) => {
      child.on('exit', () => reject(new Error(`the child exited early: ${stderr}`)));
      child.stdout.on('data', (chunk: Buffer) => {
        buffered += chunk.toString();
        const lines = buffered.split('\n');
        buffered = lines.pop()!;
        acknowledged.push(...lines);
        if (acknowledged.length >= 200) {
          child.removeAllListeners('exit');
          child.kill('SIGKILL');
          child.on('exit', () => resolve());
        }
      });
    });
    const db = AgentDatabase.open({ path });
    for (const id of acknowledged) expect(db.captureQueue.status(id)?.status).toBe('IN_PROGRESS');
    expect(db.captureQueue.heldCount()).toBeGreaterThanOrEqual(acknowledged.length);
    db.close();
  });
});

describe('schema version 5: the last committed and failed deployment per handle', () => {
  const deploymentRow = (handle: string, name: string, state: string, startedAt: number) => ({
    handle,
    deploymentName: name,
    state,
    desired: 'DEPLOY' as const,
    failurePolicy: 'ROLLBACK_ON_FAILURE',
    allowDowngrade: false,
    modelName: handle,
    version: '2.0',
    packageUrl: null,
    sha256: null,
    size: null,
    packageDir: `/pkg/${handle}/2.0`,
    previousUrl: `/pkg/${handle}/1.0`,
    previousVersion: '1.0',
    committedVersion: '1.0',
    reason: state === 'Committed' ? null : 'did not load',
    rollbackFailureReason: null,
    rolledBackWithDeployment: false,
    restarts: 0,
    startedAt,
    updatedAt: startedAt + 5,
    endedAt: state === 'Downloading' ? null : startedAt + 5,
    reported: true,
  });

  it('upgrades a version 4 database, taking the outcomes its rows already show; a new deployment keeps them', () => {
    const path = agentDatabasePath(root);
    const old = new SqliteDatabase(path);
    old.pragma('journal_mode = WAL');
    expect(migrate(old, MIGRATIONS.slice(0, 4))).toEqual([1, 2, 3, 4]);
    old
      .prepare(
        `INSERT INTO deployment_models (handle, deployment_name, state, desired, failure_policy, version,
           package_dir, previous_version, reason, started_at, updated_at, ended_at, reported)
         VALUES ('a', 'broken', 'RolledBack', 'DEPLOY', 'ROLLBACK_ON_FAILURE', '2.0', '/pkg/a/2.0', '1.0',
           'failed its health window', 100, 105, 105, 1),
                ('b', 'good', 'Committed', 'DEPLOY', 'ROLLBACK_ON_FAILURE', '3.0', '/pkg/b/3.0', NULL,
           NULL, 200, 205, 205, 1),
                ('c', 'going', 'Downloading', 'DEPLOY', 'ROLLBACK_ON_FAILURE', '1.0', NULL, NULL,
           NULL, 300, 300, NULL, 0)`,
      )
      .run();
    old.close();

    const db = AgentDatabase.open({ path });
    try {
      expect(db.schemaVersion).toBe(LATEST_SCHEMA_VERSION);
      expect(db.deployments.outcome('a', 'failed')).toMatchObject({
        deploymentName: 'broken',
        state: 'RolledBack',
        reason: 'failed its health window',
        startedAt: 100,
        endedAt: 105,
      });
      expect(db.deployments.outcome('a', 'committed')).toBeUndefined();
      expect(db.deployments.outcome('b', 'committed')).toMatchObject({
        deploymentName: 'good',
        endedAt: 205,
      });
      expect(db.deployments.outcome('c', 'committed')).toBeUndefined();
      expect(db.deployments.outcome('c', 'failed')).toBeUndefined();

      // A new deployment replaces the handle's row; the outcomes stay until one of the same kind replaces them.
      db.deployments.save(deploymentRow('a', 'next', 'Downloading', 400));
      expect(db.deployments.outcome('a', 'failed')).toMatchObject({ deploymentName: 'broken' });
      db.deployments.save(deploymentRow('a', 'next', 'Committed', 400));
      expect(db.deployments.outcome('a', 'committed')).toMatchObject({
        deploymentName: 'next',
        endedAt: 405,
      });
      expect(db.deployments.outcome('a', 'failed')).toMatchObject({ deploymentName: 'broken' });
      db.deployments.save(deploymentRow('a', 'later', 'Failed', 500));
      expect(db.deployments.outcome('a', 'failed')).toMatchObject({
        deploymentName: 'later',
        state: 'Failed',
        reason: 'did not load',
      });
      expect(db.deployments.outcome('a', 'committed')).toMatchObject({ deploymentName: 'next' });
    } finally {
      db.close();
    }
  });
});
