import type { BlobStore, S3ConnectionOptions } from '../blobs/index.js';
import { BlobStoreUnavailableError, S3BlobStore } from '../blobs/index.js';
import { DomainError } from '../errors/index.js';
import type { FleetOutputS3Timeouts } from './fleet-output-timeouts.js';

export { FLEET_OUTPUT_S3_TIMEOUTS, type FleetOutputS3Timeouts } from './fleet-output-timeouts.js';

/**
 * Sockets of a fleet-output S3 client beyond the upload slots: streamed uploads (one per slot) hold a socket while
 * a device sends, and the rest, bodies already read whole, need one only for their PUT; the spare keeps those
 * from queueing behind a full set of slow streamed uploads. (The SDK's own default is 50 in all.)
 */
export const FLEET_OUTPUT_SPARE_SOCKETS = 50;

/** Where a fleet's captures are written: a store and the key a device's capture key maps to in it. */
export interface FleetOutputTarget {
  store: BlobStore;
  keyFor(captureKey: string): string;
  /** The fleet's output location as its owner wrote it (`s3://bucket/prefix`). */
  location: string;
  /** The prefix inside the bucket; a device's capture keys must lie under it (empty: anywhere). */
  prefix: string;
  /**
   * Where in this store the server keeps its own blobs (models, packages), when the fleet's bucket is the
   * server's: no capture may be written there (empty: the whole bucket). Absent: no overlap possible.
   */
  reservedPrefix?: string;
}

/** `s3://bucket/prefix` → its parts; undefined when the fleet's output is not an S3 URI. */
export function parseOutputLocation(location: string): { bucket: string; prefix: string } | undefined {
  const match = /^s3:\/\/([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:\/(.*))?$/.exec(location.trim());
  if (!match) return undefined;
  return { bucket: match[1]!, prefix: (match[2] ?? '').replace(/^\/+|\/+$/g, '') };
}

/**
 * Maps a fleet's output location onto storage the server can write:
 * - with S3 blobs (`--blob s3://…`), the fleet's own bucket through the same S3 connection (endpoint,
 *   credentials), so a capture lands exactly at `s3://<bucket>/<key>`, where its records' `data-ref`s point;
 * - with a local blob folder, `fleet-output/<bucket>/<key>` inside it (there is no bucket to write to).
 * S3 clients are made once per bucket and closed with close().
 */
export class FleetOutputs {
  readonly #blobs: BlobStore;
  readonly #s3: S3ConnectionOptions | undefined;
  readonly #serverBlobs: { bucket: string; prefix: string } | undefined;
  readonly #maxSockets: number;
  readonly #timeouts: FleetOutputS3Timeouts;
  readonly #warn: ((message: string) => void) | undefined;
  readonly #buckets = new Map<string, S3BlobStore>();

  /**
   * `serverBlobs`: the server's own S3 blob location, when its blobs are in S3. `uploadSlots`:
   * captures.maxConcurrentUploads, the streamed uploads at once; each bucket's client gets that many sockets plus
   * FLEET_OUTPUT_SPARE_SOCKETS. `timeouts`: each bucket's client's (captures.outputS3SocketTimeoutMs and
   * captures.outputS3ConnectionTimeoutMs). `warn`: where the S3 SDK's warnings go (one per failed streamed PUT, which a
   * device can cause at will: kept out of stderr and at a quiet level by the caller).
   */
  constructor(
    blobs: BlobStore,
    s3: S3ConnectionOptions | undefined,
    options: {
      serverBlobs?: { bucket: string; prefix: string } | undefined;
      uploadSlots: number;
      timeouts: FleetOutputS3Timeouts;
      warn?: (message: string) => void;
    },
  ) {
    this.#blobs = blobs;
    this.#s3 = s3;
    this.#serverBlobs = options.serverBlobs;
    this.#maxSockets = options.uploadSlots + FLEET_OUTPUT_SPARE_SOCKETS;
    this.#timeouts = options.timeouts;
    this.#warn = options.warn;
  }

  targetFor(location: string): FleetOutputTarget | undefined {
    const parsed = parseOutputLocation(location);
    if (parsed === undefined) return undefined;
    const { bucket, prefix } = parsed;
    if (this.#s3 === undefined)
      return {
        store: this.#blobs,
        keyFor: (key) => `fleet-output/${bucket}/${key}`,
        location,
        prefix,
      };
    let store = this.#buckets.get(bucket);
    if (store === undefined) {
      store = new S3BlobStore({
        ...this.#s3,
        socketTimeoutMs: this.#timeouts.socketTimeoutMs,
        connectionTimeoutMs: this.#timeouts.connectionTimeoutMs,
        bucket,
        prefix: '',
        maxSockets: this.#maxSockets,
        ...(this.#warn !== undefined && { warn: this.#warn }),
      });
      this.#buckets.set(bucket, store);
    }
    const reserved = this.#serverBlobs?.bucket === bucket ? { reservedPrefix: this.#serverBlobs.prefix } : {};
    return { store, keyFor: (key) => key, location, prefix, ...reserved };
  }

  /**
   * Checks that the server can write a fleet's output location with its own S3 connection (HeadBucket on the
   * fleet's bucket), before a fleet takes it: a bucket that does not exist or that the server's credentials
   * may not use is refused (400), an S3 endpoint that does not answer is a 503. With a local blob folder there
   * is no bucket to check. A location that is not an s3:// URI is the fleet schema's to refuse.
   */
  async check(location: string): Promise<void> {
    const target = this.targetFor(location);
    if (target === undefined || this.#s3 === undefined) return;
    try {
      await target.store.check();
    } catch (error) {
      if (!(error instanceof BlobStoreUnavailableError)) throw error;
      const operatorMistake = error.problem === 'missing-bucket' || error.problem === 'forbidden';
      throw new DomainError(
        operatorMistake ? 'ValidationError' : 'DependencyUnavailable',
        `the output location ${location} cannot be used: ${error.reason} (the server writes captures there through ${error.endpoint}, with its own s3 settings)`,
        {
          outputLocation: location,
          problem: error.problem,
          ...(operatorMistake ? {} : { retryAfterSeconds: 15 }),
        },
      );
    }
  }

  async close(): Promise<void> {
    for (const store of this.#buckets.values()) await store.close();
    this.#buckets.clear();
  }
}
