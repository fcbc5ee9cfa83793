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
  BlobStoreUnavailableError,
  type BlobBody,
  type BlobStoreProblem,
  type BlobInfo,
  type BlobStore,
  type ByteRange,
  type ReadBlobOptions,
  type PutBlobOptions,
} from './blob-store.js';
import { NETWORK_ERROR_CODES } from '../errors/network-error-codes.js';
import { CredentialSourceUnavailableError, serverCredentialDefaultProvider } from './credential-source.js';

export interface S3BlobStoreOptions {
  bucket: string;
  /** Key prefix inside the bucket, without leading or trailing slash; may be empty. */
  prefix: string;
  /** e.g. http://127.0.0.1:9000 for MinIO; omitted for AWS S3. */
  endpoint?: string;
  region?: string;
  /** Path-style addressing (`endpoint/bucket/key`); what most S3-compatible stores need. */
  forcePathStyle?: boolean;
  /**
   * Explicit credentials; otherwise the AWS SDK default chain (env, profile, …), whose instance-metadata timeout
   * is told from no credentials at all (credential-source.ts).
   */
  credentials?: { accessKeyId: string; secretAccessKey: string };
  /** The environment that chooses the instance metadata endpoint the server checks (default: process.env). */
  env?: NodeJS.ProcessEnv;
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
  /** Tries per request, retries included (default: the SDK's 3). */
  maxAttempts?: number;
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
  if (name === 'NoSuchBucket') return false;
  return name === 'NoSuchKey' || name === 'NotFound' || statusOf(error) === 404;
}

/** The HTTP statuses of an S3 endpoint that is down or overloaded for now. */
const OUTAGE_STATUSES = new Set([500, 502, 503, 504]);

/**
 * The answers of a PutObject with SSE-KMS headers that say the store cannot encrypt with the key: AWS's
 * `InvalidArgument` (a malformed key id, a key in another region, SSE-KMS over plain HTTP), an S3-compatible
 * store's `NotImplemented` (501: MinIO with no KMS configured) or `InvalidRequest` (Ceph RGW). AWS's own KMS
 * failures (`KMS.NotFoundException`, `KMS.DisabledException`, …) are told by their `KMS.` prefix.
 */
const SSE_REFUSED_NAMES = new Set(['InvalidArgument', 'InvalidRequest', 'NotImplemented']);

/**
 * What an S3 failure says about the store itself, or undefined for a failure of the one request (a missing
 * key, an aborted upload). `bucketRequest`: a request about the bucket (HeadBucket), whose 404 has no body to
 * name it NoSuchBucket. `sseKmsKeyId`: the KMS key the request asked the store to encrypt with (a fleet's
 * KmsKeyId): a refusal of it is the store's (`forbidden`, naming the key), for every write with it fails alike.
 */
export function s3ProblemOf(
  error: unknown,
  bucket: string,
  endpoint: string,
  bucketRequest = false,
  sseKmsKeyId?: string,
): { problem: BlobStoreProblem; reason: string } | undefined {
  const { name, code, message } = (error ?? {}) as { name?: unknown; code?: unknown; message?: unknown };
  const status = statusOf(error);
  if (name === 'AbortError') return undefined;
  const source = credentialSourceFailureIn(error);
  if (source !== undefined) return { problem: 'unreachable', reason: source.message };
  if (name === 'NoSuchBucket' || (bucketRequest && status === 404))
    return {
      problem: 'missing-bucket',
      reason: `bucket ${bucket} does not exist (404); create it, or name an existing bucket`,
    };
  if (
    sseKmsKeyId !== undefined &&
    typeof name === 'string' &&
    // A 5xx other than 501 is an outage, KMS's own included (KMS.KMSInternalException, KMS.ThrottlingException):
    // a retry may pass, and the key is not to blame.
    (status === undefined || status < 500 || status === 501) &&
    (name.startsWith('KMS.') || SSE_REFUSED_NAMES.has(name) || status === 501)
  )
    return {
      problem: 'forbidden',
      reason:
        `bucket ${bucket} refused to encrypt with the fleet's KMS key ${sseKmsKeyId} (KmsKeyId) (${status ?? 400} ${name}); ` +
        "the key must exist, be enabled and be in the bucket's region, the server's S3 credentials need " +
        'kms:GenerateDataKey on it, and an S3-compatible store must have KMS configured (SSE-KMS); or clear ' +
        "the fleet's KmsKeyId",
    };
  if (
    status === 403 ||
    name === 'AccessDenied' ||
    name === 'InvalidAccessKeyId' ||
    name === 'SignatureDoesNotMatch'
  )
    return {
      problem: 'forbidden',
      reason: `access to bucket ${bucket} denied (${status ?? 403}${typeof name === 'string' && name !== 'Forbidden' ? ` ${name}` : ''}); check the credentials and that they may read and write the bucket${
        // AWS answers a write whose KMS key the credentials may not use with the same 403 AccessDenied.
        sseKmsKeyId !== undefined
          ? `, and use the fleet's KMS key ${sseKmsKeyId} (KmsKeyId): kms:GenerateDataKey on it`
          : ''
      }`,
    };
  if (name === 'CredentialsProviderError' || /could not load credentials/i.test(String(message))) {
    // A credential source that did not answer (the container credentials endpoint, STS for a web identity:
    // the SDK keeps its error as the message or the cause) is an outage, and a retry may succeed.
    const network = networkFailureIn(error);
    if (network !== undefined)
      return {
        problem: 'unreachable',
        reason: `the source of the server's S3 credentials did not answer (${network}); try again later`,
      };
    return {
      problem: 'credentials',
      reason:
        'no S3 credentials: set s3.accessKeyId and s3.secretAccessKey (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or an AWS profile)',
    };
  }
  if (typeof code === 'string' && NETWORK_ERROR_CODES.has(code))
    return {
      problem: 'unreachable',
      reason: `cannot reach ${endpoint} (${code}); is the endpoint right and up?`,
    };
  // Only answers that say "try again": a 501 NotImplemented (a header this endpoint does not support) and the
  // like are permanent, the request's failure, not an outage.
  if (name === 'TimeoutError' || name === 'SlowDown' || (status !== undefined && OUTAGE_STATUSES.has(status)))
    return {
      problem: 'unreachable',
      reason: `${endpoint} is not answering (${status !== undefined ? `HTTP ${status}` : String(name)}); try again later`,
    };
  return undefined;
}

/** The CredentialSourceUnavailableError an error is, or wraps as a cause. */
function credentialSourceFailureIn(error: unknown): CredentialSourceUnavailableError | undefined {
  let current = error;
  for (let depth = 0; depth < 5 && current !== undefined && current !== null; depth++) {
    if (current instanceof CredentialSourceUnavailableError) return current;
    current = (current as { cause?: unknown }).cause;
  }
  return undefined;
}

const NETWORK_MESSAGE = new RegExp(
  `\\b(TimeoutError|timed? ?out|Unable to connect|socket hang up|${[...NETWORK_ERROR_CODES].join('|')})\\b`,
  'i',
);

/**
 * The network failure (a timeout, a refused or dropped connection) an error or one of its causes is, in a few
 * words, or undefined. Credential providers wrap what failed: as a cause, or only as text in their message.
 */
function networkFailureIn(error: unknown): string | undefined {
  let current = error as { name?: unknown; code?: unknown; message?: unknown; cause?: unknown } | undefined;
  for (let depth = 0; depth < 5 && current !== undefined && current !== null; depth++) {
    if (typeof current.code === 'string' && NETWORK_ERROR_CODES.has(current.code)) return current.code;
    if (current.name === 'TimeoutError') return 'TimeoutError';
    const found = NETWORK_MESSAGE.exec(String(current.message ?? ''));
    if (found !== null) return found[1];
    current = current.cause as typeof current;
  }
  return undefined;
}

/** Blobs in any S3-compatible object store, through the AWS SDK. */
export class S3BlobStore implements BlobStore {
  readonly description: string;
  private readonly client: S3Client;
  private readonly bucket: string;
  private readonly prefix: string;
  /** Where the store is reached, for messages. */
  private readonly endpoint: string;
  /** Whether `endpoint` is the s3.endpoint setting (else AWS S3, described by its region). */
  private readonly endpointConfigured: boolean;

  constructor(options: S3BlobStoreOptions) {
    this.bucket = options.bucket;
    this.prefix = options.prefix.replace(/^\/+|\/+$/g, '');
    if (this.prefix !== '') assertValidBlobKey(this.prefix);
    this.description = `s3://${this.bucket}/${this.prefix}`;
    this.endpoint = options.endpoint ?? `AWS S3 (region ${options.region ?? 'us-east-1'})`;
    this.endpointConfigured = options.endpoint !== undefined;
    this.client = new S3Client({
      region: options.region ?? 'us-east-1',
      forcePathStyle: options.forcePathStyle ?? options.endpoint !== undefined,
      ...(options.endpoint !== undefined ? { endpoint: options.endpoint } : {}),
      ...(options.credentials !== undefined
        ? { credentials: options.credentials }
        : { credentialDefaultProvider: serverCredentialDefaultProvider(options.env ?? process.env) }),
      ...(options.warn !== undefined && { logger: sdkLoggerOf(options.warn) }),
      ...(options.maxAttempts !== undefined && { maxAttempts: options.maxAttempts }),
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

  /** Runs an S3 request; a failure that says the store cannot be used becomes BlobStoreUnavailableError. */
  private async guard<T>(
    request: () => Promise<T>,
    { bucketRequest = false, sseKmsKeyId }: { bucketRequest?: boolean; sseKmsKeyId?: string } = {},
  ): Promise<T> {
    try {
      return await request();
    } catch (error) {
      const found = s3ProblemOf(error, this.bucket, this.endpoint, bucketRequest, sseKmsKeyId);
      if (found === undefined) throw error;
      throw new BlobStoreUnavailableError(this.description, this.endpoint, found.problem, found.reason, {
        cause: error,
        endpointConfigured: this.endpointConfigured,
      });
    }
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
    await this.guard(
      () =>
        this.client.send(
          new PutObjectCommand({
            Bucket: this.bucket,
            Key: objectKey,
            Body: body,
            ContentLength: contentLength,
            ContentType: options.contentType ?? 'application/octet-stream',
            ...(options.sseKmsKeyId !== undefined && {
              ServerSideEncryption: 'aws:kms',
              SSEKMSKeyId: options.sseKmsKeyId,
            }),
          }),
          // The SDK pipes a stream body into the request, and pipe passes no error on: without the abort, a body
          // that fails leaves the PUT open with a short body until the endpoint gives up (s3rver never does).
          options.signal !== undefined ? { abortSignal: options.signal } : {},
        ),
      options.sseKmsKeyId !== undefined ? { sseKmsKeyId: options.sseKmsKeyId } : {},
    );
    return { key, size: contentLength };
  }

  /** `signal`: aborting it ends the request, before or after the body began (the body stream then errors). */
  async get(key: string, range?: ByteRange, options: ReadBlobOptions = {}): Promise<Readable> {
    try {
      const result = await this.guard(() =>
        this.client.send(
          new GetObjectCommand({
            Bucket: this.bucket,
            Key: this.objectKey(key),
            ...(range && { Range: `bytes=${range.start}-${range.end ?? ''}` }),
          }),
          ...(options.signal !== undefined ? [{ abortSignal: options.signal }] : []),
        ),
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
      const result = await this.guard(() =>
        this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: this.objectKey(key) })),
      );
      return { key, size: result.ContentLength ?? 0 };
    } catch (error) {
      if (isMissing(error)) return undefined;
      throw error;
    }
  }

  async delete(key: string): Promise<void> {
    await this.guard(() =>
      this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.objectKey(key) })),
    );
  }

  async list(prefix: string): Promise<BlobInfo[]> {
    assertValidBlobPrefix(prefix);
    const fullPrefix = this.prefix === '' ? prefix : `${this.prefix}/${prefix}`;
    const found: BlobInfo[] = [];
    let continuationToken: string | undefined;
    do {
      const token = continuationToken;
      const page = await this.guard(() =>
        this.client.send(
          new ListObjectsV2Command({
            Bucket: this.bucket,
            Prefix: fullPrefix,
            ...(token !== undefined ? { ContinuationToken: token } : {}),
          }),
        ),
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
    await this.guard(() => this.client.send(new HeadBucketCommand({ Bucket: this.bucket })), {
      bucketRequest: true,
    });
  }

  async close(): Promise<void> {
    this.client.destroy();
  }
}
