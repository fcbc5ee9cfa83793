import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TEST_MODELS, writeTestModel } from '@edgefleet/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_ORT_SESSION_CONFIG, toOrtSessionOptions } from '../../src/inference/index.js';
import { RUNS_BEFORE_INLINE } from '../../src/inference/inline-budget.js';
import { InlineModels } from '../../src/inference/inline-models.js';
import { InlineRunner } from '../../src/inference/inline-runner.js';
import { newModelEntry } from '../../src/inference/scheduling.js';
import { asPoolTensor } from '../support/pool-models.js';
import { waitUntil } from '../support/wait-until.js';

// A file of its own: the check reads the CPU time of the whole process, which other tests' pools (their worker
// threads) would add to.

let dir: string;
let tinyPath: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'agent-inline-preempted-'));
  tinyPath = await writeTestModel('tiny', dir);
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('an inline run that took long without computing', () => {
  /**
   * A runner whose next run's thread is off the CPU for `stallMs` inside the run, as a preempted thread on a busy
   * machine is: the wall time ONNX Runtime's run took grows by that, the process's CPU time does not.
   */
  class PreemptedRunner extends InlineRunner {
    stallMs = 0;
    override run(...args: Parameters<InlineRunner['run']>): ReturnType<InlineRunner['run']> {
      const stallMs = this.stallMs;
      this.stallMs = 0;
      const result = super.run(...args);
      if (stallMs === 0) return result;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, stallMs);
      return { ...result, computeMs: result.computeMs + stallMs };
    }
  }

  it('does not demote its model: the run is judged by the CPU the process spent, when that is less', async () => {
    const runner = new PreemptedRunner();
    const entry = newModelEntry('tiny', tinyPath, []);
    const inline = new InlineModels({
      budget: { maxRunMicros: 10_000, eventLoopShare: 0.9, idleMaxRunMicros: 0 },
      // One thread, as the agent's sessions: no pool of ONNX Runtime threads spinning on the CPU meanwhile.
      sessionOptions: () => toOrtSessionOptions(DEFAULT_ORT_SESSION_CONFIG),
      models: new Map([[entry.key, entry]]),
      poolIdle: () => true,
      runner,
    });
    try {
      const input = [asPoolTensor('x', TEST_MODELS.tiny.sampleInputs().x!)];
      for (let i = 0; i < RUNS_BEFORE_INLINE; i++) {
        entry.workerRuns++;
        inline.measured(entry, 0.05, [{ name: 'x', dims: [1, 16] }]);
      }
      await waitUntil(() => entry.inline === 'on', 'the inline session');
      expect(inline.pathFor(entry, input)).toBe('inline');
      for (let i = 0; i < 20; i++) await inline.run(entry, input, 'inline', undefined);
      // 200 ms off the CPU in a run: five times the demotion limit (4 × 10 ms) in wall time, while the process's
      // other threads (V8's compilers and collector) spend far less than the limit.
      runner.stallMs = 200;
      const stalled = await inline.run(entry, input, 'inline', undefined);
      expect(stalled.computeMs).toBeGreaterThanOrEqual(200);
      expect(inline.stats().demotions).toBe(0);
      expect(entry.computeMs).toBeLessThan(1);
      expect(inline.pathFor(entry, input)).toBe('inline');
    } finally {
      await inline.close();
    }
  });
});
