import type { Readable } from 'node:stream';

export interface BlobInfo {
  key: string;
  size: number;
}

export type BlobBody = Buffer | Uint8Array | string | Readable;

/** Bytes `start` to `end`, both inclusive (HTTP Range's convention); `end` absent: to the end. */
export interface ByteRange {
  start: number;
  end?: number;
}

export interface PutBlobOptions {
  /** Required when `body` is a stream (S3 PutObject needs it up front). */
  contentLength?: number;
  contentType?: string;
  /** Aborts the write (the stream body failed): the store stops it and rejects, keeping nothing of it. */
  signal?: AbortSignal;
  /**
   * S3: write the object with SSE-KMS under this KMS key (`ServerSideEncryption: aws:kms`, `SSEKMSKeyId`). A
   * local folder has no server-side encryption: its store ignores it (fleet outputs say so when a fleet is set).
   */
  sseKmsKeyId?: string;
}

export interface ReadBlobOptions {
  /** Aborts the read: the store ends the request (a store that does not answer holds no caller past it). */
  signal?: AbortSignal;
}

/**
 * Where packages, uploaded models and captures live. Keys are `/`-separated relative paths of
 * `[A-Za-z0-9._-]` segments; neither implementation accepts anything else, so a key can never escape.
 */
export interface BlobStore {
  /** Human-readable location of the store: `file:///…` or `s3://bucket/prefix`. */
  readonly description: string;
  /**
   * The longest `/`-separated segment of a key the store can hold (a folder store: a file name's limit), or
   * undefined when only the key's length is limited (S3).
   */
  readonly maxKeySegmentLength?: number;
  put(key: string, body: BlobBody, options?: PutBlobOptions): Promise<BlobInfo>;
  /** Streams the blob, or the range of it; rejects with BlobNotFoundError if absent. */
  get(key: string, range?: ByteRange, options?: ReadBlobOptions): Promise<Readable>;
  /** Size of the blob, or undefined if absent. */
  head(key: string): Promise<BlobInfo | undefined>;
  /** Removes the blob; removing an absent blob is not an error. */
  delete(key: string): Promise<void>;
  /** Every blob whose key starts with `prefix`, in key order. */
  list(prefix: string): Promise<BlobInfo[]>;
  /** URI naming the blob where clients can find it (`s3://bucket/prefix/key` or `file:///…`). */
  locationOf(key: string): string;
  /** Throws if the store cannot be reached (readiness). */
  check(): Promise<void>;
  /** Releases connections; the store is unusable afterwards. */
  close(): Promise<void>;
}

export class BlobNotFoundError extends Error {
  constructor(readonly key: string) {
    super(`blob "${key}" does not exist`);
    this.name = 'BlobNotFoundError';
  }
}

/**
 * A key that cannot be stored beside one already there: in a folder store a key is a file, so it cannot also
 * be a folder of other keys (`a/x` then `a/x/y`, or the reverse). S3 has no folders and never throws it.
 */
export class BlobKeyConflictError extends Error {
  constructor(
    readonly key: string,
    /** The stored key in the way: a file where `key` needs a folder, or `key` itself when it is a folder. */
    readonly conflictingKey: string,
  ) {
    super(
      conflictingKey === key
        ? `blob "${key}" cannot be stored: keys under "${key}/" are stored, and in a folder store a key cannot be both a file and a folder of other keys`
        : `blob "${key}" cannot be stored: "${conflictingKey}" is stored, and in a folder store a key cannot be both a file and a folder of other keys`,
    );
    this.name = 'BlobKeyConflictError';
  }
}

const SEGMENT = /^[A-Za-z0-9._-]+$/;

/** Throws unless `key` is a relative path of safe segments, with no `.` or `..` segment. */
export function assertValidBlobKey(key: string): void {
  const segments = key.split('/');
  const bad = segments.find((s) => !SEGMENT.test(s) || s === '.' || s === '..');
  if (key.length === 0 || key.length > 1024 || bad !== undefined) {
    throw new Error(
      `invalid blob key "${key}": expected 1-1024 characters of /-separated segments made of A-Z a-z 0-9 . _ - (no "." or ".." segments)`,
    );
  }
}

/** Prefixes may be empty or end with a `/`; otherwise they follow the key rules. */
export function assertValidBlobPrefix(prefix: string): void {
  if (prefix === '') return;
  assertValidBlobKey(prefix.endsWith('/') ? prefix.slice(0, -1) : prefix);
}

/** Why a store cannot be used now: each asks for a different fix. */
export type BlobStoreProblem = 'missing-bucket' | 'forbidden' | 'credentials' | 'unreachable';

/**
 * A store that cannot be used now (its bucket does not exist, no credentials or no permission, its endpoint
 * unreachable or failing), as opposed to a request the store refused. The message names the store, where it
 * is and the reason; `problem` tells the operator's mistakes (a bucket, credentials) from an outage.
 */
export class BlobStoreUnavailableError extends Error {
  constructor(
    /** `s3://bucket/prefix` */
    readonly store: string,
    /** Where the store is reached: its endpoint, or "AWS S3 (region …)". */
    readonly endpoint: string,
    readonly problem: BlobStoreProblem,
    /** What is wrong and what would fix it, without the store's name. */
    readonly reason: string,
    /** `endpointConfigured`: `endpoint` is the s3.endpoint setting (default), not a description such as AWS's. */
    options?: ErrorOptions & { endpointConfigured?: boolean },
  ) {
    super(`cannot use the blob store ${store} at ${endpoint}: ${reason}`, options);
    this.name = 'BlobStoreUnavailableError';
    this.endpointConfigured = options?.endpointConfigured ?? true;
  }

  /** Whether `endpoint` is the server's s3.endpoint setting (which may be an internal host): hidden from reports. */
  readonly endpointConfigured: boolean;
}
