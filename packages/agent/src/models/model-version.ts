import type { ModelDescription, ModelVersionState } from './model-description.js';

/**
 * One load of a model: its own pool key (so a reload or a staged version never meets another load's sessions,
 * as Triton keeps per-load state), its state, and the requests in flight on it.
 */
export class ModelVersion {
  state: ModelVersionState = 'verifying';
  /** Set once the load has completed. */
  description: ModelDescription | undefined;
  #inflight = 0;
  #drained: (() => void) | undefined;

  constructor(
    /** The pool's key for this load's sessions. */
    readonly key: string,
    /** The url it is being loaded from, as given. */
    readonly url: string,
  ) {}

  get inflight(): number {
    return this.#inflight;
  }

  /** A request starts on this version (synchronously with choosing it, so that a switch never misses it). */
  enter(): void {
    this.#inflight++;
  }

  leave(): void {
    this.#inflight--;
    if (this.#inflight === 0) this.#drained?.();
  }

  /** Stops being ready and waits for the requests in flight, at most `timeoutMs`. */
  async drain(timeoutMs: number): Promise<void> {
    this.state = 'draining';
    if (this.#inflight === 0) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      new Promise<void>((resolve) => (this.#drained = resolve)),
      new Promise<void>((resolve) => (timer = setTimeout(resolve, timeoutMs))),
    ]);
    clearTimeout(timer);
    this.#drained = undefined;
  }
}
