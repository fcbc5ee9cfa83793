/** How often one repeated line (an outage, a worker's failure, a device's repeat) is written while it goes on. */
export const REPEATED_LINE_INTERVAL_MS = 60_000;
/** Keys remembered at most (one per device, component, …): the oldest is forgotten first, so memory is bounded. */
export const MAX_LIMITED_KEYS = 10_000;

/**
 * The one limiter behind every "at most once a minute, with the number left out" line (the server's OutageLog,
 * RepeatedFailureLog and identity refusals; the agent's capture upload failures): for each key, the first line, then at most one per
 * interval, told how many were left out since. A key forgotten (the oldest past `maxKeys`) starts over.
 */
export class LineLimiter {
  readonly #now: () => number;
  readonly #intervalMs: number;
  readonly #maxKeys: number;
  readonly #keys = new Map<string, { loggedAt: number; leftOut: number }>();

  constructor(options: { now?: () => number; intervalMs?: number; maxKeys?: number } = {}) {
    this.#now = options.now ?? Date.now;
    this.#intervalMs = options.intervalMs ?? REPEATED_LINE_INTERVAL_MS;
    this.#maxKeys = options.maxKeys ?? MAX_LIMITED_KEYS;
  }

  /**
   * Whether a line for `key` may be written now: undefined when one was within the interval (counted as left
   * out), else how many were left out since the last line and whether this is the key's first.
   */
  admit(key: string): { leftOut: number; first: boolean } | undefined {
    const at = this.#now();
    const seen = this.#keys.get(key);
    if (seen !== undefined && at - seen.loggedAt < this.#intervalMs) {
      seen.leftOut += 1;
      return undefined;
    }
    this.#keys.delete(key);
    if (this.#keys.size >= this.#maxKeys) {
      const oldest = this.#keys.keys().next().value;
      if (oldest !== undefined) this.#keys.delete(oldest);
    }
    this.#keys.set(key, { loggedAt: at, leftOut: 0 });
    return { leftOut: seen?.leftOut ?? 0, first: seen === undefined };
  }

  /** Ends `key`'s run: its next line is written at once. Returns how many were left out since its last line. */
  forget(key: string): number {
    const seen = this.#keys.get(key);
    this.#keys.delete(key);
    return seen?.leftOut ?? 0;
  }
}
