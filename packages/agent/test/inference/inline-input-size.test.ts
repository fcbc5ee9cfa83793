import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_ORT_SESSION_CONFIG, InferencePool } from '../../src/inference/index.js';
import { scalable, scalableModel, scalableReference } from '../support/pool-models.js';

// A model with a dynamic dimension, measured inline-fast on small requests, must not run a much larger request
// on the event loop before a worker has measured one that large (its run time is not known).
let dir: string;
let modelPath: string;
const pools: InferencePool[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'agent-inline-size-'));
  modelPath = join(dir, 'scalable.onnx');
  await writeFile(modelPath, scalableModel());
});
afterAll(async () => {
  for (const pool of pools) await pool.close();
  await rm(dir, { recursive: true, force: true });
});

describe('the inline path and request size', () => {
  it('sends a request larger than any measured one to a worker, and runs requests up to that size inline after', async () => {
    // Ceilings far above any run here, so only the size rule decides.
    const pool = await InferencePool.start({
      workers: 1,
      session: DEFAULT_ORT_SESSION_CONFIG,
      inline: { maxRunMicros: 10_000, eventLoopShare: 0.9, idleMaxRunMicros: 0 },
    });
    pools.push(pool);
    await pool.loadModel('m', modelPath, 1);
    const pathOf = async (rows: number) => {
      const before = pool.stats().runs;
      const result = await pool.run('m', scalable(rows));
      expect(new Float32Array(result.outputs[0]!.data.slice().buffer)).toEqual(scalableReference(rows));
      const after = pool.stats().runs;
      return after.worker > before.worker ? 'worker' : after.inline > before.inline ? 'inline' : 'other';
    };
    while (!pool.stats().inline.models.some((m) => m.key === 'm')) await pathOf(1);
    expect(await pathOf(1)).toBe('inline');
    expect(await pathOf(8)).toBe('worker');
    expect(await pathOf(8)).toBe('inline');
    expect(await pathOf(4)).toBe('inline');
    expect(await pathOf(9)).toBe('worker');
  });
});
