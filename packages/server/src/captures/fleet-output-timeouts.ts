/** Timeouts of a fleet-output bucket's S3 client (captures.outputS3SocketTimeoutMs, …ConnectionTimeoutMs). */
export interface FleetOutputS3Timeouts {
  /** A request whose socket sends and receives nothing this long fails. */
  socketTimeoutMs: number;
  /** Connecting to the endpoint fails after this long. */
  connectionTimeoutMs: number;
}

/**
 * Their defaults: a bucket endpoint that stops answering fails the upload (refunded, the agent retries) instead of
 * holding one of the client's sockets, which every fleet writing to that bucket shares. Idle time, not total time,
 * so that a large capture streamed slowly from a device is not cut off. (Its own module: the config schema reads
 * it without the S3 client's.)
 */
export const FLEET_OUTPUT_S3_TIMEOUTS = {
  socketTimeoutMs: 60_000,
  connectionTimeoutMs: 10_000,
} as const satisfies FleetOutputS3Timeouts;
