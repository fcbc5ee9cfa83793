/** The budget when none is configured: room for a few of the largest bodies, and never under 256 MiB. */
export function defaultBodyBudgetBytes(maxBodyBytes: number): number {
  return Math.max(256 * 1024 ** 2, 4 * maxBodyBytes);
}

/**
 * Why a configured budget is too small, when it is smaller than the largest REST body or gRPC message the agent
 * accepts: such a request could never fit, and would be refused (429 / RESOURCE_EXHAUSTED) every time, however
 * idle the agent. Undefined when it is large enough.
 */
export function bodyBudgetWarning(
  limitBytes: number,
  maxBodyBytes: number,
  maxMessageBytes: number,
): string | undefined {
  const largest = Math.max(maxBodyBytes, maxMessageBytes);
  if (limitBytes >= largest) return undefined;
  const which =
    maxMessageBytes >= maxBodyBytes
      ? `a gRPC message of up to -m (${maxMessageBytes} bytes)`
      : `a REST body of up to ${maxBodyBytes} bytes`;
  return `edgefleet_max_bodies_in_flight_bytes (${limitBytes} bytes) is smaller than the largest request the agent accepts, ${which}: requests larger than the budget are refused every time (REST 429, gRPC RESOURCE_EXHAUSTED); expected at least ${largest} bytes, or leave it unset`;
}

/**
 * One byte budget for request bodies (REST) and request messages (gRPC) being received, or held by the work they
 * were handed to, shared by both doors (docs/security.md#limits): without it, connections × streams × the
 * largest body is what a flood of stalled uploads may hold in memory. Bytes are taken as they arrive (never from
 * an announced length alone, which costs a client nothing) and given back once nothing holds them: when the
 * request is refused or its client gone before the body was handed on, else when the inference (REST) or the
 * handler (gRPC) it was handed to has settled, even if the client cancelled meanwhile. Plain counting: O(1), no
 * allocation.
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

  /** What a refusal says: how much is taken, what was asked (`what`, with its size), the limit and its key. */
  describeRefusal(what: string): string {
    return `${this.#usedBytes} bytes of request bodies are being received or held already; ${what} would pass the agent's budget of ${this.limitBytes} bytes for them (edgefleet_max_bodies_in_flight_bytes)`;
  }
}
