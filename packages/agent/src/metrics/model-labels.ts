/** What seen() returns for a loaded model (every request's case): one shared, frozen array, so no allocation. */
const NONE: readonly string[] = Object.freeze([]);

/** The default number of models not loaded whose series are kept (`edgefleet_metrics_unloaded_models`). */
export const DEFAULT_MAX_UNLOADED_MODELS = 64;

/**
 * Which model names may have series: every model loaded now, and at most `maxUnloaded` others (unloaded, or
 * whose loads failed), the most recently seen. Any caller may name a model (a load of a made-up name fails,
 * but is counted), so without a bound each name would be a series for the agent's lifetime.
 */
export class ModelLabels {
  readonly #maxUnloaded: number;
  readonly #loaded = new Set<string>();
  /** Names not loaded, least recently seen first (a Map keeps insertion order). */
  readonly #unloaded = new Map<string, true>();

  constructor(maxUnloaded: number) {
    this.#maxUnloaded = Math.max(0, maxUnloaded);
  }

  /** A model is loaded: its series stay while it is. */
  loaded(model: string): void {
    this.#unloaded.delete(model);
    this.#loaded.add(model);
  }

  /** A model was unloaded. Returns the names whose series must go now. */
  unloaded(model: string): readonly string[] {
    this.#loaded.delete(model);
    return this.seen(model);
  }

  /** A series of `model` was touched (a failed load, a request that ended after its unload). Returns the names whose series must go now. */
  seen(model: string): readonly string[] {
    if (this.#loaded.has(model)) return NONE;
    this.#unloaded.delete(model);
    this.#unloaded.set(model, true);
    const evicted: string[] = [];
    for (const name of this.#unloaded.keys()) {
      if (this.#unloaded.size <= this.#maxUnloaded) break;
      this.#unloaded.delete(name);
      evicted.push(name);
    }
    return evicted;
  }
}
