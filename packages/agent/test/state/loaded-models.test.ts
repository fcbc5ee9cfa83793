import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createModelPackage, writeTestModel } from '@edgefleet/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_ORT_SESSION_CONFIG, InferencePool } from '../../src/inference/index.js';
import { ModelRegistry } from '../../src/models/index.js';
import {
  AgentDatabase,
  agentDatabasePath,
  recordLoadedModels,
  restoreLoadedModels,
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
