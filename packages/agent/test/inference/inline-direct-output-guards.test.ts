import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { OnnxModelBuilder } from '@edgefleet/core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { InferenceError } from '../../src/inference/errors.js';
import { InlineRunner } from '../../src/inference/inline-runner.js';
import type { OutputSegment, PoolTensor } from '../../src/inference/index.js';
import { loadSysvShmAddon } from '../../src/shm/index.js';
import { ROW } from '../support/direct-output-models.js';
import { makeSegment, segmentBytes, segmentReference } from '../support/segments.js';

// Two cases where an output written straight into shared memory (InlineRunner.run) must not be tried, or not
// tried again: an output that is also a graph input (ONNX Runtime hands back the memory it was given, unwritten),
// and a run that fails for a reason of its own (not a refusal of the memory: no second run). Real segments, ONNX
// Runtime and models built with core's ONNX builder.
const addon = loadSysvShmAddon();
const created: number[] = [];
const runners: InlineRunner[] = [];
let dir: string;
const BYTES = ROW * 4;

/** `passThrough`: x float32 [1, ROW] is also an output; doubled = x + x. */
const passThroughModel = () =>
  new OnnxModelBuilder({ graphName: 'pass-through' })
    .input('x', 'FLOAT32', [1, ROW])
    .node('Add', ['x', 'x'], ['doubled'])
    .output('x', 'FLOAT32', [1, ROW])
    .output('doubled', 'FLOAT32', [1, ROW])
    .build();

/** `reshaped`: y = Reshape(x, shape), declared [2, ROW / 2]; a `shape` that does not fit x fails the run. */
const reshapedModel = () =>
  new OnnxModelBuilder({ graphName: 'reshaped' })
    .input('x', 'FLOAT32', [1, ROW])
    .input('shape', 'INT64', [2])
    .node('Reshape', ['x', 'shape'], ['y'])
    .output('y', 'FLOAT32', [2, ROW / 2])
    .build();

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'agent-inline-guards-'));
  await writeFile(join(dir, 'pass-through.onnx'), passThroughModel());
  await writeFile(join(dir, 'reshaped.onnx'), reshapedModel());
});
afterEach(async () => {
  for (const runner of runners.splice(0)) await runner.close();
  for (const shmid of created.splice(0)) addon.remove(shmid);
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function runnerWith(model: string): Promise<InlineRunner> {
  const runner = new InlineRunner();
  runners.push(runner);
  expect(await runner.load(model, join(dir, `${model}.onnx`), {})).toBe(true);
  return runner;
}

const floats = (count: number, first: number) => Float32Array.from({ length: count }, (_, i) => first + i);
const tensor = (name: string, data: Float32Array | BigInt64Array, shape: number[]): PoolTensor => ({
  name,
  dataType: data instanceof Float32Array ? 'FLOAT32' : 'INT64',
  shape,
  data: new Uint8Array(data.buffer.slice(0)),
});
const floatsOf = (bytes: Uint8Array) => new Float32Array(bytes.slice().buffer);
const segmentFloats = (shmid: number) => floatsOf(segmentBytes(addon, shmid, 0, BYTES));
const placeOf = (name: string, shmid: number): OutputSegment => ({
  name,
  segment: segmentReference(addon, shmid, 0, BYTES),
});

describe('InlineRunner: outputs never written straight into shared memory', () => {
  it("copies an output that is also an input, with the input's values, while the other output goes in place", async () => {
    const runner = await runnerWith('pass-through');
    const places = () => [
      placeOf('x', makeSegment(addon, created, new Uint8Array(0), { size: BYTES })),
      placeOf('doubled', makeSegment(addon, created, new Uint8Array(0), { size: BYTES })),
    ];
    runner.run('pass-through', [tensor('x', floats(ROW, 1), [1, ROW])]); // shows the shapes
    for (const first of [10, 20]) {
      const [x, doubled] = places();
      const run = runner.run('pass-through', [tensor('x', floats(ROW, first), [1, ROW])], [x!, doubled!]);
      const [xOut, doubledOut] = run.outputs;
      // In place, x would come back as the segment's zeros, unwritten.
      expect(xOut!.writtenToSegment).toBeUndefined();
      expect(floatsOf(xOut!.data)).toEqual(floats(ROW, first));
      expect(doubledOut!.writtenToSegment).toBe(true);
      expect(segmentFloats(doubled!.segment.segmentId)).toEqual(floats(ROW, first).map((v) => 2 * v));
    }
  });

  it('fails a run that fails for a reason of its own with that reason, and keeps writing in place after it', async () => {
    const runner = await runnerWith('reshaped');
    const output = makeSegment(addon, created, new Uint8Array(0), { size: BYTES });
    const inputs = (first: number, shape: bigint[]) => [
      tensor('x', floats(ROW, first), [1, ROW]),
      tensor('shape', BigInt64Array.from(shape), [2]),
    ];
    const fits = [2n, BigInt(ROW / 2)];
    runner.run('reshaped', inputs(1, fits));
    expect(runner.run('reshaped', inputs(5, fits), [placeOf('y', output)]).outputs[0]!.writtenToSegment).toBe(
      true,
    );
    let failure: unknown;
    try {
      runner.run('reshaped', inputs(7, [3n, 5n]), [placeOf('y', output)]);
    } catch (error) {
      failure = error;
    }
    expect(failure).toBeInstanceOf(InferenceError);
    expect((failure as InferenceError).kind).toBe('run-failed');
    expect((failure as Error).message).toMatch(/reshape/i);
    // Not taken for a refusal of the memory: the next run still goes in place.
    const after = runner.run('reshaped', inputs(9, fits), [placeOf('y', output)]);
    expect(after.outputs[0]!.writtenToSegment).toBe(true);
    expect(segmentFloats(output)).toEqual(floats(ROW, 9));
  });
});
