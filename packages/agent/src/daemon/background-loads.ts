/**
 * The start-up loads (preloaded and restored models) still going after edgefleet_startup_load_timeout_seconds,
 * finishing in the background. The agent listens meanwhile, but does not say it is ready (GET /v2/health/ready)
 * until each has settled, loaded or failed: a client that sees it ready finds the models it was started with.
 */
export class BackgroundLoads {
  readonly #pending = new Map<object, string>();
  readonly #onSettled: (() => void) | undefined;

  /** `onSettled` runs each time the last pending load settles. */
  constructor(options: { onSettled?: () => void } = {}) {
    this.#onSettled = options.onSettled;
  }

  /** Counts `loading` (of model `name`) as pending until it settles; its outcome is the caller's to handle. */
  track(name: string, loading: Promise<unknown>): void {
    const token = {};
    this.#pending.set(token, name);
    const settle = () => {
      this.#pending.delete(token);
      if (this.#pending.size === 0) this.#onSettled?.();
    };
    loading.then(settle, settle);
  }

  /** The names of the models still loading in the background, in the order they were tracked. */
  get pending(): string[] {
    return [...this.#pending.values()];
  }

  /** Whether no start-up load is still going. */
  get settled(): boolean {
    return this.#pending.size === 0;
  }
}
