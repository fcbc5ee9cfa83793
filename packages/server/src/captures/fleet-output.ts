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

/** The output check's connect and socket timeout at most: a fleet create waits on it, once. */
export const FLEET_OUTPUT_CHECK_TIMEOUT_MS = 5000;

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
  /**
   * The fleet's KMS key (`OutputConfig.KmsKeyId`): every object is written with SSE-KMS under it. Only on an S3
   * target; a local folder target has none (the fleet-output check warned that it is not encrypted).
   */
  sseKmsKeyId?: string;
}

/** `s3://bucket/prefix` → its parts; undefined when the fleet's output is not an S3 URI. */
export function parseOutputLocation(location: string): { bucket: string; prefix: string } | undefined {
  const match = /^s3:\/\/([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:\/(.*))?$/.exec(location.trim());
  if (!match) return undefined;
  return { bucket: match[1]!, prefix: (match[2] ?? '').replace(/^\/+|\/+$/g, '') };
}

/**
 * Maps a fleet's output location onto storage the server can write:
 * - with S3 blobs (`--blob s3://…`), or local blobs and S3 settings (config/s3-configured.ts decides: the
 *   facade's packaging jobs write through the same settings), the fleet's own bucket through that S3 connection
 *   (endpoint, credentials), so a capture lands exactly at `s3://<bucket>/<key>`, where its records' `data-ref`s
 *   point, encrypted with the fleet's KMS key when it has one;
 * - on a server with no S3 at all, `fleet-output/<bucket>/<key>` inside the local blob folder (the fleet-output
 *   check warns of it when a fleet takes the location).
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

  /** `kmsKeyId`: the fleet's OutputConfig.KmsKeyId (null or absent: none). */
  targetFor(location: string, kmsKeyId?: string | null): FleetOutputTarget | undefined {
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
    const encrypted = kmsKeyId !== undefined && kmsKeyId !== null ? { sseKmsKeyId: kmsKeyId } : {};
    return { store, keyFor: (key) => key, location, prefix, ...reserved, ...encrypted };
  }

  /**
   * Checks a fleet's new output location with the server's own S3 connection (HeadBucket on the fleet's bucket),
   * before a fleet takes it. Only a bucket that does not exist is refused (400 ValidationError). A 403 is accepted
   * and answered with a warning: HeadBucket needs s3:ListBucket while writing captures needs only s3:PutObject, so
   * a least-privilege policy refuses the check and still lets captures through. A server without S3 credentials
   * is a 400 naming the settings (its configuration, not an outage). An endpoint that does not answer
   * is a 503; any other answer (a 301 for a bucket in another region, a 400) a 400 naming it. A server with no S3
   * checks no bucket and answers a warning (`local`) naming the folder its captures are kept in instead;
   * a location that is not an s3:// URI is the fleet schema's to refuse.
   * The check uses its own client, closed after, with one attempt and short timeouts: a client's input must
   * neither hold a request for minutes nor leave a client behind for each bucket it names.
   */
  async check(location: string, kmsKeyId?: string): Promise<{ warning?: string; local?: true }> {
    const parsed = parseOutputLocation(location);
    if (parsed === undefined) return {};
    if (this.#s3 === undefined) {
      // The store's description, not locationOf: a prefix need not be a valid blob key for the warning.
      const folder = `${this.#blobs.description.replace(/\/+$/, '')}/fleet-output/${parsed.bucket}/${parsed.prefix}`;
      return {
        local: true,
        warning:
          `captures for ${location} will be kept on the server in ${folder}, not in bucket ${parsed.bucket}: ` +
          'the server has no S3 (no --blob s3://…, s3.endpoint, s3.region or s3.accessKeyId); give it its S3 ' +
          'settings and restart it to have captures written to the bucket' +
          (kmsKeyId !== undefined ? ` (the KMS key ${kmsKeyId} is not applied to that folder)` : ''),
      };
    }
    const store = new S3BlobStore({
      ...this.#s3,
      bucket: parsed.bucket,
      prefix: '',
      maxAttempts: 1,
      socketTimeoutMs: Math.min(this.#timeouts.socketTimeoutMs, FLEET_OUTPUT_CHECK_TIMEOUT_MS),
      connectionTimeoutMs: Math.min(this.#timeouts.connectionTimeoutMs, FLEET_OUTPUT_CHECK_TIMEOUT_MS),
      maxSockets: 1,
      ...(this.#warn !== undefined && { warn: this.#warn }),
    });
    try {
      await store.check();
      return {};
    } catch (error) {
      return this.#answerTo(error, location, parsed.bucket);
    } finally {
      await store.close();
    }
  }

  #answerTo(error: unknown, location: string, bucket: string): { warning: string } {
    const through = `the server writes captures there through ${
      this.#s3?.endpoint ?? `AWS S3 (region ${this.#s3?.region ?? 'us-east-1'})`
    }, with its own s3 settings`;
    if (error instanceof BlobStoreUnavailableError) {
      if (error.problem === 'forbidden')
        return {
          warning: `cannot check the bucket of ${location}: HeadBucket was refused (403); HeadBucket needs s3:ListBucket, captures need only s3:PutObject on the prefix, so the location was accepted: if the credentials may not write there either, captures will fail (${through})`,
        };
      // No credentials is the server's configuration, not an outage: a retry cannot succeed until the operator
      // gives the server credentials, so it is a 400 naming the settings, as a bucket that does not exist is.
      // (A credential source that did not answer, EC2's instance metadata included, is `unreachable`: a 503.)
      if (error.problem === 'credentials')
        throw new DomainError(
          'ValidationError',
          `the output location ${location} cannot be used: the server has no S3 credentials to check it and ` +
            "write captures there with; give the server's own S3 connection credentials: s3.accessKeyId and " +
            's3.secretAccessKey in its config file, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or an AWS ' +
            'profile, AWS_PROFILE) in its environment, or give the host a role (EC2, ECS, EKS), then restart it ' +
            `and try again (${through})`,
          {
            outputLocation: location,
            problem: error.problem,
            settings: ['s3.accessKeyId', 's3.secretAccessKey', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY'],
          },
        );
      const missing = error.problem === 'missing-bucket';
      throw new DomainError(
        missing ? 'ValidationError' : 'DependencyUnavailable',
        `the output location ${location} cannot be used: ${error.reason} (${through})`,
        { outputLocation: location, problem: error.problem, ...(missing ? {} : { retryAfterSeconds: 15 }) },
      );
    }
    const { name, code, message, $metadata, $response } = (error ?? {}) as {
      name?: unknown;
      code?: unknown;
      message?: unknown;
      $metadata?: { httpStatusCode?: unknown };
      $response?: { headers?: Record<string, string | undefined> };
    };
    const status = typeof $metadata?.httpStatusCode === 'number' ? $metadata.httpStatusCode : undefined;
    const region = $response?.headers?.['x-amz-bucket-region'];
    const why =
      status === 301
        ? `bucket ${bucket} is in another region (HTTP 301${
            region !== undefined ? `, region ${region}` : ''
          }) than the server's s3.region ${this.#s3?.region ?? 'us-east-1'}; captures are written through the server's one S3 connection, so name a bucket in its region`
        : status !== undefined
          ? `HeadBucket on bucket ${bucket} answered HTTP ${status}${
              typeof name === 'string' && name !== 'UnknownError' && name !== String(status) ? ` ${name}` : ''
            }; expected an existing bucket the server can reach`
          : `HeadBucket on bucket ${bucket} failed (${typeof code === 'string' ? code : String(name)}: ${String(message)})`;
    throw new DomainError(
      'ValidationError',
      `the output location ${location} cannot be used: ${why} (${through})`,
      {
        outputLocation: location,
        ...(status !== undefined && { status }),
        ...(region !== undefined && { bucketRegion: region }),
      },
    );
  }

  async close(): Promise<void> {
    for (const store of this.#buckets.values()) await store.close();
    this.#buckets.clear();
  }
}
