/** The budget when none is configured: room for a few of the largest bodies, and never under 256 MiB. */
export function defaultBodyBudgetBytes(maxBodyBytes: number): number {
  return Math.max(256 * 1024 ** 2, 4 * maxBodyBytes);
}

/**
 * One byte budget for request bodies (REST) and request messages (gRPC) being received or held until their
 * answer is sent, shared by both doors (docs/security.md#limits): without it, connections × streams × the largest
 * body is what a flood of stalled uploads may hold in memory. Bytes are taken before they are buffered (from a
 * Content-Length or a gRPC length prefix, else chunk by chunk) and given back when the request is done. Plain
 * counting: O(1), no allocation.
 */
export class BodyBudget {
  readonly limitBytes: number;
  #usedBytes = 0;

  constructor(limitBytes: number) {
    if (!Number.isSafeInteger(limitBytes) || limitBytes <= 0)
      throw new RangeError(`a body budget must be a positive whole number of bytes, not ${limitBytes}`);
    this.limitBytes = limitBytes;
  }

  /** Bytes taken now. */
  get usedBytes(): number {
    return this.#usedBytes;
  }

  /** Takes `bytes` when they fit; false (nothing taken) when they would pass the limit. */
  take(bytes: number): boolean {
    if (this.#usedBytes + bytes > this.limitBytes) return false;
    this.#usedBytes += bytes;
    return true;
  }

  /** Gives back bytes taken earlier. */
  give(bytes: number): void {
    this.#usedBytes -= bytes;
  }

  /** What a refusal says: how much is taken, what was asked, the limit and its key. */
  describeRefusal(bytes: number, what: string): string {
    return `${this.#usedBytes} bytes of request bodies are being received or held already; ${what} (${bytes} bytes) would pass the agent's budget of ${this.limitBytes} bytes for them (edgefleet_max_bodies_in_flight_bytes)`;
  }
}
