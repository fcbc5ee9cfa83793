import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TEST_MODELS, slowModelFlops, slowModelInput, writeTestModel } from '@edgefleet/core';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import {
  DEFAULT_ORT_SESSION_CONFIG,
  InferencePool,
  type PoolEvent,
  type PoolTensor,
  type RunResult,
  toOrtSessionOptions,
} from '../../src/inference/index.js';
import {
  asPoolTensor,
  loopWaits,
  SCALABLE,
  scalable,
  scalableModel,
  scalableReference,
  tiled,
  tiledModel,
  tiledReference,
  untilInline,
} from '../support/pool-models.js';
import {
  DEMOTE_FACTOR,
  DEMOTION_MEMORY_MS,
  InlineBudget,
  MAX_DEMOTIONS,
  NEAR_CEILING_CREDIT_LIMITS,
  PARK_MS,
  RUNS_BEFORE_INLINE,
  WINDOW_MS,
} from '../../src/inference/inline-budget.js';
import { IDLE_REQUESTS_BEFORE_SESSION, InlineModels } from '../../src/inference/inline-models.js';
import { InlineRunner } from '../../src/inference/inline-runner.js';
import { newModelEntry } from '../../src/inference/scheduling.js';
import { threadCpuClock } from '../../src/daemon/process-tuning.js';
import { loadSysvShmAddon } from '../../src/shm/index.js';
import { reshapeNeedsEvenModel } from '../models/helpers.js';
import { waitUntil } from '../support/wait-until.js';

let dir: string;
const paths: Record<string, string> = {};
const addon = loadSysvShmAddon();
/**
 * The daemon's clock for judging inline runs (the event loop's own CPU time): a run preempted on a loaded machine
 * takes long without computing, and is not judged by that (inline-preempted.test.ts checks both clocks).
 */
const { threadCpuMs } = threadCpuClock(addon);
const pools: InferencePool[] = [];

const tinyInput = () => [asPoolTensor('x', TEST_MODELS.tiny.sampleInputs().x!)];
const tinyExpected = () =>
  TEST_MODELS.tiny.reference(TEST_MODELS.tiny.sampleInputs()).y!.data as Float32Array;
const floats = (result: RunResult) => new Float32Array(result.outputs[0]!.data.slice().buffer);
/** Exact equality of two large float arrays, byte for byte (toEqual takes seconds over millions of elements). */
const sameFloats = (a: Float32Array, b: Float32Array) =>
  Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));

async function startPool(
  maxRunMicros: number,
  eventLoopShare: number,
  maxQueuedPerModel = 256,
  idleMaxRunMicros = 0,
  onEvent?: (event: PoolEvent) => void,
): Promise<InferencePool> {
  const pool = await InferencePool.start({
    workers: 2,
    session: DEFAULT_ORT_SESSION_CONFIG,
    inline: { maxRunMicros, eventLoopShare, idleMaxRunMicros },
    maxQueuedPerModel,
    ...(onEvent && { onEvent }),
    ...(threadCpuMs && { threadCpuMs }),
  });
  pools.push(pool);
  return pool;
}

/**
 * Runs the model until the pool has measured it fast and loaded its inline session (a busy machine's slow runs
 * only make this take longer).
 */
/** Runs `key` on `input()` until the pool runs it inline (see untilInline). */
const untilRunsInline = (pool: InferencePool, key: string, input: () => PoolTensor[]) =>
  untilInline(pool, () => pool.run(key, input()), key);

/**
 * Rows of the scalable model that make a run as much work as the slow model's (50–300 ms on one core, see core's
 * catalogue): over 4× the highest per-run ceiling (10 ms) on any machine, so one such run demotes a model measured
 * with one row (always under 10 ms) whatever the machine's speed.
 */
const OVER_ANY_CEILING_ROWS = Math.ceil(slowModelFlops() / slowModelFlops({ ...SCALABLE, rows: 1 }));

/**
 * The least CPU time (this thread's) of `runs` runs of the model on this thread, in ms: what the pool judges an
 * inline run by (threadCpuMs).
 */
async function threadCpuCost(model: string, input: () => PoolTensor[], runs = 3): Promise<number> {
  // The clock is the native addon's: without it, say what is missing instead of "not a function".
  if (!threadCpuMs)
    throw new Error(
      'the thread CPU clock comes from the native addon (packages/agent/native), and loadSysvShmAddon() found none: build it with `npm run build:native -w @edgefleet/agent` (node-gyp, a C++ compiler, Python 3)',
    );
  const runner = new InlineRunner();
  try {
    // The pool's session options: one thread, so that the run's CPU time is all this thread's.
    expect(await runner.load(model, paths[model]!, toOrtSessionOptions(DEFAULT_ORT_SESSION_CONFIG))).toBe(
      true,
    );
    let least = Infinity;
    for (let i = 0; i < runs; i++) {
      const inputs = input();
      const before = threadCpuMs();
      runner.run(model, inputs);
      least = Math.min(least, threadCpuMs() - before);
    }
    return least;
  } finally {
    await runner.close();
  }
}

/** Waits out the hold on idle runs after a request found another in flight (WINDOW_MS). */
const windowPasses = () => new Promise((resolve) => setTimeout(resolve, WINDOW_MS + 5));

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'agent-inline-'));
  for (const model of ['tiny', 'slow'] as const) paths[model] = await writeTestModel(model, dir);
  paths.scalable = join(dir, 'scalable.onnx');
  await writeFile(paths.scalable, scalableModel());
  paths.tiled = join(dir, 'tiled.onnx');
  await writeFile(paths.tiled, tiledModel());
  paths.even = join(dir, 'even.onnx');
  await writeFile(paths.even, reshapeNeedsEvenModel());
});
afterAll(async () => {
  for (const pool of pools) await pool.close();
  await rm(dir, { recursive: true, force: true });
});

describe('InlineRunner', () => {
  it("loads and runs a model on this thread through onnxruntime-node's native session (the binding it relies on is there)", async () => {
    const runner = new InlineRunner();
    try {
      expect(await runner.load('tiny', paths.tiny!, {})).toBe(true);
      const { outputs } = runner.run('tiny', tinyInput());
      expect(new Float32Array(outputs[0]!.data.slice().buffer)).toEqual(tinyExpected());
    } finally {
      await runner.close();
    }
  });
});

describe('InferencePool: the inline path', () => {
  it('moves a model measured fast onto the event loop, with the same exact outputs, and counts where runs went', async () => {
    const pool = await startPool(5000, 0.9);
    await pool.loadModel('tiny', paths.tiny!, 1);
    const onWorker = await pool.run('tiny', tinyInput());
    expect(onWorker.worker).toBeGreaterThanOrEqual(0);
    await untilRunsInline(pool, 'tiny', tinyInput);
    const inline = await pool.run('tiny', tinyInput());
    expect(inline.worker).toBe(-1);
    expect(floats(inline)).toEqual(tinyExpected());
    expect(floats(onWorker)).toEqual(tinyExpected());
    expect(inline.outputs.map((o) => [o.name, o.dataType, o.shape])).toEqual([['y', 'FLOAT32', [1, 16]]]);
    const stats = pool.stats();
    expect(stats.runs.inline).toBeGreaterThanOrEqual(1);
    // Inline only once RUNS_BEFORE_INLINE runs were measured on the workers (the first request among them).
    expect(stats.runs.worker).toBeGreaterThanOrEqual(RUNS_BEFORE_INLINE);
    expect(stats.inline.models).toEqual([{ key: 'tiny', computeMicros: expect.any(Number), path: 'inline' }]);
    expect(stats.runs.inline_idle).toBe(0);
  });

  it("runs an inline request in the caller's turn of the event loop, before an immediate queued ahead of it", async () => {
    const pool = await startPool(5000, 0.9);
    await pool.loadModel('tiny', paths.tiny!, 1);
    await untilRunsInline(pool, 'tiny', tinyInput);
    let immediateRan = false;
    setImmediate(() => {
      immediateRan = true;
    });
    const inline = await pool.run('tiny', tinyInput());
    expect(inline.worker).toBe(-1);
    // onnxruntime-node's public run waits for a setImmediate: a run through it would come after this one.
    expect(immediateRan).toBe(false);
    expect(floats(inline)).toEqual(tinyExpected());
  });

  it('fails an inline run ONNX Runtime refuses as run-failed, and the next inline run works', async () => {
    const pool = await startPool(5000, 0.9);
    await pool.loadModel('even', paths.even!, 1);
    const floatsOf = (n: number) => [
      asPoolTensor('x', {
        dataType: 'FLOAT32',
        shape: [n],
        data: Float32Array.from({ length: n }, (_, i) => i),
      }),
    ];
    await untilRunsInline(pool, 'even', () => floatsOf(4));
    const workerRuns = pool.stats().runs.worker;
    await expect(pool.run('even', floatsOf(3))).rejects.toMatchObject({ kind: 'run-failed' });
    expect(pool.stats().runs.worker).toBe(workerRuns); // it failed inline, not on a worker
    const after = await pool.run('even', floatsOf(4));
    expect(after.worker).toBe(-1);
    expect(after.outputs[0]!.shape).toEqual([2, 2]);
    expect(Array.from(new Float32Array(after.outputs[0]!.data.slice().buffer))).toEqual([0, 1, 2, 3]);
  });

  it('keeps a model whose runs are over the ceiling on the workers', async () => {
    // A ceiling of 1 µs: the scalable model's one row always takes longer (and far less than the slow model, whose
    // 20 runs could outlast the test's timeout on a loaded machine).
    const pool = await startPool(1, 0.9);
    await pool.loadModel('scalable', paths.scalable!, 1);
    for (let i = 0; i < RUNS_BEFORE_INLINE + 4; i++)
      expect((await pool.run('scalable', scalable(1))).worker).toBeGreaterThanOrEqual(0);
    expect(pool.stats().inline.models).toEqual([]);
    expect(pool.stats().runs.inline).toBe(0);
  });

  it('sends requests past the event-loop share to the workers, all with exact outputs', async () => {
    // A share of 5 % of the 100 ms window is 5 ms, the per-run ceiling: the first request always fits (nothing
    // ran inline before it), and 2000 requests in one turn of the event loop need more than 5 ms.
    const pool = await startPool(5000, 0.05, 4000);
    await pool.loadModel('tiny', paths.tiny!, 2);
    await untilRunsInline(pool, 'tiny', tinyInput);
    const results = await Promise.all(Array.from({ length: 2000 }, () => pool.run('tiny', tinyInput())));
    for (const result of results) expect(floats(result)).toEqual(tinyExpected());
    const workers = results.filter((r) => r.worker >= 0).length;
    const stats = pool.stats();
    expect(workers).toBeGreaterThan(0);
    expect(workers).toBeLessThan(2000);
    expect(stats.inline.overBudget).toBe(workers);
  });

  it('sends a model back to the workers after one run far over the ceiling, and measures it there again', async () => {
    const pool = await startPool(10_000, 0.9);
    await pool.loadModel('tiled', paths.tiled!, 1);
    await untilRunsInline(pool, 'tiled', () => tiled(1));
    // The same input shapes, a value that makes the run far longer: only running it shows that.
    const slowRun = await pool.run('tiled', tiled(OVER_ANY_CEILING_ROWS));
    expect(slowRun.worker).toBe(-1);
    expect(sameFloats(floats(slowRun), tiledReference(OVER_ANY_CEILING_ROWS))).toBe(true);
    expect(pool.stats().inline.demotions).toBe(1);
    const next = await pool.run('tiled', tiled(1));
    expect(next.worker).toBeGreaterThanOrEqual(0);
    expect(floats(next)).toEqual(tiledReference(1));
    expect(pool.stats().inline.models).toEqual([]);
  });

  it('never runs inline an input shape that was slow on a worker, however fast the model is on average', async () => {
    const pool = await startPool(10_000, 0.9);
    await pool.loadModel('scalable', paths.scalable!, 1);
    await pool.run('scalable', scalable(OVER_ANY_CEILING_ROWS)); // on a worker, far over the limit: not measured
    await untilRunsInline(pool, 'scalable', () => scalable(1));
    for (let i = 0; i < 2; i++) {
      const large = await pool.run('scalable', scalable(OVER_ANY_CEILING_ROWS));
      expect(large.worker).toBeGreaterThanOrEqual(0);
      expect(sameFloats(floats(large), scalableReference(OVER_ANY_CEILING_ROWS))).toBe(true);
    }
    expect(pool.stats().inline.demotions).toBe(0);
    // Not demoted: small requests run inline again once the average has come back down.
    await untilRunsInline(pool, 'scalable', () => scalable(1));
  });

  describe('with the clock moved on', () => {
    /**
     * The park tests make hundreds of worker runs (a demoted model is measured again, twice as long after each
     * demotion) and up to eight runs of 50–300 ms inline: over the default 30 s on a loaded machine.
     */
    const PARK_TEST_TIMEOUT_MS = 120_000;
    const realNow = performance.now.bind(performance);
    let skippedMs = 0;
    /** Moves performance.now() (the pool's clock for demotions) on, as if that much time had passed. */
    const timePasses = (ms: number) => {
      skippedMs += ms;
      vi.spyOn(performance, 'now').mockImplementation(() => realNow() + skippedMs);
    };
    afterEach(() => {
      vi.restoreAllMocks();
      skippedMs = 0;
    });

    it(
      'parks a model on the workers after MAX_DEMOTIONS demotions, then lets it back',
      async () => {
        const pool = await startPool(10_000, 0.9);
        await pool.loadModel('tiled', paths.tiled!, 1);
        for (let demotion = 1; demotion <= MAX_DEMOTIONS; demotion++) {
          await untilRunsInline(pool, 'tiled', () => tiled(1));
          expect((await pool.run('tiled', tiled(OVER_ANY_CEILING_ROWS))).worker).toBe(-1);
          expect(pool.stats().inline.demotions).toBe(demotion);
        }
        // Far more worker runs than any re-measuring needs: none of them is followed by an inline one while parked.
        const inlineRuns = pool.stats().runs.inline;
        for (let i = 0; i < 8 * RUNS_BEFORE_INLINE; i++) {
          expect((await pool.run('tiled', tiled(1))).worker).toBeGreaterThanOrEqual(0);
          await loopWaits();
        }
        expect(pool.stats().runs.inline).toBe(inlineRuns);
        expect(pool.stats().inline.models).toEqual([]);
        // Once the park is over, it comes back (its inline session was kept).
        timePasses(PARK_MS + 1);
        await untilRunsInline(pool, 'tiled', () => tiled(1));
      },
      PARK_TEST_TIMEOUT_MS,
    );

    it(
      'parks twice as long after each further demotion, counting the quiet time from the end of a park',
      async () => {
        const parks: number[] = [];
        const pool = await startPool(10_000, 0.9, 256, 0, (event) => {
          if (event.type === 'inline-parked') parks.push(event.parkMs);
        });
        await pool.loadModel('tiled', paths.tiled!, 1);
        // Eight demotions, each just after the park before it ended: parks of 1 to 32 minutes, the later ones
        // longer than DEMOTION_MEMORY_MS, which must not restart the count.
        for (let demotion = 1; demotion <= MAX_DEMOTIONS + 5; demotion++) {
          await untilRunsInline(pool, 'tiled', () => tiled(1));
          expect((await pool.run('tiled', tiled(OVER_ANY_CEILING_ROWS))).worker).toBe(-1);
          timePasses((demotion >= MAX_DEMOTIONS ? parks.at(-1)! : 0) + 1);
        }
        expect(PARK_MS * 2 ** 4).toBeGreaterThan(DEMOTION_MEMORY_MS);
        expect(parks).toEqual([1, 2, 4, 8, 16, 32].map((k) => k * PARK_MS));
      },
      PARK_TEST_TIMEOUT_MS,
    );

    it(
      'pays for runs over 4× the ceiling but within 4× the idle ceiling from a credit that starts full; past it they are demotions (counted exactly in inline-credit.test.ts)',
      async () => {
        const parks: PoolEvent[] = [];
        // Ceilings 1 ms and 10 ms: such a run takes 4–40 ms; the credit is NEAR_CEILING_CREDIT_LIMITS × 40 ms at most.
        const pool = await startPool(1000, 0.9, 256, 10_000, (event) => {
          if (event.type === 'inline-parked') parks.push(event);
        });
        const creditMs = NEAR_CEILING_CREDIT_LIMITS * DEMOTE_FACTOR * 10;
        await pool.loadModel('tiled', paths.tiled!, 1);
        // Rows for a run of about 12 ms of CPU (the window's middle, on a ratio scale), scaled from the least CPU
        // time of runs on this thread: the pool judges inline runs by that clock (threadCpuMs), and a loaded machine
        // stretches a run's wall time, not its CPU time (scaled by wall time, the rows came out too few). Sized
        // again before each run: even the CPU time of a row drifts on a loaded machine (cores, caches shared).
        const TARGET_MS = 12;
        let rows = Math.max(
          1,
          Math.round(
            (OVER_ANY_CEILING_ROWS * TARGET_MS) /
              (await threadCpuCost('tiled', () => tiled(OVER_ANY_CEILING_ROWS))),
          ),
        );
        /** The path the pool admits the model on now ('inline': charged to the share, judged by the 1 ms ceiling). */
        const pathNow = () => pool.stats().inline.models.find((m) => m.key === 'tiled')?.path;
        /**
         * Runs one-row requests inline, the loop idling in between, until the pool admits the model on the charged
         * path: the case here (paid from the credit) exists only there. untilRunsInline stops once the model is inline
         * on either path, and its average (an EWMA) stays over the 1 ms ceiling for a while after a near-ceiling run,
         * or throughout on a loaded machine: then the run was an idle one, judged by 4× the 10 ms idle ceiling, and
         * no size within that window was ever too slow (CI-like load, 2026-12-07: "expected +0 to be 1").
         */
        const untilChargedPath = async () => {
          for (let steps = 0; pathNow() !== 'inline'; steps++) {
            if (steps === 2000)
              throw new Error(
                `tiled not on the charged inline path after ${steps} runs: ${JSON.stringify(pool.stats().inline)}`,
              );
            await pool.run('tiled', tiled(1));
            await loopWaits();
          }
        };
        /**
         * One such run, inline; its time. Each sends the model back to be measured on the workers again. On a loaded
         * machine the sizing run can take several times the CPU of the run it sizes, so that the run is judged within
         * 4× the ceiling: an ordinary inline run, which is no demotion and leaves the model inline. Such a run is tried
         * again, sized for more (at most 4 tries, up to 30 ms: still within 4× the idle ceiling).
         */
        const nearCeilingRun = async () => {
          for (let attempt = 0; ; attempt++) {
            await untilRunsInline(pool, 'tiled', () => tiled(1));
            await untilChargedPath();
            const targetMs = Math.min(30, TARGET_MS * (1 + attempt / 2));
            rows = Math.max(
              1,
              Math.round((rows * targetMs) / (await threadCpuCost('tiled', () => tiled(rows), 2))),
            );
            // The event loop's share spent on the last ones (tens of ms each) decays first, or the run goes to a worker.
            timePasses(10 * WINDOW_MS);
            // And the loop waits for I/O once: on a loaded machine the model averages over the 1 ms ceiling, so the
            // run is an idle one, admitted only if the loop has idled since the last (a retry below follows one with
            // no wait in between, and went to a worker: CI, 2026-12-07).
            await loopWaits();
            const demotions = pool.stats().inline.demotions;
            const path = pathNow();
            const run = await pool.run('tiled', tiled(rows));
            expect(run.worker).toBe(-1);
            const counted = pool.stats().inline.demotions - demotions;
            if (counted === 1 || attempt === 3) {
              expect(
                counted,
                `a run of ${rows} rows sized for ${targetMs} ms of CPU, on the ${path} path`,
              ).toBe(1);
              return run.computeMs;
            }
            expect(counted).toBe(0);
          }
        };
        // Back to back: the full credit pays for some (at least its size over the longest of them, each judged by no
        // more than its wall time), then MAX_DEMOTIONS demotions park the model.
        let runs = 0;
        let longestMs = 0;
        while (parks.length === 0) {
          longestMs = Math.max(longestMs, await nearCeilingRun());
          runs++;
          // Each over 4 ms (it counted above): the credit cannot pay for more than its size over that.
          expect(runs).toBeLessThanOrEqual(creditMs / 4 + MAX_DEMOTIONS);
        }
        expect(runs).toBeGreaterThanOrEqual(Math.floor(creditMs / longestMs) + MAX_DEMOTIONS);
      },
      PARK_TEST_TIMEOUT_MS,
    );

    it('forgets demotions older than DEMOTION_MEMORY_MS: spread out, they never park a model', async () => {
      const pool = await startPool(10_000, 0.9);
      await pool.loadModel('tiled', paths.tiled!, 1);
      for (let demotion = 1; demotion <= MAX_DEMOTIONS + 1; demotion++) {
        await untilRunsInline(pool, 'tiled', () => tiled(1));
        expect((await pool.run('tiled', tiled(OVER_ANY_CEILING_ROWS))).worker).toBe(-1);
        timePasses(DEMOTION_MEMORY_MS + 1);
      }
      expect(pool.stats().inline.demotions).toBe(MAX_DEMOTIONS + 1);
      // Re-measured after its last demotion (the first of a new count), it is back.
      await untilRunsInline(pool, 'tiled', () => tiled(1));
    });
  });

  it('judges a failed inline run by its time like any other: one that computed far over the ceiling demotes', async () => {
    const pool = await startPool(10_000, 0.9);
    await pool.loadModel('tiled', paths.tiled!, 1);
    await untilRunsInline(pool, 'tiled', () => tiled(1));
    const inlineRuns = pool.stats().runs.inline;
    // Computes as long as the slow run above, then fails (its result cannot take the shape asked for).
    await expect(pool.run('tiled', tiled(OVER_ANY_CEILING_ROWS, true))).rejects.toMatchObject({
      kind: 'run-failed',
    });
    expect(pool.stats().runs.inline).toBe(inlineRuns); // a failed run is not counted as run
    expect(pool.stats().inline.demotions).toBe(1);
    const next = await pool.run('tiled', tiled(1));
    expect(next.worker).toBeGreaterThanOrEqual(0);
    expect(pool.stats().inline.models).toEqual([]);
  });

  it('answers the requests in flight when a model is unloaded, then refuses it as unknown', async () => {
    const pool = await startPool(5000, 0.9);
    await pool.loadModel('tiny', paths.tiny!, 1);
    await untilRunsInline(pool, 'tiny', tinyInput);
    const running = Array.from({ length: 50 }, () => pool.run('tiny', tinyInput()));
    await pool.unloadModel('tiny');
    for (const result of await Promise.all(running)) expect(floats(result)).toEqual(tinyExpected());
    await expect(pool.run('tiny', tinyInput())).rejects.toMatchObject({ kind: 'unknown-model' });
  });

  it('refuses a budget outside its bounds', async () => {
    await expect(
      InferencePool.start({
        workers: 1,
        session: DEFAULT_ORT_SESSION_CONFIG,
        inline: { maxRunMicros: 200, eventLoopShare: 1 },
      }),
    ).rejects.toThrow(/eventLoopShare must be from 0 to 0.9, got 1/);
    await expect(
      InferencePool.start({
        workers: 1,
        session: DEFAULT_ORT_SESSION_CONFIG,
        inline: { maxRunMicros: 200, eventLoopShare: 0.25, idleMaxRunMicros: 10_001 },
      }),
    ).rejects.toThrow(/idleMaxRunMicros must be a whole number of microseconds from 0 to 10000, got 10001/);
  });
});

describe('InferencePool: idle runs (inline while the agent has nothing else to do)', () => {
  // Ceilings far from any machine's run time of the scalable model's one row (32 128×128 MatMuls): always over
  // 1 µs, always under 10 ms.
  const one = () => scalable(1);

  it('runs a model over the per-run ceiling inline when requests come one at a time, not charged to the share', async () => {
    const pool = await startPool(1, 0.9, 256, 10_000);
    await pool.loadModel('scalable', paths.scalable!, 2);
    await untilRunsInline(pool, 'scalable', one);
    expect(pool.stats().inline.models).toEqual([
      { key: 'scalable', computeMicros: expect.any(Number), path: 'inline_idle' },
    ]);
    const before = pool.stats().runs;
    for (let i = 0; i < 5; i++) {
      await loopWaits();
      const result = await pool.run('scalable', one());
      expect(result.worker).toBe(-1);
      expect(floats(result)).toEqual(scalableReference(1));
    }
    const after = pool.stats();
    expect(after.runs.inline_idle - before.inline_idle).toBe(5);
    expect(after.runs.inline).toBe(0);
    expect(after.runs.worker).toBe(before.worker);
    expect(after.inline.shareUsed).toBe(0);
  });

  it('sends requests to the workers once several are in flight, or the event loop has not waited since the last idle run', async () => {
    const pool = await startPool(1, 0.9, 256, 10_000);
    await pool.loadModel('scalable', paths.scalable!, 2);
    await untilRunsInline(pool, 'scalable', one);
    await loopWaits();
    const busyBefore = pool.stats().inline.idleBusy;
    const submittedFrom = performance.now();
    const running = Array.from({ length: 8 }, () => pool.run('scalable', one()));
    const submittedTo = performance.now();
    const results = await Promise.all(running);
    for (const result of results) expect(floats(result)).toEqual(scalableReference(1));
    // The first found the agent idle; the second found that the loop had not waited since (the first ran in this
    // same turn), and the rest found it on a worker.
    expect(results.map((r) => r.worker >= 0)).toEqual([false, true, true, true, true, true, true, true]);
    expect(pool.stats().inline.idleBusy - busyBefore).toBe(7);
    // Requests 3-8 found others in flight (between submittedFrom and submittedTo): no idle runs for the next
    // WINDOW_MS, though the loop waits in between. Seven worker runs take a while on a loaded machine, so which
    // side of the window the next request falls on is read from the clock around it, not assumed.
    await loopWaits();
    const askedFrom = performance.now();
    const held = pool.run('scalable', one());
    const askedTo = performance.now();
    const heldWorker = (await held).worker;
    if (askedTo - submittedFrom < WINDOW_MS) expect(heldWorker).toBeGreaterThanOrEqual(0);
    else if (askedFrom - submittedTo >= WINDOW_MS) expect(heldWorker).toBe(-1);
    // Idle for a whole window: inline again.
    await windowPasses();
    expect((await pool.run('scalable', one())).worker).toBe(-1);
  });

  it('sends a request to a worker while another model runs on one, though the event loop waited', async () => {
    const pool = await startPool(1, 0.9, 256, 10_000);
    await pool.loadModel('scalable', paths.scalable!, 2);
    await pool.loadModel('slow', paths.slow!, 1); // 50–300 ms a run: never inline, over the idle ceiling too
    await untilRunsInline(pool, 'scalable', one);
    const slow = pool.run('slow', [asPoolTensor('x', slowModelInput())]);
    await loopWaits();
    expect(pool.stats().models.find((m) => m.key === 'slow')!.running).toBe(1);
    const meanwhile = await pool.run('scalable', one());
    expect(meanwhile.worker).toBeGreaterThanOrEqual(0);
    expect(floats(meanwhile)).toEqual(scalableReference(1));
    expect((await slow).worker).toBeGreaterThanOrEqual(0);
    await windowPasses();
    expect((await pool.run('scalable', one())).worker).toBe(-1);
  });

  it('keeps a model over the idle ceiling, or with the idle ceiling 0, on the workers', async () => {
    // Enough lone requests for a model within the idle ceiling to get its session (the control case).
    const requests = RUNS_BEFORE_INLINE + IDLE_REQUESTS_BEFORE_SESSION + 4;
    for (const [maxRunMicros, idleMaxRunMicros, staysOnWorkers] of [
      [1, 0, true],
      [1, 2, true],
      [1, 10_000, false],
    ] as const) {
      const pool = await startPool(maxRunMicros, 0.9, 256, idleMaxRunMicros);
      await pool.loadModel('scalable', paths.scalable!, 1);
      for (let i = 0; i < requests; i++) {
        await loopWaits();
        expect(floats(await pool.run('scalable', one()))).toEqual(scalableReference(1));
      }
      if (staysOnWorkers) {
        const stats = pool.stats();
        expect(stats.inline.models).toEqual([]);
        expect(stats.runs).toEqual({ inline: 0, inline_idle: 0, worker: requests });
        expect(stats.inline.idleMaxRunMicros).toBe(idleMaxRunMicros);
      } else {
        await waitUntil(() => pool.stats().inline.models.length === 1, 'the idle-run session');
        await loopWaits();
        expect((await pool.run('scalable', one())).worker).toBe(-1);
      }
    }
  });

  it('sends a model back to the workers after one idle run over 4× the idle ceiling', async () => {
    const pool = await startPool(1, 0.9, 256, 10_000);
    await pool.loadModel('tiled', paths.tiled!, 1);
    await untilRunsInline(pool, 'tiled', () => tiled(1));
    await loopWaits();
    const slowRun = await pool.run('tiled', tiled(OVER_ANY_CEILING_ROWS));
    expect(slowRun.worker).toBe(-1);
    expect(sameFloats(floats(slowRun), tiledReference(OVER_ANY_CEILING_ROWS))).toBe(true);
    expect(pool.stats().inline.demotions).toBe(1);
    await loopWaits();
    const next = await pool.run('tiled', tiled(1));
    expect(next.worker).toBeGreaterThanOrEqual(0);
    expect(pool.stats().inline.models).toEqual([]);
  });
});

describe('InlineModels', () => {
  /** An InlineRunner that counts the inline sessions it is asked to create (and creates them). */
  class CountingRunner extends InlineRunner {
    loads = 0;
    override load(...args: Parameters<InlineRunner['load']>): Promise<boolean> {
      this.loads++;
      return super.load(...args);
    }
  }

  it('creates an idle-run session only after that many requests in a row found the agent idle', async () => {
    const runner = new CountingRunner();
    const entry = newModelEntry('scalable', paths.scalable!, []);
    let idle = true;
    const inline = new InlineModels({
      budget: { maxRunMicros: 1, eventLoopShare: 0.9, idleMaxRunMicros: 1000 },
      sessionOptions: () => ({}),
      models: new Map([[entry.key, entry]]),
      poolIdle: () => idle,
      runner,
    });
    try {
      for (let i = 0; i < RUNS_BEFORE_INLINE; i++) {
        entry.workerRuns++;
        inline.measured(entry, 0.5, []);
      }
      for (let i = 0; i < IDLE_REQUESTS_BEFORE_SESSION - 1; i++) inline.pathFor(entry, []);
      idle = false;
      inline.pathFor(entry, []); // one request finds the agent busy: the count starts again
      expect(inline.stats().idleBusy).toBe(1); // and shows in edgefleet_inference_inline_idle_busy_total
      idle = true;
      for (let i = 0; i < IDLE_REQUESTS_BEFORE_SESSION - 1; i++) inline.pathFor(entry, []);
      expect(runner.loads).toBe(0);
      inline.pathFor(entry, []);
      expect(runner.loads).toBe(1);
      await waitUntil(() => entry.inline === 'on', 'the inline session');
    } finally {
      await inline.close();
    }
  });

  it('never creates an inline session for a model over the idle ceiling, with the idle ceiling 0, or while the agent is never idle', async () => {
    // Runs of 0.5 ms: over the per-run ceiling (1 µs) always; over the idle ceiling, or under it (the control).
    for (const [idleMaxRunMicros, poolIdle, sessions] of [
      [0, true, 0],
      [1, true, 0],
      [1000, false, 0],
      [1000, true, 1],
    ] as const) {
      const runner = new CountingRunner();
      const entry = newModelEntry('scalable', paths.scalable!, []);
      const inline = new InlineModels({
        budget: { maxRunMicros: 1, eventLoopShare: 0.9, idleMaxRunMicros },
        sessionOptions: () => ({}),
        models: new Map([[entry.key, entry]]),
        poolIdle: () => poolIdle,
        runner,
      });
      try {
        // What the pool does after each worker run: no session yet for a model that may only make idle runs.
        for (let i = 0; i < RUNS_BEFORE_INLINE + 4; i++) {
          entry.workerRuns++;
          inline.measured(entry, 0.5, []);
        }
        expect(runner.loads).toBe(0);
        // What the pool does with each request: created once enough in a row found the agent idle.
        for (let i = 0; i < IDLE_REQUESTS_BEFORE_SESSION - 1; i++) inline.pathFor(entry, []);
        expect(runner.loads).toBe(0);
        for (let i = 0; i < 4; i++) inline.pathFor(entry, []);
        expect(runner.loads).toBe(sessions);
        if (sessions > 0) await waitUntil(() => entry.inline === 'on', 'the inline session');
        else expect(entry.inline).toBe('off');
      } finally {
        await inline.close();
      }
    }
  });
});

describe('InlineBudget', () => {
  it('admits runs up to its share of the window, and frees the share as time passes', () => {
    const budget = new InlineBudget({ maxRunMicros: 100, eventLoopShare: 0.1 }); // 10 ms of each 100 ms
    let admitted = 0;
    while (budget.admit(1, 1000)) admitted++;
    expect(admitted).toBe(10);
    expect(budget.stats(1000).overBudget).toBe(1);
    expect(budget.admit(1, 1000 + WINDOW_MS)).toBe(true); // decayed to 10 / e
    budget.settle(1, 0); // that run failed: nothing spent
    expect(budget.stats(1000 + WINDOW_MS).shareUsed).toBeCloseTo(0.1 / Math.E, 5);
  });

  it('admits an idle run only when the pool is idle and the event loop has waited since the last one', () => {
    const budget = new InlineBudget({ maxRunMicros: 100, eventLoopShare: 0.25, idleMaxRunMicros: 1000 });
    expect(budget.fastEnough(0.2)).toBe(false);
    expect(budget.fastEnoughWhenIdle(0.2)).toBe(true);
    expect(budget.fastEnoughWhenIdle(1.01)).toBe(false);
    expect(budget.admitIdle(true, () => 5, 0)).toBe(true);
    expect(budget.admitIdle(true, () => 5, 1)).toBe(false); // the loop did not wait in between
    expect(budget.admitIdle(true, () => 6, 2)).toBe(true);
    expect(budget.admitIdle(false, () => 7, 3)).toBe(false); // another request is in the pool
    expect(budget.admitIdle(true, () => 8, 3 + WINDOW_MS - 1)).toBe(false); // ... less than a window ago
    expect(budget.admitIdle(true, () => 9, 3 + WINDOW_MS)).toBe(true);
    expect(budget.stats(0)).toMatchObject({ idleBusy: 3, shareUsed: 0, idleMaxRunMicros: 1000 });
    expect(budget.tooSlow(0.41, 'inline_idle')).toBe(false);
    expect(budget.tooSlow(4.01, 'inline_idle')).toBe(true);
    const off = new InlineBudget({ maxRunMicros: 100, eventLoopShare: 0.25, idleMaxRunMicros: 0 });
    expect(off.fastEnoughWhenIdle(0.2)).toBe(false);
    expect(off.fastEnoughWhenIdle(0.1)).toBe(true); // fast enough for the share anyway
  });

  it('judges models against the per-run ceiling, and is off at 0', () => {
    const budget = new InlineBudget({ maxRunMicros: 100, eventLoopShare: 0.25 });
    expect(budget.fastEnough(0.1)).toBe(true);
    expect(budget.fastEnough(0.11)).toBe(false);
    expect(budget.tooSlow(0.4, 'inline')).toBe(false);
    expect(budget.tooSlow(0.41, 'inline')).toBe(true);
    expect(budget.stats(0).demotions).toBe(1);
    expect(new InlineBudget({ maxRunMicros: 0, eventLoopShare: 0.25 }).fastEnough(0)).toBe(false);
  });
});
