import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TEST_MODELS, writeTestModel } from '@edgefleet/core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_ORT_SESSION_CONFIG, toOrtSessionOptions } from '../../src/inference/index.js';
import { InferenceError } from '../../src/inference/errors.js';
import {
  DEMOTE_FACTOR,
  NEAR_CEILING_CREDIT_LIMITS,
  NEAR_CEILING_SHARE,
  RUNS_BEFORE_INLINE,
  type InlinePath,
} from '../../src/inference/inline-budget.js';
import { InlineModels } from '../../src/inference/inline-models.js';
import { InlineRunner } from '../../src/inference/inline-runner.js';
import { newModelEntry, type ModelEntry } from '../../src/inference/scheduling.js';
import { asPoolTensor } from '../support/pool-models.js';
import { waitUntil } from '../support/wait-until.js';

// The near-ceiling credit (inline-budget.ts, NEAR_CEILING_SHARE) counted exactly: the tiny model runs for real on
// the event loop, and each run is made to take a chosen time, on the wall clock (the run's computeMs, or a wait for a
// failed run) and on the thread CPU clock InlineModels judges it by, which this test keeps.

// Ceilings 1 ms (inline) and 10 ms (idle runs): a near-ceiling run takes 4–40 ms; the credit is 160 ms at most.
const BUDGET = { maxRunMicros: 1000, eventLoopShare: 0.9, idleMaxRunMicros: 10_000 };
const DEMOTION_LIMIT_MS = DEMOTE_FACTOR * 10;
const CREDIT_MS = NEAR_CEILING_CREDIT_LIMITS * DEMOTION_LIMIT_MS;

/** A runner whose next run takes `nextMs` of wall and CPU time (and fails, with `fail`), on `clock`. */
class TimedRunner extends InlineRunner {
  nextMs = 0;
  fail = false;
  constructor(private readonly clock: { cpuMs: number }) {
    super();
  }
  override run(...args: Parameters<InlineRunner['run']>): ReturnType<InlineRunner['run']> {
    const result = super.run(...args);
    this.clock.cpuMs += this.nextMs;
    if (this.fail) {
      // A failed run is judged by the wall time it held the loop: spend it.
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, this.nextMs);
      throw new InferenceError('run-failed', 'failed on purpose');
    }
    return { ...result, computeMs: result.computeMs + this.nextMs };
  }
}

let dir: string;
let tinyPath: string;
let inline: InlineModels | undefined;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'agent-inline-credit-'));
  tinyPath = await writeTestModel('tiny', dir);
});
afterEach(async () => {
  await inline?.close();
  inline = undefined;
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** The tiny model inline, and a function that runs it once for `ms` on `path` (failing, with `fail`). */
async function inlineModel() {
  const clock = { cpuMs: 0 };
  const runner = new TimedRunner(clock);
  const entry: ModelEntry = newModelEntry('tiny', tinyPath, []);
  inline = new InlineModels({
    budget: BUDGET,
    sessionOptions: () => toOrtSessionOptions(DEFAULT_ORT_SESSION_CONFIG),
    models: new Map([[entry.key, entry]]),
    poolIdle: () => true,
    runner,
    threadCpuMs: () => clock.cpuMs,
  });
  for (let i = 0; i < RUNS_BEFORE_INLINE; i++) {
    entry.workerRuns++;
    inline.measured(entry, 0.05, [{ name: 'x', dims: [1, 16] }]);
  }
  await waitUntil(() => entry.inline === 'on', 'the inline session');
  const input = [asPoolTensor('x', TEST_MODELS.tiny.sampleInputs().x!)];
  const models = inline;
  const run = async (ms: number, path: InlinePath = 'inline', fail = false) => {
    runner.nextMs = ms;
    runner.fail = fail;
    await models.run(entry, input, path, undefined).catch((error: unknown) => {
      if (!fail) throw error;
    });
  };
  /** Near-ceiling runs of `ms` paid for before one is a demotion. */
  const paidRuns = async (ms: number) => {
    const demotions = entry.demotions;
    let paid = 0;
    for (; paid < 1000; paid++) {
      await run(ms);
      if (entry.demotions > demotions) return paid;
    }
    throw new Error('no demotion after 1000 near-ceiling runs');
  };
  return { entry, run, paidRuns, paidTotal: () => models.stats().nearCeilingPaid };
}

describe('the near-ceiling credit', () => {
  it('starts full: pays for CREDIT / run time runs, sending the model back for RUNS_BEFORE_INLINE worker runs each, then demotes', async () => {
    const { entry, paidRuns, paidTotal, run } = await inlineModel();
    await run(12);
    expect(entry.demotions).toBe(0);
    expect(entry.inlineAfterRuns).toBe(entry.workerRuns + RUNS_BEFORE_INLINE);
    expect(1 + (await paidRuns(12))).toBe(Math.floor(CREDIT_MS / 12));
    expect(entry.demotions).toBe(1);
    expect(paidTotal()).toBe(Math.floor(CREDIT_MS / 12));
  });

  it('grows by a twentieth of the time share-charged inline runs take, and by nothing for idle runs', async () => {
    const { paidRuns, run } = await inlineModel();
    expect(await paidRuns(12)).toBe(Math.floor(CREDIT_MS / 12)); // spent (4 ms left), then one demotion
    // 1 / NEAR_CEILING_SHARE × 12 ms of idle runs (not charged to the share): nothing earned.
    for (let i = 0; i < 12 / NEAR_CEILING_SHARE / 2; i++) await run(2, 'inline_idle');
    expect(await paidRuns(12)).toBe(0);
    // As much in share-charged runs, failed ones among them: one more 12 ms run paid for, not two.
    for (let i = 0; i < 12 / NEAR_CEILING_SHARE / 2; i++) await run(2, 'inline', i % 10 === 0);
    expect(await paidRuns(12)).toBe(1);
  });

  it('never holds more than NEAR_CEILING_CREDIT_LIMITS × the demotion limit, however long the model ran inline', async () => {
    const { paidRuns, run } = await inlineModel();
    for (let i = 0; i < 5000; i++) await run(2);
    expect(await paidRuns(12)).toBe(Math.floor(CREDIT_MS / 12));
  });

  it('pays for no run over the demotion limit, which leaves the credit as it was; a failed near-ceiling run is paid for as any', async () => {
    const { entry, paidRuns, run } = await inlineModel();
    await run(DEMOTION_LIMIT_MS + 10);
    expect(entry.demotions).toBe(1);
    await run(12, 'inline', true);
    expect(entry.demotions).toBe(1);
    expect(1 + (await paidRuns(12))).toBe(Math.floor(CREDIT_MS / 12));
  });
});
