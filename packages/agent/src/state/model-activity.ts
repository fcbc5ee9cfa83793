import type { ModelCounters, ModelCountersRepository } from './model-counters-repository.js';

export interface ModelActivityOptions {
  /** Where counters persist; absent = memory only (lost on restart). */
  repository?: ModelCountersRepository;
  /** How often increments are written to the repository. Default 10 s. */
  flushIntervalMs?: number;
  now?: () => number;
}

/**
 * Counts inferences and captured samples per model, with the time of the last of each (what the heartbeat
 * reports). Called on every prediction, so it only adds in memory; increments reach the database every
 * `flushIntervalMs` and on close — a crash loses at most that interval's counts, never the database's totals.
 */
export class ModelActivity {
  readonly #repository: ModelCountersRepository | undefined;
  readonly #now: () => number;
  readonly #persisted = new Map<string, ModelCounters>();
  #increments = new Map<string, ModelCounters>();
  #timer: NodeJS.Timeout | undefined;

  constructor(options: ModelActivityOptions = {}) {
    this.#repository = options.repository;
    this.#now = options.now ?? Date.now;
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

  /** Writes the increments so far to the repository (when there is one). */
  flush(): void {
    if (this.#increments.size === 0) return;
    const increments = [...this.#increments.values()];
    if (this.#repository) this.#repository.add(increments);
    for (const increment of increments) {
      this.#persisted.set(
        increment.model,
        merge(increment.model, this.#persisted.get(increment.model), increment),
      );
    }
    this.#increments = new Map();
  }

  close(): void {
    clearInterval(this.#timer);
    this.flush();
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
