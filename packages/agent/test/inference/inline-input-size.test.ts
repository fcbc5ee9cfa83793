import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { OnnxModelBuilder } from '@edgefleet/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_ORT_SESSION_CONFIG, InferencePool, type PoolTensor } from '../../src/inference/index.js';
import { foldMeasuredShapes, withinMeasured, type MeasuredShapes } from '../../src/inference/scheduling.js';
import { scalable, scalableModel, scalableReference, untilInline } from '../support/pool-models.js';

// A model with dynamic dimensions, measured inline-fast on small requests, must not run a larger request (or the
// same bytes in another shape) on the event loop before a worker has measured one that large: its run time is not
// known.
let dir: string;
let modelPath: string;
let doublerPath: string;
const pools: InferencePool[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'agent-inline-size-'));
  modelPath = join(dir, 'scalable.onnx');
  await writeFile(modelPath, scalableModel());
  // y = x + x, both dimensions dynamic.
  doublerPath = join(dir, 'doubler.onnx');
  await writeFile(
    doublerPath,
    new OnnxModelBuilder({ graphName: 'doubler' })
      .input('x', 'FLOAT32', ['a', 'b'])
      .node('Add', ['x', 'x'], ['y'])
      .output('y', 'FLOAT32', ['a', 'b'])
      .build(),
  );
});
afterAll(async () => {
  for (const pool of pools) await pool.close();
  await rm(dir, { recursive: true, force: true });
});

async function startPool(): Promise<InferencePool> {
  // Ceilings far above any run here, so only the size rule decides.
  const pool = await InferencePool.start({
    workers: 1,
    session: DEFAULT_ORT_SESSION_CONFIG,
    inline: { maxRunMicros: 10_000, eventLoopShare: 0.9, idleMaxRunMicros: 0 },
  });
  pools.push(pool);
  return pool;
}

/** Where the pool ran one request: 'worker' or 'inline'; checks its output against `expected` when given. */
async function pathOf(
  pool: InferencePool,
  key: string,
  inputs: PoolTensor[],
  expected?: Float32Array,
): Promise<string> {
  const before = pool.stats().runs;
  const result = await pool.run(key, inputs);
  if (expected) expect(new Float32Array(result.outputs[0]!.data.slice().buffer)).toEqual(expected);
  const after = pool.stats().runs;
  return after.worker > before.worker ? 'worker' : after.inline > before.inline ? 'inline' : 'other';
}

describe('the inline path and request size', () => {
  it('sends a request larger than any measured one to a worker, and runs requests up to that size inline after', async () => {
    const pool = await startPool();
    await pool.loadModel('m', modelPath, 1);
    const rowsPath = (rows: number) => pathOf(pool, 'm', scalable(rows), scalableReference(rows));
    await untilInline(pool, () => rowsPath(1), 'm');
    expect(await rowsPath(1)).toBe('inline');
    expect(await rowsPath(8)).toBe('worker');
    expect(await rowsPath(8)).toBe('inline');
    expect(await rowsPath(4)).toBe('inline');
    expect(await rowsPath(9)).toBe('worker');
  });

  it('sends the same bytes in a larger shape to a worker too, and then runs that shape inline', async () => {
    const pool = await startPool();
    await pool.loadModel('doubler', doublerPath, 1);
    const x = (a: number, b: number): PoolTensor[] => [
      { name: 'x', dataType: 'FLOAT32', shape: [a, b], data: new Uint8Array(a * b * 4) },
    ];
    await untilInline(pool, () => pathOf(pool, 'doubler', x(4, 16)), 'doubler');
    expect(await pathOf(pool, 'doubler', x(4, 16))).toBe('inline');
    expect(await pathOf(pool, 'doubler', x(2, 16))).toBe('inline');
    expect(await pathOf(pool, 'doubler', x(16, 4))).toBe('worker'); // as many bytes, a larger first dimension
    expect(await pathOf(pool, 'doubler', x(16, 4))).toBe('inline');
    expect(await pathOf(pool, 'doubler', x(16, 16))).toBe('inline'); // each dimension within what was measured
    expect(await pathOf(pool, 'doubler', x(1, 17))).toBe('worker');
  });
});

describe('measured shapes', () => {
  it('keep the largest of each dimension of each input, and admit only inputs within them', () => {
    const measured: MeasuredShapes = new Map();
    const wire = (name: string, dims: number[]) => ({ name, dims });
    foldMeasuredShapes(measured, [wire('a', [4, 16]), wire('b', [3])]);
    foldMeasuredShapes(measured, [wire('a', [8, 2]), wire('b', [1])]);
    expect(measured).toEqual(
      new Map([
        ['a', [8, 16]],
        ['b', [3]],
      ]),
    );
    const shaped = (name: string, shape: number[]) => ({ name, shape });
    expect(withinMeasured(measured, [shaped('a', [8, 16]), shaped('b', [2])])).toBe(true);
    expect(withinMeasured(measured, [shaped('a', [9, 1])])).toBe(false);
    expect(withinMeasured(measured, [shaped('a', [8])])).toBe(false); // another rank
    expect(withinMeasured(measured, [shaped('c', [1])])).toBe(false); // never measured
  });
});
