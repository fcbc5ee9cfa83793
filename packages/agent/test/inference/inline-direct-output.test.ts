import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TEST_MODELS, writeTestModel } from '@edgefleet/core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { InlineRunner, MIN_DIRECT_OUTPUT_BYTES, directOutputsOf } from '../../src/inference/inline-runner.js';
import type { OutputSegment } from '../../src/inference/index.js';
import type { PoolTensor } from '../../src/inference/index.js';
import { loadSysvShmAddon, rangesOverlap } from '../../src/shm/index.js';
import {
  IMAGE_BYTES,
  IMAGE_EXPECTED,
  IMAGE_SAMPLE,
  LIAR_DECLARED_ROWS,
  ROW,
  liarInput,
  liarModel,
  pairInputs,
  pairModel,
  pairReference,
} from '../support/direct-output-models.js';
import { bytesOf } from '../support/model-packages.js';
import { asPoolTensor } from '../support/pool-models.js';
import { makeSegment, segmentBytes, segmentExists, segmentReference } from '../support/segments.js';

// An inline run has ONNX Runtime write an output straight into the caller's System V segment only where that is
// safe (InlineRunner.run); everything else comes back as bytes for the caller to copy. Real segments, the real
// addon and ONNX Runtime, real models.
const addon = loadSysvShmAddon();
const created: number[] = [];
const runners: InlineRunner[] = [];
let dir: string;
const paths: Record<string, string> = {};

const floatsOf = (tensor: PoolTensor) => new Float32Array(tensor.data.slice().buffer);

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'agent-inline-direct-'));
  for (const model of ['tiny', 'image-identity'] as const) paths[model] = await writeTestModel(model, dir);
  paths.pair = join(dir, 'pair.onnx');
  await writeFile(paths.pair, pairModel());
  paths.liar = join(dir, 'liar.onnx');
  await writeFile(paths.liar, liarModel());
});
afterEach(async () => {
  for (const runner of runners.splice(0)) await runner.close();
  for (const shmid of created.splice(0)) addon.remove(shmid);
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function runnerWith(...models: string[]): Promise<InlineRunner> {
  const runner = new InlineRunner();
  runners.push(runner);
  for (const model of models) expect(await runner.load(model, paths[model]!, {})).toBe(true);
  return runner;
}

/** A place in a segment, as the REST door checks it and hands it on (its identity as of now). */
const place = (shmid: number, offset: number, byteLength: number) =>
  segmentReference(addon, shmid, offset, byteLength);

/**
 * An input whose bytes lie in a segment, as the REST door hands it to the pool: a view of the segment's memory (ONNX
 * Runtime reads it there) and where it lies. The mapping is the caller's to detach.
 */
function inputInSegment(
  name: string,
  shape: number[],
  shmid: number,
  offset: number,
  byteLength: number,
  mappings: ArrayBuffer[],
): PoolTensor {
  const mapping = addon.attachReadWrite(shmid);
  mappings.push(mapping);
  return {
    name,
    dataType: 'FLOAT32',
    shape,
    data: new Uint8Array(mapping, offset, byteLength),
    segment: place(shmid, offset, byteLength),
  };
}

/** The liar model's input `x`: `n` rows (liarInput). */
const rows = (n: number, start = 0): PoolTensor[] => [
  { name: 'x', dataType: 'FLOAT32', shape: [n, ROW], data: new Uint8Array(bytesOf(liarInput(n, start))) },
];
const imageInput = () => [asPoolTensor('image', IMAGE_SAMPLE)];
const toImageOut = (shmid: number, offset = 0): OutputSegment[] => [
  { name: 'image_out', segment: place(shmid, offset, IMAGE_BYTES) },
];

describe('InlineRunner: outputs straight into System V shared memory', () => {
  it('has ONNX Runtime write a large fixed-shape output into its place, exactly there, once a run produced that shape', async () => {
    const runner = await runnerWith('image-identity');
    const output = makeSegment(addon, created, new Uint8Array(0), { size: IMAGE_BYTES + 192 });
    // No run has shown the shape yet: copied (bytes back), nothing written.
    const first = runner.run('image-identity', imageInput(), toImageOut(output, 96));
    expect(first.outputs[0]!.writtenToSegment).toBeUndefined();
    expect(bytesOf(first.outputs[0]!.data).equals(IMAGE_EXPECTED)).toBe(true);
    expect(segmentBytes(addon, output, 0, IMAGE_BYTES + 192).every((b) => b === 0)).toBe(true);
    const second = runner.run('image-identity', imageInput(), toImageOut(output, 96));
    expect(second.outputs).toEqual([
      {
        name: 'image_out',
        dataType: 'FLOAT32',
        shape: [1, 3, 224, 224],
        data: new Uint8Array(0),
        writtenToSegment: true,
      },
    ]);
    expect(segmentBytes(addon, output, 96, IMAGE_BYTES).equals(IMAGE_EXPECTED)).toBe(true);
    expect(segmentBytes(addon, output, 0, 96).every((b) => b === 0)).toBe(true);
    expect(segmentBytes(addon, output, 96 + IMAGE_BYTES, 96).every((b) => b === 0)).toBe(true);
  });

  it('keeps at most 16 output segments mapped, however many distinct ones a caller names', async () => {
    // A local user with many regions (64 per uid on REST) naming a new output segment on every request.
    const runner = await runnerWith('image-identity');
    const warm = makeSegment(addon, created, new Uint8Array(0), { size: IMAGE_BYTES });
    runner.run('image-identity', imageInput(), toImageOut(warm, 0)); // shows the shape: later runs write in place
    const outputs = Array.from({ length: 24 }, () =>
      makeSegment(addon, created, new Uint8Array(0), { size: IMAGE_BYTES }),
    );
    for (const output of outputs) {
      const run = runner.run('image-identity', imageInput(), toImageOut(output, 0));
      expect(run.outputs[0]!.writtenToSegment).toBe(true);
      expect(segmentBytes(addon, output, 0, IMAGE_BYTES).equals(IMAGE_EXPECTED)).toBe(true);
    }
    const attached = [warm, ...outputs].reduce((sum, shmid) => sum + addon.stat(shmid).attachCount, 0);
    expect(attached).toBeGreaterThan(0);
    expect(attached).toBeLessThanOrEqual(16);
  });

  it('copies an output under MIN_DIRECT_OUTPUT_BYTES, one whose place is not its exact size, or misaligned', async () => {
    const runner = await runnerWith('tiny', 'image-identity');
    const output = makeSegment(addon, created, new Uint8Array(0), { size: IMAGE_BYTES + 8 });
    const tiny = TEST_MODELS.tiny;
    const tinyIn = () => [asPoolTensor('x', tiny.sampleInputs().x!)];
    const tinyExpected = tiny.reference(tiny.sampleInputs()).y!.data as Float32Array;
    for (let i = 0; i < 2; i++) {
      const small = runner.run('tiny', tinyIn(), [{ name: 'y', segment: place(output, 0, 64) }]);
      expect(small.outputs[0]!.writtenToSegment).toBeUndefined();
      expect(floatsOf(small.outputs[0]!)).toEqual(tinyExpected);
    }
    runner.run('image-identity', imageInput());
    for (const segment of [place(output, 0, IMAGE_BYTES + 4), place(output, 2, IMAGE_BYTES)]) {
      const run = runner.run('image-identity', imageInput(), [{ name: 'image_out', segment }]);
      expect(run.outputs[0]!.writtenToSegment).toBeUndefined();
      expect(bytesOf(run.outputs[0]!.data).equals(IMAGE_EXPECTED)).toBe(true);
    }
    expect(segmentBytes(addon, output, 0, IMAGE_BYTES + 8).every((b) => b === 0)).toBe(true);
  });

  it('copies an output whose place overlaps an input of the run (same range, or another range of one segment): right answers', async () => {
    const runner = await runnerWith('pair');
    const { a, b } = pairInputs();
    const expected = pairReference({ a, b });
    const size = a.byteLength;
    const shape = [1, ROW];
    const mappings: ArrayBuffer[] = [];
    try {
      runner.run('pair', [
        { name: 'a', dataType: 'FLOAT32', shape, data: new Uint8Array(bytesOf(a)) },
        { name: 'b', dataType: 'FLOAT32', shape, data: new Uint8Array(bytesOf(b)) },
      ]);
      // sum into a's very bytes, product into b's: written in place, the second output computed would read the
      // first instead of its input.
      const same = makeSegment(addon, created, Buffer.concat([bytesOf(a), bytesOf(b)]), { size: 2 * size });
      const inputs = [
        inputInSegment('a', shape, same, 0, size, mappings),
        inputInSegment('b', shape, same, size, size, mappings),
      ];
      const run = runner.run('pair', inputs, [
        { name: 'sum', segment: place(same, 0, size) },
        { name: 'product', segment: place(same, size, size) },
      ]);
      expect(run.outputs.map((o) => o.writtenToSegment)).toEqual([undefined, undefined]);
      expect(floatsOf(run.outputs[0]!)).toEqual(expected.sum);
      expect(floatsOf(run.outputs[1]!)).toEqual(expected.product);
      // The inputs were not touched.
      expect(segmentBytes(addon, same, 0, 2 * size).equals(Buffer.concat([bytesOf(a), bytesOf(b)]))).toBe(
        true,
      );

      // One segment, two ranges: a at 0, b right after; sum placed half-way into a (overlapping a and b),
      // product in a range of its own past both: only product may go in place.
      const shared = makeSegment(addon, created, Buffer.concat([bytesOf(a), bytesOf(b)]), {
        size: 4 * size,
      });
      const sharedInputs = [
        inputInSegment('a', shape, shared, 0, size, mappings),
        inputInSegment('b', shape, shared, size, size, mappings),
      ];
      const split = runner.run('pair', sharedInputs, [
        { name: 'sum', segment: place(shared, size / 2, size) },
        { name: 'product', segment: place(shared, 3 * size, size) },
      ]);
      expect(split.outputs.map((o) => o.writtenToSegment)).toEqual([undefined, true]);
      expect(floatsOf(split.outputs[0]!)).toEqual(expected.sum);
      expect(new Float32Array(segmentBytes(addon, shared, 3 * size, size).buffer)).toEqual(expected.product);
      expect(segmentBytes(addon, shared, 0, 2 * size).equals(Buffer.concat([bytesOf(a), bytesOf(b)]))).toBe(
        true,
      );

      // Two outputs over each other (neither over an input): both copied, for the caller to write in order.
      const outputs = makeSegment(addon, created, new Uint8Array(0), { size: 2 * size });
      const crossed = runner.run('pair', sharedInputs, [
        { name: 'sum', segment: place(outputs, 0, size) },
        { name: 'product', segment: place(outputs, size / 2, size) },
      ]);
      expect(crossed.outputs.map((o) => o.writtenToSegment)).toEqual([undefined, undefined]);
      expect(segmentBytes(addon, outputs, 0, 2 * size).every((byte) => byte === 0)).toBe(true);
    } finally {
      for (const mapping of mappings) addon.detach(mapping);
    }
  });

  it('runs again without the memory, and copies from then on, when the model does not produce the shape it declares', async () => {
    const runner = await runnerWith('liar');
    const declared = LIAR_DECLARED_ROWS * ROW * 4;
    const output = makeSegment(addon, created, new Uint8Array(0), { size: declared });
    const toY = [{ name: 'y', segment: place(output, 0, declared) }];
    // Two rows: the model keeps its word, so the second such run goes in place.
    runner.run('liar', rows(2));
    const kept = runner.run('liar', rows(2, 7), toY);
    expect(kept.outputs[0]!.writtenToSegment).toBe(true);
    expect(new Float32Array(segmentBytes(addon, output, 0, declared).buffer)).toEqual(liarInput(2, 7));
    // One row: ONNX Runtime refuses the memory of the declared shape; the run is made again, and answers right.
    const broken = runner.run('liar', rows(1, 3), toY);
    expect(broken.outputs[0]!.writtenToSegment).toBeUndefined();
    expect(broken.outputs[0]!.shape).toEqual([1, ROW]);
    expect(floatsOf(broken.outputs[0]!)).toEqual(liarInput(1, 3));
    // From then on copied, even where the shape would fit.
    const after = runner.run('liar', rows(2, 11), toY);
    expect(after.outputs[0]!.writtenToSegment).toBeUndefined();
    expect(floatsOf(after.outputs[0]!)).toEqual(liarInput(2, 11));
    expect(new Float32Array(segmentBytes(addon, output, 0, declared).buffer)).toEqual(liarInput(2, 7));
  });

  it('never tries the memory for a model seen producing another shape than it declares', async () => {
    const runner = await runnerWith('liar');
    const declared = LIAR_DECLARED_ROWS * ROW * 4;
    const output = makeSegment(addon, created, new Uint8Array(0), { size: declared });
    runner.run('liar', rows(1));
    for (let i = 0; i < 2; i++) {
      const run = runner.run('liar', rows(2), [{ name: 'y', segment: place(output, 0, declared) }]);
      expect(run.outputs[0]!.writtenToSegment).toBeUndefined();
      expect(floatsOf(run.outputs[0]!)).toEqual(liarInput(2));
    }
  });

  it('leaves to the caller an output whose segment changed or went since it was checked, and writes nothing there', async () => {
    const runner = await runnerWith('image-identity');
    runner.run('image-identity', imageInput());
    const output = makeSegment(addon, created, new Uint8Array(0), { size: IMAGE_BYTES });
    const checked = toImageOut(output);
    // A chmod after the caller's check: not the segment the caller was allowed to write any more.
    addon.setMode(output, 0o400);
    const changed = runner.run('image-identity', imageInput(), checked);
    expect(changed.outputs[0]!.writtenToSegment).toBeUndefined();
    expect(bytesOf(changed.outputs[0]!.data).equals(IMAGE_EXPECTED)).toBe(true);
    expect(segmentBytes(addon, output, 0, IMAGE_BYTES).every((b) => b === 0)).toBe(true);
    // Removed (and so destroyed: nothing holds it) after the check.
    const gone = makeSegment(addon, created, new Uint8Array(0), { size: IMAGE_BYTES });
    const goneChecked = toImageOut(gone);
    addon.remove(gone);
    created.splice(created.indexOf(gone), 1);
    const removed = runner.run('image-identity', imageInput(), goneChecked);
    expect(removed.outputs[0]!.writtenToSegment).toBeUndefined();
    expect(bytesOf(removed.outputs[0]!.data).equals(IMAGE_EXPECTED)).toBe(true);
  });

  it('lets go of a segment its client removed, so that the segment goes', async () => {
    const runner = await runnerWith('image-identity');
    runner.run('image-identity', imageInput());
    const output = makeSegment(addon, created, new Uint8Array(0), { size: IMAGE_BYTES });
    const run = runner.run('image-identity', imageInput(), toImageOut(output));
    expect(run.outputs[0]!.writtenToSegment).toBe(true);
    addon.remove(output);
    created.splice(created.indexOf(output), 1);
    // The runner's sweep (once a second) lets go of it; then nothing holds it and the kernel destroys it.
    await expect.poll(() => segmentExists(addon, output), { timeout: 5000, interval: 50 }).toBe(false);
  });

  it('lets go of the segments it mapped once its last model is released, though their clients keep them', async () => {
    const runner = await runnerWith('image-identity');
    runner.run('image-identity', imageInput());
    const output = makeSegment(addon, created, new Uint8Array(0), { size: IMAGE_BYTES });
    expect(runner.run('image-identity', imageInput(), toImageOut(output)).outputs[0]!.writtenToSegment).toBe(
      true,
    );
    expect(addon.stat(output).attachCount).toBe(1);
    await runner.release('image-identity');
    expect(addon.stat(output).attachCount).toBe(0);
  });
});

describe('directOutputsOf', () => {
  it('takes tensors of a type the agent returns, every dimension declared, of at least MIN_DIRECT_OUTPUT_BYTES', () => {
    // As onnxruntime-node's binding describes outputs: -1 for a dimension only the run knows.
    const direct = directOutputsOf(
      [
        {
          name: 'image',
          isTensor: true,
          symbolicDimensions: ['', '', '', ''],
          shape: [1, 3, 224, 224],
          type: 1,
        },
        { name: 'rows', isTensor: true, symbolicDimensions: ['rows', ''], shape: [-1, 65536], type: 1 },
        { name: 'empty', isTensor: true, symbolicDimensions: [''], shape: [0], type: 1 },
        { name: 'small', isTensor: true, symbolicDimensions: ['', ''], shape: [1, 16], type: 1 },
        { name: 'text', isTensor: true, symbolicDimensions: [''], shape: [65536], type: 8 },
        { name: 'map', isTensor: false, symbolicDimensions: [], shape: [], type: 0 },
        { name: 'ids', isTensor: true, symbolicDimensions: ['', ''], shape: [2, 4096], type: 7 },
      ],
      [],
    );
    expect([...direct]).toEqual([
      ['image', { type: 'float32', dims: [1, 3, 224, 224], byteLength: 602112, seen: 'unseen' }],
      ['ids', { type: 'int64', dims: [2, 4096], byteLength: MIN_DIRECT_OUTPUT_BYTES, seen: 'unseen' }],
    ]);
  });
});

describe('rangesOverlap', () => {
  it('compares absolute byte ranges of one segment; other segments and empty ranges never overlap', () => {
    const range = (segmentId: number, offset: number, byteLength: number) => ({
      segmentId,
      offset,
      byteLength,
    });
    expect(rangesOverlap(range(1, 0, 10), range(1, 9, 10))).toBe(true);
    expect(rangesOverlap(range(1, 9, 10), range(1, 0, 10))).toBe(true);
    expect(rangesOverlap(range(1, 0, 100), range(1, 40, 2))).toBe(true);
    expect(rangesOverlap(range(1, 0, 10), range(1, 10, 10))).toBe(false);
    expect(rangesOverlap(range(1, 0, 10), range(2, 0, 10))).toBe(false);
    expect(rangesOverlap(range(1, 5, 0), range(1, 0, 10))).toBe(false);
  });
});
