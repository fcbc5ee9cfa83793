/**
 * The inline path: which of the pool's models run on the agent's event loop, and running them there. It measures
 * every model's worker runs, creates an inline session (InlineRunner) for a model measured fast, answers the
 * pool's scheduler whether a request runs inline (within the event-loop share, or as an idle run: InlineBudget),
 * runs those, and sends a model that ran far over its ceiling back to the workers. Its per-model state lives in
 * the pool's ModelEntry (scheduling.ts), which the scheduler reads too (computeMs, running).
 */
import type { InferenceSession } from 'onnxruntime-node';
import { errorMessage, type InferenceError } from './errors.js';
import {
  InlineBudget,
  DEMOTION_MEMORY_MS,
  MAX_DEMOTIONS,
  MAX_PARK_MS,
  NEAR_CEILING_CREDIT_LIMITS,
  NEAR_CEILING_SHARE,
  PARK_MS,
  RUNS_BEFORE_INLINE,
  type InlineBudgetOptions,
  type InlinePath,
} from './inline-budget.js';
import { InlineRunner } from './inline-runner.js';
import type { PoolEvent, PoolStats } from './pool-types.js';
import { preciseNow, type OutputSegment, type WireInput } from './protocol.js';
import {
  foldMeasuredShapes,
  inlinePath,
  type ModelEntry,
  type RunResult,
  type ShapedInput,
} from './scheduling.js';
import type { PoolTensor } from './tensor-transfer.js';

/** Requests in a row that found the pool holding nothing else before an idle-run model gets its inline session. */
export const IDLE_REQUESTS_BEFORE_SESSION = 16;

export interface InlineModelsOptions {
  /** The budget; a `maxRunMicros` of 0 keeps every model on the workers. Validated here (RangeError). */
  budget: InlineBudgetOptions;
  /** ONNX Runtime's options for an inline session (the workers' own). */
  sessionOptions: () => InferenceSession.SessionOptions;
  /**
   * The pool's loaded models, by key: an inline session created for an entry no longer loaded under its key (it
   * was unloaded, or the pool closed, meanwhile) is released rather than kept.
   */
  models: ReadonlyMap<string, ModelEntry>;
  /**
   * No request is in the pool (waiting, or on a worker): asked only when an idle run may be, or while an idle-run
   * model waits for its session.
   */
  poolIdle: () => boolean;
  /** Told when a model's inline session cannot be created. */
  onEvent?: (event: PoolEvent) => void;
  /** Where inline sessions live and run; default: a runner of its own (tests pass one that counts its loads). */
  runner?: InlineRunner;
  /** This thread's CPU time in ms (InferencePoolOptions.threadCpuMs); default: the whole process's. */
  threadCpuMs?: () => number;
}

export class InlineModels {
  readonly #budget: InlineBudget;
  readonly #runner: InlineRunner;
  readonly #options: InlineModelsOptions;
  readonly #runs: Record<InlinePath, number> = { inline: 0, inline_idle: 0 };
  #nearCeilingPaid = 0;
  /**
   * Each model's session in the runner, under a key of its own per load: a model unloaded while its session was
   * being created, then loaded again under its name, can never reach (or release) the other's session.
   */
  readonly #sessionKeys = new WeakMap<ModelEntry, string>();
  #loads = 0;

  constructor(options: InlineModelsOptions) {
    this.#options = options;
    this.#budget = new InlineBudget(options.budget);
    this.#runner = options.runner ?? new InlineRunner();
  }

  /** Runs so far on each inline path. */
  get runs(): Readonly<Record<InlinePath, number>> {
    return this.#runs;
  }

  /**
   * Where a request with these inputs runs inline, if it does (see scheduling.ts's inlinePath); admitting it
   * charges the share.
   */
  pathFor(entry: ModelEntry, inputs: readonly ShapedInput[]): InlinePath | undefined {
    if (entry.inline === 'off') {
      if (!this.#awaitsIdleRequests(entry)) entry.idleRequestsInARow = 0;
      else {
        if (this.#options.poolIdle()) entry.idleRequestsInARow++;
        else {
          entry.idleRequestsInARow = 0;
          this.#budget.noteBusy(performance.now());
        }
        if (entry.idleRequestsInARow >= IDLE_REQUESTS_BEFORE_SESSION) void this.#load(entry);
      }
      return undefined;
    }
    if (parked(entry)) return undefined;
    return inlinePath(
      entry,
      inputs,
      this.#budget,
      this.#options.poolIdle,
      () => performance.eventLoopUtilization().idle,
    );
  }

  /**
   * Folds one worker run (its time, and its inputs' shapes if it was within the demotion limit) into the model's
   * measurements, and moves a fast model towards the inline path. A model that may only make idle runs gets its
   * inline session later, from pathFor, once requests show the agent idle.
   */
  measured(entry: ModelEntry, computeMs: number, inputs: readonly Pick<WireInput, 'name' | 'dims'>[]): void {
    if (this.#budget.withinDemotionLimit(computeMs)) foldMeasuredShapes(entry.measuredShapes, inputs);
    const averageMs = foldComputeMs(entry, computeMs);
    if (
      entry.inline === 'off' &&
      entry.workerRuns >= entry.inlineAfterRuns &&
      !parked(entry) &&
      this.#budget.fastEnough(averageMs)
    )
      void this.#load(entry);
  }

  /**
   * Whether the model, measured within the idle ceiling but not the inline one, waits for requests that find the
   * agent idle before its session is created: a session is one more copy of the model in memory, and creating it
   * holds the event loop, which an agent that is never idle should not pay for.
   */
  #awaitsIdleRequests(entry: ModelEntry): boolean {
    return (
      entry.workerRuns >= entry.inlineAfterRuns &&
      !parked(entry) &&
      entry.computeMs !== undefined &&
      !this.#budget.fastEnough(entry.computeMs) &&
      this.#budget.fastEnoughWhenIdle(entry.computeMs)
    );
  }

  /** Runs at once, on this thread (InlineRunner.run is synchronous); the promise is already settled. */
  run(
    entry: ModelEntry,
    inputs: readonly PoolTensor[],
    path: InlinePath,
    outputSegments: readonly OutputSegment[] | undefined,
  ): Promise<RunResult> {
    // Idle runs are not charged to the event-loop share (see InlineBudget): nothing to settle for them.
    const expectedMs = entry.computeMs ?? 0;
    const charged = path === 'inline';
    const submittedAt = preciseNow();
    const cpuMs = this.#options.threadCpuMs ?? processCpuMs;
    const cpuBefore = cpuMs();
    let computeMs: number;
    try {
      const run = this.#runner.run(this.#sessionKeys.get(entry)!, inputs, outputSegments);
      computeMs = run.computeMs;
      this.#runs[path]++;
      if (charged) this.#budget.settle(expectedMs, computeMs);
      const workedMs = Math.min(computeMs, cpuMs() - cpuBefore);
      foldComputeMs(entry, workedMs);
      this.#judge(entry, workedMs, path);
      const queueMs = Math.max(0, preciseNow() - submittedAt - computeMs);
      return Promise.resolve({ outputs: run.outputs, queueMs, computeMs, worker: -1, batchSize: 1 });
    } catch (error) {
      // A run that fails held the event loop as long as it ran: charged and judged like any other, so that a
      // request that computes for long and then fails cannot come back inline every time.
      const spentMs = preciseNow() - submittedAt;
      if (charged) this.#budget.settle(expectedMs, spentMs);
      this.#judge(entry, Math.min(spentMs, cpuMs() - cpuBefore), path);
      return Promise.reject(error as InferenceError);
    }
  }

  /**
   * After each inline run, by the time it took (`runMs`): within 4× its ceiling it earns the model near-ceiling
   * credit (on the share-charged path); over that it is paid for from the credit if it is a near-ceiling run the
   * credit covers (see NEAR_CEILING_SHARE), and is a demotion otherwise.
   */
  #judge(entry: ModelEntry, runMs: number, path: InlinePath): void {
    const credit = (entry.nearCeilingCredit ??= { creditMs: this.#nearCeilingCreditCapMs, earningMs: 0 });
    if (!this.#budget.tooSlow(runMs, path)) {
      if (path === 'inline') credit.earningMs += runMs;
      return;
    }
    credit.creditMs = Math.min(
      this.#nearCeilingCreditCapMs,
      credit.creditMs + NEAR_CEILING_SHARE * credit.earningMs,
    );
    credit.earningMs = 0;
    // Not far over, and covered by the model's credit (see NEAR_CEILING_SHARE): measured again on the workers.
    if (this.#budget.withinDemotionLimit(runMs) && credit.creditMs >= runMs) {
      credit.creditMs -= runMs;
      this.#nearCeilingPaid++;
      entry.inlineAfterRuns = Math.max(entry.inlineAfterRuns, entry.workerRuns + RUNS_BEFORE_INLINE);
      return;
    }
    this.#demote(entry);
  }

  get #nearCeilingCreditCapMs(): number {
    return NEAR_CEILING_CREDIT_LIMITS * this.#budget.demotionLimitMs;
  }

  /**
   * One run far over the ceiling (a misjudged model, inputs that make it slow, or a thread preempted mid-run): back
   * to the workers, which measure it again before it may return, twice as long after each demotion; from
   * MAX_DEMOTIONS on (within DEMOTION_MEMORY_MS of each other), parked there for a while, longer each time.
   */
  #demote(entry: ModelEntry): void {
    const now = performance.now();
    // Counted from the end of the last park, if later: a park is no time without demotions.
    const quietSince = Math.max(entry.lastDemotionAt ?? -Infinity, entry.parkedUntil ?? -Infinity);
    if (now - quietSince > DEMOTION_MEMORY_MS) entry.demotions = 0;
    entry.demotions++;
    entry.lastDemotionAt = now;
    entry.inlineAfterRuns =
      entry.workerRuns + RUNS_BEFORE_INLINE * 2 ** Math.min(entry.demotions - 1, MAX_DEMOTIONS - 1);
    if (entry.demotions < MAX_DEMOTIONS) return;
    const parkMs = Math.min(MAX_PARK_MS, PARK_MS * 2 ** (entry.demotions - MAX_DEMOTIONS));
    // Its inline session stays (creating it again would hold the event loop once more): it is only not used.
    entry.parkedUntil = now + parkMs;
    this.#options.onEvent?.({ type: 'inline-parked', key: entry.key, demotions: entry.demotions, parkMs });
  }

  /** Releases the model's inline session, if it has one (the model is being unloaded). */
  async release(entry: ModelEntry): Promise<void> {
    entry.inline = 'off';
    const sessionKey = this.#sessionKeys.get(entry);
    this.#sessionKeys.delete(entry);
    if (sessionKey !== undefined) await this.#runner.release(sessionKey);
  }

  /** The budget's stats, and the pool's models running inline now. */
  stats(): PoolStats['inline'] {
    return {
      ...this.#budget.stats(performance.now()),
      nearCeilingPaid: this.#nearCeilingPaid,
      models: [...this.#options.models.values()]
        .filter(
          (entry) =>
            entry.inline === 'on' &&
            entry.workerRuns >= entry.inlineAfterRuns &&
            !parked(entry) &&
            this.#budget.fastEnoughWhenIdle(entry.computeMs ?? Infinity),
        )
        .map((entry) => ({
          key: entry.key,
          computeMicros: Math.round((entry.computeMs ?? 0) * 1000),
          path: this.#budget.fastEnough(entry.computeMs ?? Infinity) ? 'inline' : 'inline_idle',
        })),
    };
  }

  async close(): Promise<void> {
    await this.#runner.close();
  }

  async #load(entry: ModelEntry): Promise<void> {
    entry.inline = 'loading';
    const sessionKey = `${entry.key}#${++this.#loads}`;
    this.#sessionKeys.set(entry, sessionKey);
    let loaded = false;
    try {
      loaded = await this.#runner.load(sessionKey, entry.model, this.#options.sessionOptions());
    } catch (error) {
      // The workers hold working sessions of it; this model stays on them, and the operator is told why (e.g. an
      // onnxruntime-node without the native binding the inline path uses, or a session option it refuses).
      this.#options.onEvent?.({
        type: 'inline-unavailable',
        key: entry.key,
        reason: errorMessage(error).slice(0, 500),
      });
    }
    if (this.#options.models.get(entry.key) !== entry) {
      // Unloaded (or the pool closed, which clears its models) while its inline session was being created:
      // nothing may keep that session.
      if (loaded) await this.#runner.release(sessionKey);
      return;
    }
    entry.inline = loaded ? 'on' : 'unfit';
  }
}

/**
 * The CPU time the whole process has spent, in ms (process.cpuUsage): what an inline run is judged by without a
 * per-thread clock (see InferencePoolOptions.threadCpuMs). An inline run is judged, and its model measured, by the
 * lesser of its wall time and the CPU spent meanwhile: a thread preempted mid-run on a busy machine takes long
 * without computing, which is not the model's cost; a run that computes long costs its thread as much CPU.
 */
function processCpuMs(): number {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1000;
}

/** Whether the model is parked on the workers after its demotions (see MAX_DEMOTIONS). */
function parked(entry: ModelEntry): boolean {
  return entry.parkedUntil !== undefined && performance.now() < entry.parkedUntil;
}

/** Folds `runMs` into the moving average of the model's run time; returns the new average. */
function foldComputeMs(entry: ModelEntry, runMs: number): number {
  entry.computeMs = entry.computeMs === undefined ? runMs : 0.8 * entry.computeMs + 0.2 * runMs;
  return entry.computeMs;
}
