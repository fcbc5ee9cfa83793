/** Timeouts of an S3 client (the server's blob store, fleet-output buckets, compilation imports). */
export interface S3Timeouts {
  /** A request attempt whose socket sends and receives nothing this long fails. */
  socketTimeoutMs: number;
  /** Connecting to the endpoint fails after this long. */
  connectionTimeoutMs: number;
}

/**
 * Their defaults: an endpoint that stops answering fails the request instead of holding its socket (and what
 * waits on it) for good. Idle time, not total time, so that a large object streamed slowly is not cut off. (Its
 * own module: the config schema reads it without the S3 client's.)
 */
export const DEFAULT_S3_TIMEOUTS = {
  socketTimeoutMs: 60_000,
  connectionTimeoutMs: 10_000,
} as const satisfies S3Timeouts;
