import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TEST_MODELS, writeTestModel } from '@edgefleet/core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_ORT_SESSION_CONFIG, InferencePool, type PoolTensor } from '../../src/inference/index.js';
import { WorkerSegments } from '../../src/inference/worker-segments.js';
import {
  SharedMemoryError,
  identityOf,
  loadSysvShmAddon,
  sameSegment,
  type SegmentReference,
} from '../../src/shm/index.js';
import { inferenceError } from '../support/pool-models.js';
import { makeSegment, segmentBytes, segmentExists, segmentReference } from '../support/segments.js';

// Inputs and outputs in System V shared memory that the inference worker maps itself: real segments through the
// real addon, a real worker thread running ONNX Runtime.
const addon = loadSysvShmAddon();
const created: number[] = [];
let dir: string;
let pool: InferencePool;

const sample = TEST_MODELS.tiny.sampleInputs().x!;
const x = new Uint8Array(sample.data.buffer, sample.data.byteOffset, sample.data.byteLength);
const y = TEST_MODELS.tiny.reference({ x: sample }).y!.data as Float32Array;
const expectedY = new Uint8Array(y.buffer, y.byteOffset, y.byteLength);

/** A segment of `size` bytes holding `bytes` at `offset`. */
function segment(size: number, bytes: Uint8Array = new Uint8Array(0), offset = 0): number {
  return makeSegment(addon, created, bytes, { size, offset });
}

const exists = (shmid: number): boolean => segmentExists(addon, shmid);

/** What the event loop hands over after its checks: where the bytes lie, and which segment it checked. */
const reference = (shmid: number, offset: number, byteLength: number): SegmentReference =>
  segmentReference(addon, shmid, offset, byteLength);

/** The tiny model's input in shared memory; `data` is what the inline path would read (never here). */
const segmentInput = (ref: SegmentReference): PoolTensor[] => [
  { name: 'x', dataType: 'FLOAT32', shape: [1, 16], data: new Uint8Array(64), segment: ref },
];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'agent-segments-'));
  pool = await InferencePool.start({ workers: 1, session: DEFAULT_ORT_SESSION_CONFIG });
  await pool.loadModel('tiny', await writeTestModel('tiny', dir), 1);
});
afterAll(async () => {
  await pool?.close();
  await rm(dir, { recursive: true, force: true });
});
afterEach(() => {
  for (const shmid of created.splice(0)) if (exists(shmid)) addon.remove(shmid);
});

describe('segment references into the inference worker', () => {
  it('runs an input the worker maps itself, with no copy on the event loop, and writes an output into a segment', async () => {
    const input = segment(4096, x, 128);
    const output = segment(256);
    const before = pool.stats().inputBytes;
    const result = await pool.run('tiny', segmentInput(reference(input, 128, 64)), {
      outputSegments: [{ name: 'y', segment: reference(output, 32, 200) }],
    });
    const after = pool.stats().inputBytes;
    expect(after.segment - before.segment).toBe(64);
    expect(after.copies).toBe(before.copies);
    expect(after.copied).toBe(before.copied);
    expect(result.outputs).toEqual([
      { name: 'y', dataType: 'FLOAT32', shape: [1, 16], data: new Uint8Array(0), writtenToSegment: true },
    ]);
    expect([...segmentBytes(addon, output, 32, 64)]).toEqual([...expectedY]);
    expect([...segmentBytes(addon, output, 0, 32)]).toEqual(new Array(32).fill(0));

    // Without an output segment the output comes back as bytes, as before.
    const plain = await pool.run('tiny', segmentInput(reference(input, 128, 64)));
    expect([...plain.outputs[0]!.data]).toEqual([...expectedY]);
  });

  it('fails a request whose segment was removed after the check with a clear error, and keeps serving', async () => {
    const input = segment(64, x);
    const checked = reference(input, 0, 64);
    addon.remove(input); // nobody has it attached: it is destroyed at once
    expect(exists(input)).toBe(false);
    const error = await inferenceError(pool.run('tiny', segmentInput(checked)));
    expect(error.kind).toBe('segment-unusable');
    expect(error.message).toMatch(
      /input tensor "x": shared memory segment \d+ does not exist \(removed, or never created\): cannot attach it read-only/,
    );
    const again = await pool.run('tiny', segmentInput(reference(segment(64, x), 0, 64)));
    expect([...again.outputs[0]!.data]).toEqual([...expectedY]);
  });

  it('refuses a segment whose identity is not the one checked, whether mapped afresh or cached', async () => {
    const input = segment(64, x);
    const good = reference(input, 0, 64);
    const other = { ...good, identity: { ...good.identity, changeTime: good.identity.changeTime - 1 } };
    const fresh = await inferenceError(pool.run('tiny', segmentInput(other)));
    expect(fresh.kind).toBe('segment-unusable');
    expect(fresh.message).toMatch(/is not the segment the agent checked/);
    await pool.run('tiny', segmentInput(good)); // now cached by the worker
    const cached = await inferenceError(
      pool.run('tiny', segmentInput({ ...good, identity: { ...good.identity, creatorPid: 1 } })),
    );
    expect(cached.message).toMatch(/is not the segment the agent checked/);
  });

  it('refuses a segment chmod-ed after the check within the same second (ctime unchanged), mapped afresh or cached', async () => {
    // ctime has whole seconds: a reference whose ctime equals the segment's current one but whose permissions are
    // those before an IPC_SET is what the worker sees when the chmod falls in the second of the check.
    const input = segment(64, x);
    addon.setMode(input, 0o400);
    const checked = identityOf(addon.stat(input));
    addon.setMode(input, 0o600);
    const sameSecond = (shmid: number): SegmentReference => ({
      segmentId: shmid,
      offset: 0,
      byteLength: 64,
      identity: { ...checked, changeTime: addon.stat(shmid).changeTime },
    });
    const fresh = await inferenceError(pool.run('tiny', segmentInput(sameSecond(input))));
    expect(fresh.kind).toBe('segment-unusable');
    expect(fresh.message).toMatch(/is not the segment the agent checked/);

    // Cached by the worker under the new mode, then chmod-ed back: the old mode with the new ctime is refused.
    await pool.run('tiny', segmentInput(reference(input, 0, 64)));
    const cachedAt = identityOf(addon.stat(input));
    addon.setMode(input, 0o400);
    const cached = await inferenceError(
      pool.run(
        'tiny',
        segmentInput({
          ...reference(input, 0, 64),
          identity: { ...cachedAt, changeTime: addon.stat(input).changeTime },
        }),
      ),
    );
    expect(cached.message).toMatch(/is not the segment the agent checked/);
    const again = await pool.run('tiny', segmentInput(reference(input, 0, 64)));
    expect([...again.outputs[0]!.data]).toEqual([...expectedY]);
  });

  it('checks bounds against its own mapping, and refuses an output larger than its room', async () => {
    const input = segment(64, x);
    const past = await inferenceError(
      pool.run('tiny', segmentInput({ ...reference(input, 0, 64), offset: 8 })),
    );
    expect(past.kind).toBe('segment-unusable');
    expect(past.message).toMatch(
      /64 bytes at offset 8 run past the end of shared memory segment \d+ \(64 bytes\)/,
    );

    const output = segment(64);
    const small = await inferenceError(
      pool.run('tiny', segmentInput(reference(input, 0, 64)), {
        outputSegments: [{ name: 'y', segment: reference(output, 0, 32) }],
      }),
    );
    expect(small.kind).toBe('segment-unusable');
    expect(small.message).toMatch(/output "y" is 64 bytes, but shared_memory_byte_size gives it 32/);
    expect([...segmentBytes(addon, output, 0, 64)]).toEqual(new Array(64).fill(0));
  });

  it('lets go of a cached segment the client removed, so that it is destroyed', async () => {
    const first = segment(64, x);
    await pool.run('tiny', segmentInput(reference(first, 0, 64)));
    addon.remove(first);
    expect(exists(first)).toBe(true); // the worker's cached mapping holds it
    // Mapping another segment sweeps the cache (so does the worker's timer, while no requests come).
    await pool.run('tiny', segmentInput(reference(segment(64, x), 0, 64)));
    expect(exists(first)).toBe(false);
  });
});

describe('WorkerSegments', () => {
  const segments: WorkerSegments[] = [];
  const newSegments = (maxCached: number) => {
    const s = new WorkerSegments({ addon: () => addon, maxCached });
    segments.push(s);
    return s;
  };
  afterEach(() => {
    for (const s of segments.splice(0)) s.close();
  });

  it('tells segments apart by size, creator, change time and the permissions checked', () => {
    const identity = {
      size: 64,
      creatorPid: 10,
      changeTime: 1000,
      mode: 0o400,
      ownerUid: 1000,
      ownerGid: 1000,
      creatorUid: 1000,
      creatorGid: 1000,
    };
    expect(sameSegment(identity, { ...identity })).toBe(true);
    expect(sameSegment(identity, { ...identity, size: 128 })).toBe(false);
    expect(sameSegment(identity, { ...identity, creatorPid: 11 })).toBe(false);
    expect(sameSegment(identity, { ...identity, changeTime: 1001 })).toBe(false);
    expect(sameSegment(identity, { ...identity, mode: 0o440 })).toBe(false);
    expect(sameSegment(identity, { ...identity, ownerUid: 0 })).toBe(false);
    expect(sameSegment(identity, { ...identity, ownerGid: 0 })).toBe(false);
    expect(sameSegment(identity, { ...identity, creatorUid: 0 })).toBe(false);
    expect(sameSegment(identity, { ...identity, creatorGid: 0 })).toBe(false);
    const stat = addon.stat(segment(64));
    expect(identityOf(stat)).toEqual({
      size: 64,
      creatorPid: process.pid,
      changeTime: stat.changeTime,
      mode: 0o600,
      ownerUid: process.getuid!(),
      ownerGid: process.getgid!(),
      creatorUid: process.getuid!(),
      creatorGid: process.getgid!(),
    });
  });

  it('keeps every mapping a run uses until it ends, then at most maxCached', () => {
    const s = newSegments(1);
    const [a, b] = [segment(64, x), segment(64, x)];
    s.beginRun();
    const first = s.bytes(reference(a, 0, 64), 'read', 'a');
    s.bytes(reference(b, 0, 64), 'read', 'b');
    expect(s.cachedCount).toBe(2);
    expect([...first]).toEqual([...x]); // still mapped
    s.endRun();
    expect(s.cachedCount).toBe(1);
    expect(first.byteLength).toBe(0); // unmapped: its view is empty, never dangling
  });

  it('lets go, once the run ends, of a segment its client had already marked for removal', () => {
    const s = newSegments(4);
    const { shmid } = addon.create(64);
    created.push(shmid);
    const client = addon.attachReadWrite(shmid);
    addon.remove(shmid); // create, attach, remove: the segment lives while someone has it attached
    s.beginRun();
    const bytes = s.bytes(reference(shmid, 0, 64), 'read', 'x');
    expect(s.cachedCount).toBe(1);
    s.endRun();
    expect(s.cachedCount).toBe(0);
    expect(bytes.byteLength).toBe(0);
    addon.detach(client);
    expect(exists(shmid)).toBe(false);
  });

  it('throws only SharedMemoryError for references past the mapping', () => {
    const s = newSegments(2);
    const shmid = segment(64);
    for (const [offset, length] of [
      [0, 65],
      [65, 0],
      [-1, 1],
      [0.5, 1],
      [2 ** 53, 1],
    ] as const) {
      expect(() => s.bytes({ ...reference(shmid, 0, 0), offset, byteLength: length }, 'write', 't')).toThrow(
        SharedMemoryError,
      );
    }
    expect(s.bytes(reference(shmid, 64, 0), 'write', 't').byteLength).toBe(0);
  });
});
