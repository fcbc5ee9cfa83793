import { LineLimiter } from '@edgefleet/core';
import type { ModelCounters, ModelCountersRepository } from './model-counters-repository.js';
import { isStorageFull } from './storage-full.js';

export interface ModelActivityLogger {
  warn(details: Record<string, unknown>, message: string): void;
  info(details: Record<string, unknown>, message: string): void;
}

export interface ModelActivityOptions {
  /** Where counters persist; absent = memory only (lost on restart). */
  repository?: ModelCountersRepository;
  /** How often increments are written to the repository. Default 10 s. */
  flushIntervalMs?: number;
  /** Where a failed flush is said (first, then at most once a minute with a count); absent = not said. */
  logger?: ModelActivityLogger;
  now?: () => number;
}

const FLUSH_FAILED = 'flush';

/**
 * Counts inferences and captured samples per model, with the time of the last of each (what the heartbeat
 * reports). Called on every prediction, so it only adds in memory; increments reach the database every
 * `flushIntervalMs` and on close — a crash loses at most that interval's counts, never the database's totals.
 * A flush that cannot write (a full disk, a read-only database) keeps the increments in memory and tries again at
 * the next one: they are counters, so what accumulates meanwhile merges into one row per model (memory stays
 * bounded by the number of models), and a statistic never takes the agent down.
 */
export class ModelActivity {
  readonly #repository: ModelCountersRepository | undefined;
  readonly #now: () => number;
  readonly #logger: ModelActivityLogger | undefined;
  readonly #failureLines: LineLimiter;
  #failing = false;
  readonly #persisted = new Map<string, ModelCounters>();
  #increments = new Map<string, ModelCounters>();
  #timer: NodeJS.Timeout | undefined;

  constructor(options: ModelActivityOptions = {}) {
    this.#repository = options.repository;
    this.#now = options.now ?? Date.now;
    this.#logger = options.logger;
    this.#failureLines = new LineLimiter({ now: this.#now });
    for (const counters of this.#repository?.list() ?? []) this.#persisted.set(counters.model, counters);
    if (this.#repository) {
      this.#timer = setInterval(() => this.flush(), options.flushIntervalMs ?? 10_000);
      this.#timer.unref();
    }
  }

  inference(model: string, at: number = this.#now()): void {
    const entry = this.#entry(model);
    entry.inferences++;
    entry.lastInferenceAt = Math.max(entry.lastInferenceAt ?? 0, at);
  }

  sample(model: string, at: number = this.#now()): void {
    const entry = this.#entry(model);
    entry.samples++;
    entry.lastSampleAt = Math.max(entry.lastSampleAt ?? 0, at);
  }

  /** Totals per model (persisted plus not yet flushed), by model name. */
  snapshot(): ModelCounters[] {
    const names = new Set([...this.#persisted.keys(), ...this.#increments.keys()]);
    return [...names]
      .sort()
      .map((model) => merge(model, this.#persisted.get(model), this.#increments.get(model)));
  }

  /**
   * Writes the increments so far to the repository (when there is one). Never throws: a write that fails keeps
   * them for the next flush (the repository's add is one transaction, so none of them was counted). Returns
   * whether everything is written.
   */
  flush(): boolean {
    if (this.#increments.size === 0) return true;
    const increments = [...this.#increments.values()];
    if (this.#repository) {
      try {
        this.#repository.add(increments);
      } catch (error) {
        this.#flushFailed(error);
        return false;
      }
      if (this.#failing) {
        this.#failing = false;
        const leftOut = this.#failureLines.forget(FLUSH_FAILED);
        this.#logger?.info(
          { event: 'model-counters-written', ...(leftOut > 0 && { failuresNotLogged: leftOut }) },
          'model activity counters written to the local database again; none was lost',
        );
      }
    }
    for (const increment of increments) {
      this.#persisted.set(
        increment.model,
        merge(increment.model, this.#persisted.get(increment.model), increment),
      );
    }
    this.#increments = new Map();
    return true;
  }

  close(): void {
    clearInterval(this.#timer);
    if (this.flush()) return;
    // The last chance to write them: said whatever the once-a-minute limit, with what is lost.
    const lost = [...this.#increments.values()];
    this.#logger?.warn(
      {
        event: 'model-counters-lost',
        models: lost.map((c) => c.model),
        inferences: lost.reduce((n, c) => n + c.inferences, 0),
      },
      `closing with model activity counters the local database would not take (the last flush failed); the counts since the last write that succeeded are lost (${lost.length} model(s)): the totals in the database stay, lower by these`,
    );
  }

  #flushFailed(error: unknown): void {
    this.#failing = true;
    const admitted = this.#failureLines.admit(FLUSH_FAILED);
    if (admitted === undefined) return;
    const message = (error as Error).message;
    const full = isStorageFull(error);
    this.#logger?.warn(
      {
        event: 'model-counters-unwritable',
        reason: message,
        ...((error as { code?: unknown }).code !== undefined && { code: (error as { code?: unknown }).code }),
        ...(admitted.leftOut > 0 && { failuresNotLogged: admitted.leftOut }),
        // A full disk is the device's state, not a bug: its stack would say nothing.
        ...(!full && { err: error }),
      },
      `cannot write the model activity counters to the local database (${message}); they are kept in memory and written at the next flush that succeeds (` +
        (admitted.leftOut > 0
          ? `${admitted.leftOut} more failure(s) since the last line, not logged)`
          : 'repeats logged at most once a minute)'),
    );
  }

  #entry(model: string): ModelCounters {
    let entry = this.#increments.get(model);
    if (!entry) {
      entry = { model, inferences: 0, samples: 0, lastInferenceAt: null, lastSampleAt: null };
      this.#increments.set(model, entry);
    }
    return entry;
  }
}

function merge(model: string, a: ModelCounters | undefined, b: ModelCounters | undefined): ModelCounters {
  const later = (x: number | null | undefined, y: number | null | undefined) =>
    x == null ? (y ?? null) : y == null ? x : Math.max(x, y);
  return {
    model,
    inferences: (a?.inferences ?? 0) + (b?.inferences ?? 0),
    samples: (a?.samples ?? 0) + (b?.samples ?? 0),
    lastInferenceAt: later(a?.lastInferenceAt, b?.lastInferenceAt),
    lastSampleAt: later(a?.lastSampleAt, b?.lastSampleAt),
  };
}
