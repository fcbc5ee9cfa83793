import { chmod, mkdir, mkdtemp, rename, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createModelPackage, writeTestModel } from '@edgefleet/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_ORT_SESSION_CONFIG, InferencePool } from '../../src/inference/index.js';
import { ModelRegistry } from '../../src/models/index.js';
import SqliteDatabase from 'better-sqlite3';
import {
  AgentDatabase,
  LoadedModelsRepository,
  MIGRATIONS,
  agentDatabasePath,
  migrate,
  recordLoadedModels,
  restoreLoadedModels,
  type RestorableRegistry,
} from '../../src/state/index.js';

let root: string;
let pool: InferencePool;

async function modelPackage(name: string): Promise<string> {
  const modelPath = await writeTestModel('tiny', join(root, `src-${name}`));
  return (await createModelPackage({ modelPath, name, version: '1.0', outDir: join(root, `pkg-${name}`) }))
    .dir;
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'edgefleet-loaded-models-'));
  pool = await InferencePool.start({ workers: 1, session: DEFAULT_ORT_SESSION_CONFIG });
});
afterAll(async () => {
  await pool?.close();
  await rm(root, { recursive: true, force: true });
});

describe('loaded models across restarts', () => {
  it('records loads and unloads, keeps what was loaded when the agent stopped, and loads it again in order', async () => {
    const db = AgentDatabase.open({ path: agentDatabasePath(join(root, 'data')) });
    const [a, b, c] = [await modelPackage('a'), await modelPackage('b'), await modelPackage('c')];
    const first = new ModelRegistry({ pool, trust: null, cwd: root });
    first.observe(recordLoadedModels(db.loadedModels));
    await first.load({ url: b, name: 'second' });
    await first.load({ url: a, name: 'first' });
    await first.load({ url: c, name: 'gone' });
    await first.unload('gone');
    expect(db.loadedModels.list().map((m) => [m.name, m.url])).toEqual([
      ['second', b],
      ['first', a],
    ]);
    // Stopping the agent unloads everything, but those are the models to bring back.
    await first.close();
    expect(db.loadedModels.list().map((m) => m.name)).toEqual(['second', 'first']);

    db.loadedModels.record({ name: 'missing', url: join(root, 'no-such-package'), loadedAt: 1 });
    const second = new ModelRegistry({ pool, trust: null, cwd: root });
    await second.load({ url: a, name: 'first' }); // preloaded from the config: skipped
    const warnings: string[] = [];
    const restored = await restoreLoadedModels(second, db.loadedModels, {
      info: () => {},
      warn: (_details, message) => void warnings.push(message),
    });
    expect(restored).toEqual(['second']);
    expect(second.list().map((m) => m.name)).toEqual(['first', 'second']);
    expect(warnings).toEqual([
      expect.stringMatching(
        /could not load model "missing" again .* its package is gone, so it is forgotten/,
      ),
    ]);
    expect(db.loadedModels.list().map((m) => m.name)).toEqual(['second', 'first']);
    await second.close();
    db.close();
  });
});

describe('restored loads that outlast the start-up deadline', () => {
  it('a late failure after shutdown closed the database is logged, not thrown (the agent does not crash)', async () => {
    const db = AgentDatabase.open({ path: agentDatabasePath(join(root, 'late-data')) });
    db.loadedModels.record({ name: 'gone', url: join(root, 'no-such-package'), loadedAt: 1 });
    const registry = new ModelRegistry({ pool, trust: null, cwd: root });
    // The package folder sits on a mount that hangs: the real load only begins once the test lets it.
    let letLoad!: () => void;
    const hung = new Promise<void>((resolve) => (letLoad = resolve));
    const hungMount: RestorableRegistry = {
      load: async (request) => {
        await hung;
        return registry.load(request);
      },
      has: (name) => registry.has(name),
    };
    const warnings: string[] = [];
    const stillLoading: Array<{ name: string; loading: Promise<unknown> }> = [];
    const restored = await restoreLoadedModels(
      hungMount,
      db.loadedModels,
      { info: () => {}, warn: (_details, message) => void warnings.push(message) },
      { deadlineMs: 10, onStillLoading: (name, loading) => void stillLoading.push({ name, loading }) },
    );
    expect(restored).toEqual([]);
    expect(stillLoading.map((s) => s.name)).toEqual(['gone']);
    expect(warnings).toEqual([expect.stringMatching(/model "gone" .* is still loading after 0.01 s/)]);

    // Shutdown closes the database; then the load fails (NOT_FOUND), which would forget the model's record.
    db.close();
    letLoad();
    await stillLoading[0]!.loading.catch(() => {});
    await new Promise((resolve) => setImmediate(resolve));
    expect(warnings.slice(1)).toEqual([
      expect.stringMatching(/could not forget model "gone" in the local database: .*not open/),
      expect.stringMatching(
        /could not load model "gone" again after the restart .*; will try again at the next start/,
      ),
    ]);
    await registry.close();
  });

  it('a model still being preloaded is not reported as a failure to retry at the next start', async () => {
    const db = AgentDatabase.open({ path: agentDatabasePath(join(root, 'preloading-data')) });
    const a = await modelPackage('preloading');
    db.loadedModels.record({ name: 'first', url: a, loadedAt: 1 });
    const registry = new ModelRegistry({ pool, trust: null, cwd: root });
    // edgefleet_preload_models loads "first" and is still at it when the restore begins.
    const preloading = registry.load({ url: a, name: 'first' });
    const infos: string[] = [];
    const warnings: string[] = [];
    const restored = await restoreLoadedModels(registry, db.loadedModels, {
      info: (_details, message) => void infos.push(message),
      warn: (_details, message) => void warnings.push(message),
    });
    await preloading;
    expect(restored).toEqual([]);
    expect(warnings).toEqual([]);
    expect(infos).toEqual([
      expect.stringMatching(
        /model "first" is already being loaded \(edgefleet_preload_models\); not loaded again/,
      ),
    ]);
    expect(registry.has('first')).toBe(true);
    expect(db.loadedModels.list().map((m) => m.name)).toEqual(['first']);
    await registry.close();
    db.close();
  });
});

describe('recording loaded models on a full database', () => {
  it('a load still succeeds; the failed record is logged, without a stack, at most once a minute', async () => {
    const db = new SqliteDatabase(join(root, 'full.db'));
    migrate(db);
    const repository = new LoadedModelsRepository(db);
    // SQLite's own size limit on this connection: once reached, a new row fails with a real SQLITE_FULL.
    db.pragma(`max_page_count = ${db.pragma('page_count', { simple: true }) as number}`);
    for (let i = 0; ; i++) {
      try {
        repository.record({ name: `f${i}`, url: '/f', loadedAt: 1 });
      } catch (error) {
        expect((error as { code?: string }).code).toBe('SQLITE_FULL');
        break;
      }
    }
    const lines: { details: Record<string, unknown>; message: string }[] = [];
    const registry = new ModelRegistry({ pool, trust: null, cwd: root });
    registry.observe(
      recordLoadedModels(repository, () => 5_000, {
        warn: (details, message) => void lines.push({ details, message }),
      }),
    );
    const pkg = await modelPackage('on-a-full-disk');
    await registry.load({ url: pkg, name: 'full-1' });
    await registry.load({ url: pkg, name: 'full-2' });
    expect(registry.has('full-1') && registry.has('full-2')).toBe(true);
    // Before: the registry swallowed the failure silently; the next start would not load these models.
    expect(lines).toHaveLength(1);
    expect(lines[0]!.details).toMatchObject({
      event: 'loaded-models-unwritable',
      reason: 'database or disk is full',
    });
    expect(lines[0]!.details.err).toBeUndefined();
    expect(lines[0]!.message).toMatch(/cannot record that model "full-1" is loaded/);
    await registry.close();
    db.close();
  });
});

describe('loads for a caller across restarts', () => {
  // A caller the agent knows (SO_PEERCRED), never this process's user: it may read only what others may.
  const caller = { uid: 4321, gid: 4321, groups: [4322] };

  it('records the caller and loads for it again: a folder swapped since for a package it may not read is refused and forgotten', async () => {
    await chmod(root, 0o755);
    const db = AgentDatabase.open({ path: agentDatabasePath(join(root, 'caller-data')) });
    const callers = await modelPackage('callers');
    const agentOnly = await modelPackage('agent-only');
    await chmod(agentOnly, 0o700);
    const first = new ModelRegistry({ pool, trust: null, cwd: root });
    first.observe(recordLoadedModels(db.loadedModels));
    await first.load({ url: callers, name: 'callers', caller });
    await first.load({ url: agentOnly, name: 'own' }); // the agent's own load (a preload): no caller
    expect(db.loadedModels.list()).toEqual([
      { name: 'callers', url: callers, loadedAt: expect.any(Number), caller },
      { name: 'own', url: agentOnly, loadedAt: expect.any(Number) },
    ]);
    await first.close();

    // While the agent is down, the caller points its url at a package only the agent may read.
    await rename(callers, `${callers}.moved`);
    await symlink(agentOnly, callers);
    const second = new ModelRegistry({ pool, trust: null, cwd: root });
    const failed: [string, unknown][] = [];
    const warnings: string[] = [];
    const restored = await restoreLoadedModels(
      second,
      db.loadedModels,
      { info: () => {}, warn: (_details, message) => void warnings.push(message) },
      { onFailed: (name, error) => void failed.push([name, error]) },
    );
    expect(restored).toEqual(['own']);
    expect(second.list().map((m) => m.name)).toEqual(['own']);
    expect(failed).toEqual([['callers', expect.objectContaining({ code: 'NOT_FOUND' })]]);
    expect(warnings).toEqual([
      expect.stringMatching(
        /could not load model "callers" again .* for uid 4321\); its package is gone, or that caller may no longer read it, so it is forgotten/,
      ),
    ]);
    expect(db.loadedModels.list().map((m) => m.name)).toEqual(['own']);
    await second.close();
    db.close();
  });

  it('loads for the caller again what it may still read', async () => {
    await chmod(root, 0o755);
    const db = AgentDatabase.open({ path: agentDatabasePath(join(root, 'caller-data-2')) });
    const callers = await modelPackage('callers-2');
    db.loadedModels.record({ name: 'callers', url: callers, loadedAt: 1, caller });
    const registry = new ModelRegistry({ pool, trust: null, cwd: root });
    const seen: unknown[] = [];
    registry.observe({ onLoaded: (_model, loadedFor) => void seen.push(loadedFor) });
    expect(await restoreLoadedModels(registry, db.loadedModels)).toEqual(['callers']);
    expect(seen).toEqual([caller]);
    await registry.close();
    db.close();
  });

  it("never loads with the agent's rights a record whose caller cannot be read; keeps it", async () => {
    const path = agentDatabasePath(join(root, 'caller-data-3'));
    const pkg = await modelPackage('damaged');
    const before = AgentDatabase.open({ path });
    before.loadedModels.record({ name: 'damaged', url: pkg, loadedAt: 1, caller });
    before.close();
    // Damaged (or written by hand) outside the agent.
    const raw = new SqliteDatabase(path);
    raw.prepare(`UPDATE loaded_models SET caller = '{"uid":-1}'`).run();
    raw.close();
    const db = AgentDatabase.open({ path });
    const registry = new ModelRegistry({ pool, trust: null, cwd: root });
    const failed: string[] = [];
    const restored = await restoreLoadedModels(registry, db.loadedModels, undefined, {
      onFailed: (name, error) => void failed.push(`${name}: ${(error as Error).message}`),
    });
    expect(restored).toEqual([]);
    expect(registry.list()).toEqual([]);
    expect(failed).toEqual([
      expect.stringMatching(
        /^damaged: the caller it was loaded for, as recorded in the local database, cannot be read: /,
      ),
    ]);
    expect(db.loadedModels.list().map((m) => m.name)).toEqual(['damaged']);
    await registry.close();
    db.close();
  });
});

describe('schema version 8: the caller of a load', () => {
  it('upgrades a version 7 database: its records keep no caller and load as before', async () => {
    const path = agentDatabasePath(join(root, 'v7-data'));
    await mkdir(join(root, 'v7-data'), { recursive: true, mode: 0o700 });
    const old = new SqliteDatabase(path);
    expect(migrate(old, MIGRATIONS.slice(0, 7))).toEqual([1, 2, 3, 4, 5, 6, 7]);
    old
      .prepare(
        "INSERT INTO loaded_models (name, url, loaded_at, ordinal) VALUES ('old', '/models/old', 5, 1)",
      )
      .run();
    old.close();
    const db = AgentDatabase.open({ path });
    expect(db.schemaVersion).toBe(8);
    expect(db.loadedModels.list()).toEqual([{ name: 'old', url: '/models/old', loadedAt: 5 }]);
    db.close();
  });
});
