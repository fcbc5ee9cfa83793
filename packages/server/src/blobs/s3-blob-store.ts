import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import { Readable } from 'node:stream';
import {
  assertValidBlobKey,
  assertValidBlobPrefix,
  BlobNotFoundError,
  type BlobBody,
  type BlobInfo,
  type BlobStore,
  type ByteRange,
  type PutBlobOptions,
} from './blob-store.js';

export interface S3BlobStoreOptions {
  bucket: string;
  /** Key prefix inside the bucket, without leading or trailing slash; may be empty. */
  prefix: string;
  /** e.g. http://127.0.0.1:9000 for MinIO; omitted for AWS S3. */
  endpoint?: string;
  region?: string;
  /** Path-style addressing (`endpoint/bucket/key`); what most S3-compatible stores need. */
  forcePathStyle?: boolean;
  /** Explicit credentials; otherwise the AWS SDK default chain (env, profile, …). */
  credentials?: { accessKeyId: string; secretAccessKey: string };
  /**
   * A request whose socket sends and receives nothing this long fails (default: none, the SDK's). An endpoint
   * that stops answering mid-request then frees its socket instead of holding it for good.
   */
  socketTimeoutMs?: number;
  /** Connecting to the endpoint fails after this long (default: none, the SDK's). */
  connectionTimeoutMs?: number;
  /** Sockets the client keeps open to the endpoint at most; more requests queue for one (default: the SDK's 50). */
  maxSockets?: number;
  /** Where the SDK's warnings go (default: the console, outside the server's log); its other chatter is dropped. */
  warn?: (message: string) => void;
}

/** The SDK's logger interface with only its warnings (text) passed on. */
function sdkLoggerOf(warn: (message: string) => void) {
  const pass = (...content: unknown[]) =>
    warn(content.map((part) => (part instanceof Error ? part.message : String(part))).join(' '));
  // info logs every request and error every failed one, each with the command's input (the SDK's logger
  // middleware): a failure is thrown to the caller anyway. debug and trace are as loud.
  const drop = () => undefined;
  return { trace: drop, debug: drop, info: drop, warn: pass, error: drop };
}

function statusOf(error: unknown): number | undefined {
  return (error as { $metadata?: { httpStatusCode?: number } } | undefined)?.$metadata?.httpStatusCode;
}

function isMissing(error: unknown): boolean {
  const name = (error as { name?: unknown } | undefined)?.name;
  return name === 'NoSuchKey' || name === 'NotFound' || statusOf(error) === 404;
}

/** Blobs in any S3-compatible object store, through the AWS SDK. */
export class S3BlobStore implements BlobStore {
  readonly description: string;
  private readonly client: S3Client;
  private readonly bucket: string;
  private readonly prefix: string;

  constructor(options: S3BlobStoreOptions) {
    this.bucket = options.bucket;
    this.prefix = options.prefix.replace(/^\/+|\/+$/g, '');
    if (this.prefix !== '') assertValidBlobKey(this.prefix);
    this.description = `s3://${this.bucket}/${this.prefix}`;
    this.client = new S3Client({
      region: options.region ?? 'us-east-1',
      forcePathStyle: options.forcePathStyle ?? options.endpoint !== undefined,
      ...(options.endpoint !== undefined ? { endpoint: options.endpoint } : {}),
      ...(options.credentials !== undefined ? { credentials: options.credentials } : {}),
      ...(options.warn !== undefined && { logger: sdkLoggerOf(options.warn) }),
      ...((options.socketTimeoutMs !== undefined ||
        options.connectionTimeoutMs !== undefined ||
        options.maxSockets !== undefined ||
        options.warn !== undefined) && {
        requestHandler: {
          ...(options.socketTimeoutMs !== undefined && { socketTimeout: options.socketTimeoutMs }),
          ...(options.connectionTimeoutMs !== undefined && {
            connectionTimeout: options.connectionTimeoutMs,
          }),
          ...(options.maxSockets !== undefined && {
            httpAgent: { maxSockets: options.maxSockets },
            httpsAgent: { maxSockets: options.maxSockets },
          }),
          // The handler's own warning (every socket in use and requests queued) goes the same way.
          ...(options.warn !== undefined && { logger: sdkLoggerOf(options.warn) }),
        },
      }),
      // Checksums only where the operation demands them: many S3-compatible stores reject the
      // aws-chunked trailers the SDK would otherwise send.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    });
  }

  private objectKey(key: string): string {
    assertValidBlobKey(key);
    return this.prefix === '' ? key : `${this.prefix}/${key}`;
  }

  private blobKey(objectKey: string): string {
    return this.prefix === '' ? objectKey : objectKey.slice(this.prefix.length + 1);
  }

  async put(key: string, body: BlobBody, options: PutBlobOptions = {}): Promise<BlobInfo> {
    const objectKey = this.objectKey(key);
    let contentLength = options.contentLength;
    if (body instanceof Readable) {
      if (contentLength === undefined) {
        throw new Error(`put "${key}": a stream body needs contentLength for S3`);
      }
    } else {
      contentLength = typeof body === 'string' ? Buffer.byteLength(body) : body.byteLength;
    }
    await this.client.send(
      new PutObjectCommand({
        Bucket: this.bucket,
        Key: objectKey,
        Body: body,
        ContentLength: contentLength,
        ContentType: options.contentType ?? 'application/octet-stream',
      }),
      // The SDK pipes a stream body into the request, and pipe passes no error on: without the abort, a body
      // that fails leaves the PUT open with a short body until the endpoint gives up (s3rver never does).
      options.signal !== undefined ? { abortSignal: options.signal } : {},
    );
    return { key, size: contentLength };
  }

  async get(key: string, range?: ByteRange): Promise<Readable> {
    try {
      const result = await this.client.send(
        new GetObjectCommand({
          Bucket: this.bucket,
          Key: this.objectKey(key),
          ...(range && { Range: `bytes=${range.start}-${range.end ?? ''}` }),
        }),
      );
      if (!(result.Body instanceof Readable)) throw new Error(`get "${key}": S3 returned no readable body`);
      return result.Body;
    } catch (error) {
      if (isMissing(error)) throw new BlobNotFoundError(key);
      throw error;
    }
  }

  async head(key: string): Promise<BlobInfo | undefined> {
    try {
      const result = await this.client.send(
        new HeadObjectCommand({ Bucket: this.bucket, Key: this.objectKey(key) }),
      );
      return { key, size: result.ContentLength ?? 0 };
    } catch (error) {
      if (isMissing(error)) return undefined;
      throw error;
    }
  }

  async delete(key: string): Promise<void> {
    await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.objectKey(key) }));
  }

  async list(prefix: string): Promise<BlobInfo[]> {
    assertValidBlobPrefix(prefix);
    const fullPrefix = this.prefix === '' ? prefix : `${this.prefix}/${prefix}`;
    const found: BlobInfo[] = [];
    let continuationToken: string | undefined;
    do {
      const page = await this.client.send(
        new ListObjectsV2Command({
          Bucket: this.bucket,
          Prefix: fullPrefix,
          ...(continuationToken !== undefined ? { ContinuationToken: continuationToken } : {}),
        }),
      );
      for (const object of page.Contents ?? []) {
        if (object.Key === undefined) continue;
        found.push({ key: this.blobKey(object.Key), size: object.Size ?? 0 });
      }
      continuationToken = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (continuationToken !== undefined);
    return found.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  locationOf(key: string): string {
    return `s3://${this.bucket}/${this.objectKey(key)}`;
  }

  async check(): Promise<void> {
    await this.client.send(new HeadBucketCommand({ Bucket: this.bucket }));
  }

  async close(): Promise<void> {
    this.client.destroy();
  }
}
