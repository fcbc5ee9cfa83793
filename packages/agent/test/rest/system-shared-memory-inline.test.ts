import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { threadCpuClock } from '../../src/daemon/process-tuning.js';
import { SharedMemoryReader, loadSysvShmAddon } from '../../src/shm/index.js';
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
import { loopWaits, untilInline } from '../support/pool-models.js';
import { makeSegment, segmentBytes, segmentExists, writeSegment } from '../support/segments.js';
import {
  HttpClient,
  bytesOf,
  registerRegion,
  type HttpResult,
  scratch,
  startAgent,
  targetOf,
  unregisterListedRegions,
} from './helpers.js';

// KServe v2 system shared memory with the model running on the agent's event loop (the inline path), where ONNX
// Runtime may write an output straight into its region (inline-runner.ts): right answers in every case, the
// region's rules as on the copy path. Real agent, real segments, real HTTP over a Unix socket. The same layouts on
// the workers: system-shared-memory.test.ts.
const addon = loadSysvShmAddon();
const created: number[] = [];
let files: Awaited<ReturnType<typeof scratch>>;
let agent: Awaited<ReturnType<typeof startAgent>>;
let client: HttpClient;
let reader: SharedMemoryReader;

function segment(size: number, bytes: Uint8Array = new Uint8Array(0)): number {
  return makeSegment(addon, created, bytes, { size, mode: 0o600 });
}

const post = (path: string, body: unknown) => client.postJson(path, body);

/** Registers a region, which must succeed. */
const register = async (name: string, shmid: number, byteSize: number, offset = 0) =>
  expect((await registerRegion(client, name, shmid, byteSize, offset)).status).toBe(200);

const inRegion = (region: string, byteSize: number, offset = 0) => ({
  shared_memory_region: region,
  shared_memory_byte_size: byteSize,
  ...(offset !== 0 && { shared_memory_offset: offset }),
});

/** An inference of the image model from region `input` into region `output` (at `outputOffset`). */
const inferImage = (input: string, output: string, outputOffset = 0) =>
  post('/v2/models/image/infer', {
    inputs: [
      { name: 'image', shape: [1, 3, 224, 224], datatype: 'FP32', parameters: inRegion(input, IMAGE_BYTES) },
    ],
    outputs: [{ name: 'image_out', parameters: inRegion(output, IMAGE_BYTES, outputOffset) }],
  });

/** Sends requests until the pool has measured the model fast and runs it on the event loop. */
const untilInlineOverRest = (model: string, infer: () => Promise<HttpResult>) =>
  untilInline(agent.pool, async () => expect((await infer()).status).toBe(200), model);

/** Requests inlineRun sends, at most, for one to run inline. */
const INLINE_TRIES = 20;

/**
 * Sends a request until one runs inline, and tells whether the REST door mapped a segment for writing to copy an
 * output on that run (its reader's writable segments grew) rather than ONNX Runtime writing into the region
 * itself. A model measured fast may still be sent to a worker now and then on a loaded machine (a run preempted
 * midway spends the event-loop share: InlineBudget), which writes the outputs itself: so every answer, on
 * whichever path it ran, must be 200 and pass `check`, and `reset` (restoring inputs an output lies over, clearing
 * outputs) runs before each try, so that no try is judged by bytes an earlier one wrote.
 */
async function inlineRun(
  infer: () => Promise<HttpResult>,
  check: () => void,
  reset: () => void,
): Promise<boolean> {
  for (let tries = 0; tries < INLINE_TRIES; tries++) {
    reset();
    // Lets go now of mappings of segments removed before (an earlier test's): a read's own sweep, at most once a
    // second, could otherwise drop one during this request and hide the mapping the request adds.
    reader.sweep();
    const inlineRuns = agent.pool.stats().runs.inline;
    const writable = reader.cachedWritableSegmentCount;
    expect((await infer()).status).toBe(200);
    check();
    if (agent.pool.stats().runs.inline === inlineRuns + 1)
      return reader.cachedWritableSegmentCount > writable;
    await loopWaits();
  }
  throw new Error(`no request ran inline in ${INLINE_TRIES}: ${JSON.stringify(agent.pool.stats().inline)}`);
}

beforeAll(async () => {
  files = await scratch('agent-rest-shm-inline-');
  const socketPath = join(files.root, 'rest.sock');
  agent = await startAgent({
    socketPath,
    sharedMemory: (reader = new SharedMemoryReader({ addon })),
    inline: { maxRunMicros: 10_000, eventLoopShare: 0.9 },
    // As the daemon judges inline runs: by the event loop's own CPU time, so that a run preempted on a busy machine
    // does not demote its model.
    ...threadCpuClock(addon),
  });
  await agent.registry.load({ name: 'image', url: await files.catalogue('image-identity') });
  client = new HttpClient(targetOf(`unix:${socketPath}`));
});
afterEach(async () => {
  await unregisterListedRegions(client);
  for (const shmid of created.splice(0)) addon.remove(shmid);
});
afterAll(async () => {
  client?.agent.destroy();
  await agent?.stop();
  reader?.close();
  await files?.cleanup();
});

describe('KServe v2 system shared memory, the model running inline (on the event loop)', () => {
  it('has ONNX Runtime write the output into its region, exactly there, and lets go of a segment its client removed', async () => {
    await register('in', segment(IMAGE_BYTES, bytesOf(IMAGE_SAMPLE.data)), IMAGE_BYTES);
    const warm = segment(IMAGE_BYTES);
    await register('warm', warm, IMAGE_BYTES);
    await untilInlineOverRest('image', () => inferImage('in', 'warm'));
    expect((await inferImage('in', 'warm')).status).toBe(200);
    // A fresh output segment: region at offset 64, the output 32 bytes into it.
    const output = segment(IMAGE_BYTES + 128);
    await register('out', output, IMAGE_BYTES + 64, 64);
    let result: HttpResult | undefined;
    const copied = await inlineRun(
      async () => (result = await inferImage('in', 'out', 32)),
      () => {
        expect(result!.json()).toMatchObject({
          outputs: [{ name: 'image_out', datatype: 'FP32', shape: [1, 3, 224, 224] }],
        });
        expect(segmentBytes(addon, output, 96, IMAGE_BYTES).equals(IMAGE_EXPECTED)).toBe(true);
        expect(segmentBytes(addon, output, 0, 96).every((b) => b === 0)).toBe(true);
        expect(segmentBytes(addon, output, 96 + IMAGE_BYTES, 32).every((b) => b === 0)).toBe(true);
      },
      () => writeSegment(addon, output, new Uint8Array(IMAGE_BYTES + 128)),
    );
    // ONNX Runtime wrote it there: the REST door mapped no segment of its own to copy it in.
    expect(copied).toBe(false);
    // Removed by its client: the agent lets go of its mapping within the sweep (a second), so the segment goes;
    // a request naming it then is a clear error, never a crash.
    addon.remove(output);
    created.splice(created.indexOf(output), 1);
    await expect.poll(() => segmentExists(addon, output), { timeout: 5000, interval: 50 }).toBe(false);
    const gone = await inferImage('in', 'out', 32);
    expect(gone.status).toBe(400);
    expect(gone.text()).toMatch(/does not exist/);
  });

  it('answers right when an output region lies over an input (one region, or two regions over one segment)', async () => {
    await agent.registry.load({ name: 'pair', url: await files.custom(pairModel(), 'pair') });
    try {
      const { a, b } = pairInputs();
      const expected = pairReference({ a, b });
      const size = a.byteLength;
      const floatsAt = (shmid: number, offset: number) =>
        new Float32Array(segmentBytes(addon, shmid, offset, size).buffer);
      /** a from region `regionA`, b from `regionB` (at `offsetB` in it). */
      const inputsAt = (regionA: string, regionB: string, offsetB = 0) => [
        { name: 'a', shape: [1, ROW], datatype: 'FP32', parameters: inRegion(regionA, size) },
        { name: 'b', shape: [1, ROW], datatype: 'FP32', parameters: inRegion(regionB, size, offsetB) },
      ];
      /** sum at the start of the region, product right after it. */
      const outputsAt = (region: string) => [
        { name: 'sum', parameters: inRegion(region, size) },
        { name: 'product', parameters: inRegion(region, size, size) },
      ];
      /**
       * Runs the pair from `inputs` into `outputRegion` (segment `outputs`) until a run goes inline, each answer
       * checked; tells whether the REST door copied an output on it (see inlineRun). `original` (a, b) is written
       * into `outputs` before each try: where outputs lie over inputs, it restores what the last try overwrote;
       * elsewhere, it overwrites the last try's answer.
       */
      const inlinePair = (inputs: ReturnType<typeof inputsAt>, outputRegion: string, outputs: number) =>
        inlineRun(
          () => post('/v2/models/pair/infer', { inputs, outputs: outputsAt(outputRegion) }),
          () => {
            expect(floatsAt(outputs, 0)).toEqual(expected.sum);
            expect(floatsAt(outputs, size)).toEqual(expected.product);
          },
          () => writeSegment(addon, outputs, original),
        );
      const original = Buffer.concat([bytesOf(a), bytesOf(b)]);
      const apart = segment(2 * size, original);
      await register('a', apart, size);
      await register('b', apart, size, size);
      // Its first inline run (here, or the last of untilInline's) shows the outputs' shapes, copied; later ones
      // may have ONNX Runtime write them.
      const warm = segment(2 * size);
      await register('warm', warm, 2 * size);
      await untilInlineOverRest('pair', () =>
        post('/v2/models/pair/infer', { inputs: inputsAt('a', 'b'), outputs: outputsAt('warm') }),
      );
      await inlinePair(inputsAt('a', 'b'), 'warm', warm);

      // Outputs in a segment of their own, apart from the inputs: written in place, no copy.
      const out = segment(2 * size);
      await register('out', out, 2 * size);
      expect(await inlinePair(inputsAt('a', 'b'), 'out', out)).toBe(false);

      // Each output over the input it is computed from after the other: one region for both, read and written.
      const both = segment(2 * size, original);
      await register('both', both, 2 * size);
      expect(await inlinePair(inputsAt('both', 'both', size), 'both', both)).toBe(true);

      // Two regions over one segment, at different offsets: inputs through 'left' and 'right', outputs through
      // 'whole' (the same bytes).
      const shared = segment(2 * size, original);
      await register('left', shared, size);
      await register('right', shared, size, size);
      await register('whole', shared, 2 * size);
      expect(await inlinePair(inputsAt('left', 'right'), 'whole', shared)).toBe(true);
    } finally {
      await agent.registry.unload('pair');
    }
  });

  it('serves a model that does not produce the output shape it declares, from then on by the copy', async () => {
    await agent.registry.load({ name: 'liar', url: await files.custom(liarModel(), 'liar') });
    try {
      const declared = LIAR_DECLARED_ROWS * ROW * 4;
      const input = segment(declared, bytesOf(liarInput(2)));
      const output = segment(declared);
      await register('x2', input, declared);
      await register('x1', input, declared / 2);
      await register('y', output, declared);
      const infer = (rows: number) =>
        post('/v2/models/liar/infer', {
          inputs: [
            {
              name: 'x',
              shape: [rows, ROW],
              datatype: 'FP32',
              parameters: inRegion(`x${rows}`, rows * ROW * 4),
            },
          ],
          outputs: [{ name: 'y', parameters: inRegion('y', declared) }],
        });
      await untilInlineOverRest('liar', () => infer(2));
      expect((await infer(2)).status).toBe(200);
      expect(new Float32Array(segmentBytes(addon, output, 0, declared).buffer)).toEqual(liarInput(2));
      // One row: ONNX Runtime refuses memory of the declared shape; the agent runs it again and copies the row.
      writeSegment(addon, output, new Uint8Array(declared));
      const oneRow = await infer(1);
      expect(oneRow.status).toBe(200);
      expect(oneRow.json()).toMatchObject({ outputs: [{ name: 'y', shape: [1, ROW] }] });
      expect(new Float32Array(segmentBytes(addon, output, 0, declared / 2).buffer)).toEqual(liarInput(1));
      expect(segmentBytes(addon, output, declared / 2, declared / 2).every((b) => b === 0)).toBe(true);
      const twoRows = await infer(2);
      expect(twoRows.status).toBe(200);
      expect(new Float32Array(segmentBytes(addon, output, 0, declared).buffer)).toEqual(liarInput(2));
    } finally {
      await agent.registry.unload('liar');
    }
  });

  it('never writes a region after unregistering it has answered, and then refuses it clearly', async () => {
    await register('in', segment(IMAGE_BYTES, bytesOf(IMAGE_SAMPLE.data)), IMAGE_BYTES);
    const output = segment(IMAGE_BYTES);
    await register('out', output, IMAGE_BYTES);
    await untilInlineOverRest('image', () => inferImage('in', 'out'));
    expect((await inferImage('in', 'out')).status).toBe(200);
    // A request and the region's unregistering sent together: either the request is served first (unregister
    // waits for it) or it finds the region gone; once unregister answers, the client reuses the memory.
    const reused = Buffer.alloc(IMAGE_BYTES, 0xa5);
    const pending = inferImage('in', 'out');
    const unregistered = await post('/v2/systemsharedmemory/region/out/unregister', {});
    expect(unregistered.status).toBe(200);
    writeSegment(addon, output, reused);
    const raced = await pending;
    expect([200, 400]).toContain(raced.status);
    if (raced.status === 400) expect(raced.text()).toMatch(/region \\"out\\", which is not registered/);
    const after = await inferImage('in', 'out');
    expect(after.status).toBe(400);
    expect(after.text()).toMatch(/region \\"out\\", which is not registered/);
    expect(segmentBytes(addon, output, 0, IMAGE_BYTES).equals(reused)).toBe(true);
  });
});
