import type { RegistryObserver } from '../models/index.js';

/** Models remembered at most: the oldest failure is forgotten first, so memory stays bounded. */
export const MAX_LOAD_FAILURES = 1024;

export interface LoadFailure {
  /** The load's error message (a refused signature names the file that changed). */
  reason: string;
  /** When it failed (epoch ms). */
  at: number;
}

/**
 * Why a model the agent loaded again at its start (restoreLoadedModels) did not load: status and heartbeats carry
 * it for a deployed handle that serves nothing, instead of pointing at the log. Forgotten once the name loads.
 * In memory only: the next start tries the load again and finds the reason anew.
 */
export class LoadFailures {
  readonly #failures = new Map<string, LoadFailure>();
  readonly #now: () => number;

  constructor(now: () => number = Date.now) {
    this.#now = now;
  }

  record(name: string, error: unknown): void {
    this.#failures.delete(name);
    if (this.#failures.size >= MAX_LOAD_FAILURES) {
      const oldest = this.#failures.keys().next().value;
      if (oldest !== undefined) this.#failures.delete(oldest);
    }
    this.#failures.set(name, { reason: (error as Error).message ?? String(error), at: this.#now() });
  }

  get(name: string): LoadFailure | undefined {
    return this.#failures.get(name);
  }

  /** The registry's observer: a name that loads (again, or a new deployment of it) has no failure any more. */
  observer(): RegistryObserver {
    return { onLoaded: (model) => void this.#failures.delete(model.name) };
  }
}
