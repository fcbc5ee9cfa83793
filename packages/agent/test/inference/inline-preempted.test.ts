import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TEST_MODELS, writeTestModel } from '@edgefleet/core';
import { Worker } from 'node:worker_threads';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_ORT_SESSION_CONFIG, toOrtSessionOptions } from '../../src/inference/index.js';
import { RUNS_BEFORE_INLINE } from '../../src/inference/inline-budget.js';
import { InlineModels } from '../../src/inference/inline-models.js';
import { InlineRunner } from '../../src/inference/inline-runner.js';
import { newModelEntry } from '../../src/inference/scheduling.js';
import { loadSysvShmAddon } from '../../src/shm/index.js';
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
   * A runner whose next run's thread is off the CPU inside the run, as a preempted thread on a busy machine is:
   * for at least `minMs`, and until the process's other threads have spent `othersCpuMs` of CPU meanwhile (this
   * one spends next to none: it sleeps, waking every few ms to look). The wall time ONNX Runtime's run took grows
   * by the stall, this thread's CPU time does not. Waiting for the CPU rather than for a fixed time: on a loaded
   * machine another thread may get little of it in any given time.
   */
  class PreemptedRunner extends InlineRunner {
    stall: { minMs: number; othersCpuMs: number } | undefined;
    override run(...args: Parameters<InlineRunner['run']>): ReturnType<InlineRunner['run']> {
      const stall = this.stall;
      this.stall = undefined;
      const result = super.run(...args);
      if (stall === undefined) return result;
      const cell = new Int32Array(new SharedArrayBuffer(4));
      const startedAt = performance.now();
      const cpuBefore = processCpuMs();
      while (performance.now() - startedAt < stall.minMs || processCpuMs() - cpuBefore < stall.othersCpuMs)
        Atomics.wait(cell, 0, 0, 5);
      return { ...result, computeMs: result.computeMs + (performance.now() - startedAt) };
    }
  }

  const processCpuMs = () => {
    const { user, system } = process.cpuUsage();
    return (user + system) / 1000;
  };

  /**
   * Runs the tiny model inline 20 times, then once with its thread off the CPU for 200 ms (five times the demotion
   * limit, 4 × 10 ms), optionally while another thread of the process computes (until it has spent 100 ms of CPU
   * meanwhile, over the limit too); returns the demotions.
   */
  async function demotionsAfterAStall(options: { threadCpuMs?: () => number; busyThread: boolean }) {
    const runner = new PreemptedRunner();
    const entry = newModelEntry('tiny', tinyPath, []);
    const inline = new InlineModels({
      budget: { maxRunMicros: 10_000, eventLoopShare: 0.9, idleMaxRunMicros: 0 },
      // One thread, as the agent's sessions: no pool of ONNX Runtime threads spinning on the CPU meanwhile.
      sessionOptions: () => toOrtSessionOptions(DEFAULT_ORT_SESSION_CONFIG),
      models: new Map([[entry.key, entry]]),
      poolIdle: () => true,
      runner,
      ...(options.threadCpuMs && { threadCpuMs: options.threadCpuMs }),
    });
    // Computes until terminated.
    const busy = options.busyThread ? new Worker('for (;;);', { eval: true }) : undefined;
    try {
      const input = [asPoolTensor('x', TEST_MODELS.tiny.sampleInputs().x!)];
      for (let i = 0; i < RUNS_BEFORE_INLINE; i++) {
        entry.workerRuns++;
        inline.measured(entry, 0.05, [{ name: 'x', dims: [1, 16] }]);
      }
      await waitUntil(() => entry.inline === 'on', 'the inline session');
      expect(inline.pathFor(entry, input)).toBe('inline');
      for (let i = 0; i < 20; i++) await inline.run(entry, input, 'inline', undefined);
      if (busy) await new Promise((resolve) => busy.once('online', resolve));
      runner.stall = { minMs: 200, othersCpuMs: busy ? 100 : 0 };
      const stalled = await inline.run(entry, input, 'inline', undefined);
      expect(stalled.computeMs).toBeGreaterThanOrEqual(200);
      return inline.stats().demotions;
    } finally {
      await busy?.terminate();
      await inline.close();
    }
  }

  it('does not demote its model when the process spent less CPU than the limit meanwhile', async () => {
    expect(await demotionsAfterAStall({ busyThread: false })).toBe(0);
  });

  it('does not demote it while other threads compute either, with the thread CPU clock the agent passes', async () => {
    const addon = loadSysvShmAddon();
    const threadCpuMs = () => addon.threadCpuNanos!() / 1e6;
    expect(await demotionsAfterAStall({ threadCpuMs, busyThread: true })).toBe(0);
    // The process's clock counts the other thread's CPU: the same stall demotes.
    expect(await demotionsAfterAStall({ busyThread: true })).toBe(1);
  });
});
