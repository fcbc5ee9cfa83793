/**
 * The explicit budget for running fast models on the agent's event loop (the inline path). ONNX Runtime's run
 * blocks the thread it runs on, so every inline run delays the sockets by its run time. Two limits bound that:
 * a per-run ceiling (a model runs inline only while its measured runs average at most `maxRunMicros`, and one run
 * over `DEMOTE_FACTOR` times the ceiling sends it back to the workers at once), and a share of event-loop time
 * (inline runs may take at most `eventLoopShare` of the last ~`WINDOW_MS`; past that, requests go to the
 * workers until the share has decayed). So a slow or misjudged model can never starve the sockets.
 */

export interface InlineBudgetOptions {
  /** Per-run ceiling in microseconds; 0 turns the inline path off. */
  maxRunMicros: number;
  /** Share of event-loop time inline runs may take, 0 to 0.9. */
  eventLoopShare: number;
}

/** The event-loop time the share is measured over (an exponentially decaying window). */
export const WINDOW_MS = 100;
/** One inline run longer than this many times the ceiling sends its model back to the workers. */
export const DEMOTE_FACTOR = 4;
/** Worker runs measured before a model may move inline; also how many a demoted model runs on workers again. */
export const RUNS_BEFORE_INLINE = 16;

export const DEFAULT_INLINE_BUDGET: InlineBudgetOptions = { maxRunMicros: 200, eventLoopShare: 0.25 };

export function validateInlineBudget(options: InlineBudgetOptions): void {
  const { maxRunMicros, eventLoopShare } = options;
  if (!Number.isInteger(maxRunMicros) || maxRunMicros < 0 || maxRunMicros > 10_000)
    throw new RangeError(
      `inline maxRunMicros must be a whole number of microseconds from 0 to 10000, got ${maxRunMicros}`,
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
}

export class InlineBudget {
  readonly #ceilingMs: number;
  readonly #share: number;
  /** Inline run time spent, decayed with WINDOW_MS. */
  #spentMs = 0;
  #spentAt = 0;
  #overBudget = 0;
  #demotions = 0;

  constructor(options: InlineBudgetOptions) {
    validateInlineBudget(options);
    this.#ceilingMs = options.maxRunMicros / 1000;
    this.#share = options.eventLoopShare;
  }

  get enabled(): boolean {
    return this.#ceilingMs > 0 && this.#share > 0;
  }

  /** Whether a model whose runs average `computeMs` is fast enough to run inline. */
  fastEnough(computeMs: number): boolean {
    return this.enabled && computeMs <= this.#ceilingMs;
  }

  /** Whether one run this long sends its model back to the workers. */
  tooSlow(runMs: number): boolean {
    if (runMs <= this.#ceilingMs * DEMOTE_FACTOR) return false;
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
    };
  }

  #decay(now: number): void {
    if (now > this.#spentAt) {
      this.#spentMs *= Math.exp(-(now - this.#spentAt) / WINDOW_MS);
      this.#spentAt = now;
    }
  }
}
