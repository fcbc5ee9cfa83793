/**
 * The explicit budget for running fast models on the agent's event loop (the inline path). ONNX Runtime's run
 * blocks the thread it runs on, so every inline run delays the sockets by its run time. Two limits bound that:
 * a per-run ceiling (a model runs inline only while its measured runs average at most `maxRunMicros`, and one run
 * over `DEMOTE_FACTOR` times the ceiling sends it back to the workers at once), and a share of event-loop time
 * (inline runs may take at most `eventLoopShare` of the last ~`WINDOW_MS`; past that, requests go to the
 * workers until the share has decayed). So a slow or misjudged model can never starve the sockets.
 *
 * A second, higher ceiling (`idleMaxRunMicros`) lets a model too slow for the first run inline only while the
 * agent has nothing else to do (idle runs): the pool holds no other request (none waiting or on a worker; an inline
 * run is synchronous, so none is ever in flight when this is asked), none has for the last ~WINDOW_MS, and the event loop has waited for I/O, with nothing ready, since the
 * previous idle run. A lone client then skips the hand-over to a worker; the moment a second request is in flight,
 * or anything became ready during an idle run, requests go to the workers, which run in parallel. The ~WINDOW_MS
 * hold after a request found another in flight keeps idle runs out of a busy agent's short lulls: with 8 gRPC
 * clients on 2 cores the loop still catches up now and then, and an idle run there delays the requests arriving
 * during it (a few % of throughput lost, measured). Idle runs are not charged to the share: a lone
 * client of a ~250 µs model keeps the loop half busy with them, which would spend the share and lock the fast
 * models out for the next ~WINDOW_MS when a second client arrives. The sockets are protected by the wait instead:
 * idle runs never run back to back while anything else is ready, so each delays other work by one run at most
 * (and one run over DEMOTE_FACTOR times the idle ceiling sends its model back to the workers).
 */

export interface InlineBudgetOptions {
  /** Per-run ceiling in microseconds; 0 turns the inline path off. */
  maxRunMicros: number;
  /** Share of event-loop time inline runs may take, 0 to 0.9. */
  eventLoopShare: number;
  /** Per-run ceiling in microseconds for idle runs (see above); 0 or absent turns them off. */
  idleMaxRunMicros?: number;
}

/** The event-loop time the share is measured over (an exponentially decaying window). */
export const WINDOW_MS = 100;
/** One inline run longer than this many times the ceiling sends its model back to the workers. */
export const DEMOTE_FACTOR = 4;
/** Worker runs measured before a model may move inline; also how many a demoted model runs on workers again. */
export const RUNS_BEFORE_INLINE = 16;
/**
 * Demotions after which a model is parked on the workers (its inline session kept, unused) for PARK_MS, twice as
 * long for each further one, up to MAX_PARK_MS: a model whose cost depends on its inputs' values could otherwise
 * hold the event loop once per cycle of re-measuring. Each demotion before that doubles the worker runs it must
 * make again first. Not for good: a model that runs fast again comes back once the park is over and its worker runs
 * are measured again. The count starts afresh only after DEMOTION_MEMORY_MS without a demotion or a park. A shorter
 * run its model's credit covers does not count (see NEAR_CEILING_SHARE).
 */
export const MAX_DEMOTIONS = 3;
/**
 * A run over DEMOTE_FACTOR × its ceiling but within `withinDemotionLimit` (0.8–4 ms with the defaults: a near-ceiling
 * run) is paid for from its model's credit while that lasts, instead of counting as a demotion: a model near its
 * ceiling has one now and then from a cold cache (a 588 KiB model measured near 200 µs had three within seconds,
 * 0.8–1.4 ms each, and was parked for minutes). Such a run sends its model back to the workers for
 * RUNS_BEFORE_INLINE runs. The credit starts full, at NEAR_CEILING_CREDIT_LIMITS × the demotion limit (16 ms with
 * the defaults), and grows by NEAR_CEILING_SHARE of the time the model's other inline runs take (those admitted
 * within the event loop's share), up to that; a near-ceiling run it does not cover is a demotion like any other
 * (three within 10 minutes park the model). So the near-ceiling runs the credit pays for take at most the full
 * credit plus a twentieth of the model's other inline time (per model and load, judged as all inline runs are);
 * each run after that is a demotion.
 */
export const NEAR_CEILING_SHARE = 0.05;
/** See NEAR_CEILING_SHARE. */
export const NEAR_CEILING_CREDIT_LIMITS = 4;
export const PARK_MS = 60_000;
export const MAX_PARK_MS = 3_600_000;
/** A demotion this long after the model's last one, and after its last park ended, starts counting afresh. */
export const DEMOTION_MEMORY_MS = 600_000;

export const DEFAULT_INLINE_BUDGET: Required<InlineBudgetOptions> = {
  maxRunMicros: 200,
  eventLoopShare: 0.25,
  idleMaxRunMicros: 1000,
};

/** Where an inline run was admitted: within the event-loop share, or as an idle run. */
export type InlinePath = 'inline' | 'inline_idle';

export function validateInlineBudget(options: InlineBudgetOptions): void {
  const { maxRunMicros, eventLoopShare, idleMaxRunMicros = 0 } = options;
  for (const [name, micros] of [
    ['maxRunMicros', maxRunMicros],
    ['idleMaxRunMicros', idleMaxRunMicros],
  ] as const)
    if (!Number.isInteger(micros) || micros < 0 || micros > 10_000)
      throw new RangeError(
        `inline ${name} must be a whole number of microseconds from 0 to 10000, got ${micros}`,
      );
  if (!(eventLoopShare >= 0 && eventLoopShare <= 0.9))
    throw new RangeError(`inline eventLoopShare must be from 0 to 0.9, got ${eventLoopShare}`);
}

export interface InlineBudgetStats {
  maxRunMicros: number;
  eventLoopShare: number;
  /** Inline run time in the current window, as a share of it. */
  shareUsed: number;
  /** Requests that would have run inline but went to the workers because the share was spent. */
  overBudget: number;
  /** Models sent back to the workers by a run over the ceiling. */
  demotions: number;
  /** The idle runs' per-run ceiling; 0 while they are off (also when the inline path is, or this is not above its ceiling). */
  idleMaxRunMicros: number;
  /**
   * Requests of a model measured for idle runs that went to the workers because the pool held another request
   * (or one had, in the last WINDOW_MS) or the event loop had not waited for I/O since the last idle run.
   */
  idleBusy: number;
}

export class InlineBudget {
  readonly #ceilingMs: number;
  readonly #share: number;
  readonly #idleCeilingMs: number;
  /** The event loop's idle time (performance.eventLoopUtilization().idle) when the last idle run was admitted. */
  #loopIdleMark = -1;
  /** When a request of a model measured for idle runs last found another request in the pool. */
  #concurrentAt = -Infinity;
  #idleBusy = 0;
  /** Inline run time spent, decayed with WINDOW_MS. */
  #spentMs = 0;
  #spentAt = 0;
  #overBudget = 0;
  #demotions = 0;

  constructor(options: InlineBudgetOptions) {
    validateInlineBudget(options);
    this.#ceilingMs = options.maxRunMicros / 1000;
    this.#share = options.eventLoopShare;
    this.#idleCeilingMs = (options.idleMaxRunMicros ?? 0) / 1000;
  }

  get enabled(): boolean {
    return this.#ceilingMs > 0 && this.#share > 0;
  }

  /** Whether a model whose runs average `computeMs` is fast enough to run inline. */
  fastEnough(computeMs: number): boolean {
    return this.enabled && computeMs <= this.#ceilingMs;
  }

  /** Whether a model whose runs average `computeMs` may run inline at least while the agent is otherwise idle. */
  fastEnoughWhenIdle(computeMs: number): boolean {
    return this.fastEnough(computeMs) || (this.enabled && computeMs <= this.#idleCeilingMs);
  }

  /**
   * Whether a run this long, on a worker, was within what an inline run may take before it demotes its model (on the
   * looser of the two paths): only the shapes of such runs count as measured, so a shape slow on a worker never runs
   * inline on the strength of the model's average (ModelEntry.measuredShapes).
   */
  withinDemotionLimit(runMs: number): boolean {
    return this.enabled && runMs <= this.demotionLimitMs;
  }

  /** DEMOTE_FACTOR × the looser of the two ceilings (see withinDemotionLimit). */
  get demotionLimitMs(): number {
    return Math.max(this.#ceilingMs, this.#idleCeilingMs) * DEMOTE_FACTOR;
  }

  /** Whether one run this long, admitted on `path`, sends its model back to the workers. */
  tooSlow(runMs: number, path: InlinePath): boolean {
    const ceilingMs = path === 'inline_idle' ? this.#idleCeilingMs : this.#ceilingMs;
    if (runMs <= ceilingMs * DEMOTE_FACTOR) return false;
    this.#demotions++;
    return true;
  }

  /**
   * Whether a run expected to take `expectedMs` fits the share now; if so it is charged at once (runs admitted
   * in one turn of the event loop all count), and `settle` corrects the charge once the run's time is known.
   */
  admit(expectedMs: number, now: number): boolean {
    this.#decay(now);
    if (this.#spentMs + expectedMs > this.#share * WINDOW_MS) {
      this.#overBudget++;
      return false;
    }
    this.#spentMs += expectedMs;
    return true;
  }

  /**
   * Whether an idle run may start: `poolIdle` (no other request in the pool), no request found another in the
   * pool in the last WINDOW_MS, and the event loop has waited for I/O since the last idle run (its idle time,
   * `loopIdleMs()`, asked only then, grew: libuv counts only time it actually blocked, not a poll that found
   * events ready). Not charged to the share (see the top of this file).
   */
  admitIdle(poolIdle: boolean, loopIdleMs: () => number, now: number): boolean {
    if (!poolIdle) this.#concurrentAt = now;
    const loopIdle = poolIdle && now - this.#concurrentAt >= WINDOW_MS ? loopIdleMs() : -1;
    if (loopIdle <= this.#loopIdleMark) {
      this.#idleBusy++;
      return false;
    }
    this.#loopIdleMark = loopIdle;
    return true;
  }

  /**
   * A request of a model measured for idle runs, still waiting for its inline session, found the pool busy: counted
   * with the refused idle runs, so that an operator can see why such a model never gets its session.
   */
  noteBusy(now: number): void {
    this.#concurrentAt = now;
    this.#idleBusy++;
  }

  settle(expectedMs: number, actualMs: number): void {
    this.#spentMs = Math.max(0, this.#spentMs + actualMs - expectedMs);
  }

  stats(now: number): InlineBudgetStats {
    this.#decay(now);
    return {
      maxRunMicros: this.#ceilingMs * 1000,
      eventLoopShare: this.#share,
      shareUsed: this.#spentMs / WINDOW_MS,
      overBudget: this.#overBudget,
      demotions: this.#demotions,
      idleMaxRunMicros:
        this.enabled && this.#idleCeilingMs > this.#ceilingMs ? this.#idleCeilingMs * 1000 : 0,
      idleBusy: this.#idleBusy,
    };
  }

  #decay(now: number): void {
    if (now > this.#spentAt) {
      this.#spentMs *= Math.exp(-(now - this.#spentAt) / WINDOW_MS);
      this.#spentAt = now;
    }
  }
}
