import { DEFAULT_S3_TIMEOUTS, type S3Timeouts } from '../blobs/s3-timeouts.js';

/** Timeouts of a fleet-output bucket's S3 client (captures.outputS3SocketTimeoutMs, …ConnectionTimeoutMs). */
export type FleetOutputS3Timeouts = S3Timeouts;

/**
 * Their defaults, every S3 client's: a bucket endpoint that stops answering fails the upload (refunded, the agent
 * retries) instead of holding one of the client's sockets, which every fleet writing to that bucket shares.
 */
export const FLEET_OUTPUT_S3_TIMEOUTS = DEFAULT_S3_TIMEOUTS;
