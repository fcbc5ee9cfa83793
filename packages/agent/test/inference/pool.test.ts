import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TEST_MODELS, writeTestModel, type TestModelTensor } from '@edgefleet/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DEFAULT_ORT_SESSION_CONFIG,
  InferenceError,
  InferencePool,
  type PoolTensor,
} from '../../src/inference/index.js';

let dir: string;
let pool: InferencePool;

function asPoolTensor(name: string, tensor: TestModelTensor): PoolTensor {
  const { data } = tensor;
  return {
    name,
    dataType: tensor.dataType,
    shape: tensor.shape,
    data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
  };
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'agent-pool-'));
  pool = await InferencePool.start({ workers: 2, session: DEFAULT_ORT_SESSION_CONFIG });
});
afterAll(async () => {
  await pool?.close();
  await rm(dir, { recursive: true, force: true });
});

describe('InferencePool', () => {
  it('loads a model in a worker and runs it with exact outputs', async () => {
    const path = await writeTestModel('tiny', dir);
    const info = await pool.loadModel('tiny#1', path, 1);
    expect(info.inputs).toEqual([{ name: 'x', type: 'float32', shape: [1, 16] }]);
    const sample = TEST_MODELS.tiny.sampleInputs();
    const result = await pool.run('tiny#1', [asPoolTensor('x', sample.x!)]);
    const expected = TEST_MODELS.tiny.reference(sample).y!;
    expect(result.outputs).toHaveLength(1);
    expect(result.outputs[0]!.shape).toEqual([1, 16]);
    expect(new Float32Array(result.outputs[0]!.data.slice().buffer)).toEqual(expected.data);
    expect(result.computeMs).toBeGreaterThanOrEqual(0);
    await pool.unloadModel('tiny#1');
    await expect(pool.run('tiny#1', [asPoolTensor('x', sample.x!)])).rejects.toBeInstanceOf(InferenceError);
  });
});
