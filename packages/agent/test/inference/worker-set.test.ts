import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TEST_MODELS, slowModelInput, writeTestModel } from '@edgefleet/core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  DEFAULT_ORT_SESSION_CONFIG,
  InferenceError,
  toOrtSessionOptions,
  type PoolEvent,
} from '../../src/inference/index.js';
import { preciseNow } from '../../src/inference/protocol.js';
import type { Job } from '../../src/inference/scheduling.js';
import { fromWire, prepareInputs, type PoolTensor } from '../../src/inference/tensor-transfer.js';
import {
  WorkerSet,
  type LostRuns,
  type RunReply,
  type WorkerDeath,
  type WorkerSetEvents,
} from '../../src/inference/worker-set.js';
import { asPoolTensor } from '../support/pool-models.js';
import { waitUntil } from '../support/wait-until.js';

/** What the scheduler side of a WorkerSet was told, in order. */
interface Told {
  canTakeWork: number[];
  runEnded: Array<{ worker: number; job: Job; reply: RunReply }>;
  died: Array<{ worker: number; death: WorkerDeath; lost: LostRuns }>;
  instanceLost: Array<{ worker: number; key: string; reason: string }>;
  events: PoolEvent[];
}

let dir: string;
const paths: Record<string, string> = {};
let workers: WorkerSet | undefined;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'agent-worker-set-'));
  for (const model of ['tiny', 'slow'] as const) paths[model] = await writeTestModel(model, dir);
});
afterEach(async () => {
  await workers?.close(() => new InferenceError('closed', 'the test is over'));
  workers = undefined;
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A started set of `count` workers whose scheduler records what it is told; `models` answers modelOf. */
async function startSet(
  count: number,
  models: Map<string, string>,
  restartDelayMs = { initial: 10, max: 100 },
): Promise<{ set: WorkerSet; told: Told }> {
  const told: Told = { canTakeWork: [], runEnded: [], died: [], instanceLost: [], events: [] };
  const events: WorkerSetEvents = {
    canTakeWork: (slot) => told.canTakeWork.push(slot.index),
    runEnded: (slot, job, reply) => told.runEnded.push({ worker: slot.index, job, reply }),
    died: (slot, death, lost) => {
      told.died.push({ worker: slot.index, death, lost });
      return Number(lost.running !== null) + Number(lost.ahead !== null);
    },
    instanceLost: (slot, key, reason) => told.instanceLost.push({ worker: slot.index, key, reason }),
    modelOf: (key) => models.get(key),
  };
  const set = new WorkerSet({
    workers: count,
    hotWaitMicros: 0,
    restartDelayMs,
    sessionOptions: () => toOrtSessionOptions(DEFAULT_ORT_SESSION_CONFIG),
    events,
    onEvent: (event) => told.events.push(event),
  });
  workers = set;
  await set.start();
  return { set, told };
}

/** A job for `key` as the scheduler makes one, and the promise it settles. */
function jobFor(set: WorkerSet, key: string, inputs: PoolTensor[]): Job {
  const counts = { transferred: 0, shared: 0, copied: 0, copies: 0, segment: 0 };
  const { wire, transfer } = prepareInputs(inputs, false, counts);
  return {
    seq: set.nextId(),
    key,
    inputs: wire,
    transfer,
    submittedAt: preciseNow(),
    resolve: () => {},
    reject: () => {},
  };
}

describe('WorkerSet', () => {
  it('loads a session on one worker, posts a run to it, and hands the reply of its running job to the scheduler', async () => {
    const { set, told } = await startSet(2, new Map([['tiny', paths.tiny!]]));
    expect(told.canTakeWork.sort()).toEqual([0, 1]); // both became ready
    const slot = set.slots[1]!;
    const loaded = await set.load(slot, 'tiny', paths.tiny!);
    expect(loaded).toMatchObject({ op: 'loaded', inputs: [{ name: 'x', type: 'float32', shape: [1, 16] }] });
    expect(slot.sessions.get('tiny')).toBe('ready');
    expect(set.slots[0]!.sessions.size).toBe(0);
    expect(told.canTakeWork.at(-1)).toBe(1); // the session is ready: the scheduler may give the worker work

    const input = TEST_MODELS.tiny.sampleInputs();
    const job = jobFor(set, 'tiny', [asPoolTensor('x', input.x!)]);
    slot.running = job; // the scheduler's part: the job runs on this worker
    set.postRun(slot, job, { transferred: 0, shared: 0, copied: 0, copies: 0, segment: 0 });
    await waitUntil(() => told.runEnded.length === 1, 'the run to end');
    const [ended] = told.runEnded;
    expect(ended!.worker).toBe(1);
    expect(ended!.job).toBe(job);
    expect(slot.running).toBeNull();
    if (ended!.reply.op !== 'done') throw new Error(`the run failed: ${JSON.stringify(ended!.reply)}`);
    const reference = TEST_MODELS.tiny.reference(input).y!;
    const output = fromWire(ended!.reply.outputs[0]!);
    expect(output).toMatchObject({ name: 'y', shape: [1, 16] });
    expect(Buffer.from(output.data)).toEqual(
      Buffer.from(reference.data.buffer, reference.data.byteOffset, reference.data.byteLength),
    );
  });

  it('rejects a model ONNX Runtime refuses as model-rejected, and leaves the session state to the scheduler', async () => {
    const { set } = await startSet(1, new Map());
    const slot = set.slots[0]!;
    const garbage = join(dir, 'garbage.onnx');
    await writeFile(
      garbage,
      Buffer.from('this is not an ONNX model, only bytes in a file of that name\n'.repeat(64)),
    );
    const refused = await set.load(slot, 'garbage', garbage).then(
      () => undefined,
      (error: unknown) => error,
    );
    expect(refused).toMatchObject({ kind: 'model-rejected' });
    // ONNX Runtime read the file and refused what it holds.
    expect((refused as Error).message).toMatch(/protobuf parsing failed/i);
    await set.release(slot, 'garbage');
    expect(slot.sessions.has('garbage')).toBe(false);
  });

  it("on a worker's death gives the scheduler the job it was running, then restarts it and reloads the sessions still loaded", async () => {
    const models = new Map([
      ['slow', paths.slow!],
      ['tiny', paths.tiny!],
    ]);
    const { set, told } = await startSet(1, models);
    const slot = set.slots[0]!;
    await set.load(slot, 'slow', paths.slow!);
    await set.load(slot, 'tiny', paths.tiny!);
    models.delete('tiny'); // unloaded meanwhile: not reloaded
    const job = jobFor(set, 'slow', [asPoolTensor('x', slowModelInput())]);
    slot.running = job;
    set.postRun(slot, job, { transferred: 0, shared: 0, copied: 0, copies: 0, segment: 0 });

    await set.recycle(0);
    await waitUntil(
      () => told.events.some((event) => event.type === 'worker-restarted'),
      'the worker to restart',
    );
    expect(told.died).toHaveLength(1);
    expect(told.died[0]!.death.kind).toBe('worker-died');
    expect(told.died[0]!.lost).toEqual({ running: job, ahead: null });
    expect(told.runEnded).toEqual([]); // its result, if any, was discarded
    expect(told.events).toEqual([
      { type: 'worker-exit', worker: 0, exitCode: expect.any(Number), reason: expect.any(String), failed: 1 },
      { type: 'worker-restarted', worker: 0, reloaded: ['slow'] },
    ]);
    expect(slot.ready).toBe(true);
    expect(slot.restarts).toBe(1);
    expect(slot.sessions.get('slow')).toBe('ready');

    // The restarted worker runs the reloaded session.
    const again = jobFor(set, 'slow', [asPoolTensor('x', slowModelInput())]);
    slot.running = again;
    set.postRun(slot, again, { transferred: 0, shared: 0, copied: 0, copies: 0, segment: 0 });
    await waitUntil(() => told.runEnded.length === 1, 'the run to end');
    expect(told.runEnded[0]!.reply.op).toBe('done');
  });

  it('fails control messages still waiting when closed, and restarts no worker after', async () => {
    const { set, told } = await startSet(1, new Map([['tiny', paths.tiny!]]));
    const slot = set.slots[0]!;
    const loading = set.load(slot, 'tiny', paths.tiny!).then(
      () => undefined,
      (error: unknown) => error,
    );
    await set.close(() => new InferenceError('closed', 'the set is closing'));
    workers = undefined;
    expect(await loading).toMatchObject({ kind: 'closed', message: 'the set is closing' });
    expect(slot.worker).toBeNull();
    // The thread's exit came before close resolved: a death it took for one would be here already.
    expect(told.died).toEqual([]);
    expect(told.events).toEqual([]);
  });

  it('restarts no worker once closed, not even one whose restart was already scheduled', async () => {
    // Long enough that the restart is still waiting when close is called right after the death.
    const restartDelayMs = { initial: 1000, max: 1000 };
    const { set, told } = await startSet(1, new Map(), restartDelayMs);
    const slot = set.slots[0]!;
    // A first death restarts at once; a second with nothing completed in between waits restartDelayMs.
    await set.recycle(0);
    await waitUntil(
      () => told.events.some((event) => event.type === 'worker-restarted'),
      'the worker to restart',
    );
    await set.recycle(0);
    await waitUntil(() => told.died.length === 2, 'the second death to be told');
    expect(slot.restarts).toBe(1); // the second restart is scheduled, not begun
    await set.close(() => new InferenceError('closed', 'the set is closing'));
    workers = undefined;
    // Timers fire in the order they fall due: the restart's (set before this one, for at most max) comes first.
    await new Promise((resolve) => setTimeout(resolve, restartDelayMs.max + 1));
    expect(slot.restarts).toBe(1);
    expect(slot.worker).toBeNull();
    expect(told.events.map((event) => event.type)).toEqual([
      'worker-exit',
      'worker-restarted',
      'worker-exit',
    ]);
  });
});
