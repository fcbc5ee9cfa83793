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
}

/**
 * Where packages, uploaded models and captures live. Keys are `/`-separated relative paths of
 * `[A-Za-z0-9._-]` segments; neither implementation accepts anything else, so a key can never escape.
 */
export interface BlobStore {
  /** Human-readable location of the store: `file:///…` or `s3://bucket/prefix`. */
  readonly description: string;
  put(key: string, body: BlobBody, options?: PutBlobOptions): Promise<BlobInfo>;
  /** Streams the blob, or the range of it; rejects with BlobNotFoundError if absent. */
  get(key: string, range?: ByteRange): Promise<Readable>;
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
