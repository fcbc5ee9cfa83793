import { readFileSync } from 'node:fs';
import { rootCertificates } from 'node:tls';
import { PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { iotCredentialProvider, type AwsCredentials, type IotCredentialsOptions } from './iot-credentials.js';

/**
 * The store refused this file (the control plane's 400, 403 or 413): the same request will not pass as things
 * stand. What an uploader does with it is storeRefusal's rule (upload-failure.ts): only a refusal aboutTheFile gives
 * the file up (the spool drops it and the records that need it, their captures FAILURE with this reason); any other
 * keeps it, as a setting may be at fault.
 */
export class RefusedByStoreError extends Error {
  override readonly name = 'RefusedByStoreError';
  /** The store's HTTP status (400, 403, 413), when it answered one. */
  readonly status: number | undefined;
  /**
   * The file can never be taken: the control plane itself answered 413 with its own code, PayloadTooLarge (over
   * its captures.maxFileBytes or body limit). Every other refusal may pass once a setting is fixed: a proxy's 413
   * (nginx's default client_max_body_size is 1 MiB), a 403 (a key outside the fleet's output prefix), and the
   * server's 400 ValidationError, which also answers a record naming another device after a re-enrolment, a key
   * the local blob folder cannot hold, or a stricter schema of a newer server.
   */
  readonly aboutTheFile: boolean;
  constructor(message: string, options?: { cause?: unknown; status?: number; code?: string }) {
    super(message, options);
    this.status = options?.status;
    this.aboutTheFile = options?.status === 413 && options.code === 'PayloadTooLarge';
  }
}

/**
 * The store answered 429 or 503 with `Retry-After` (or it did so a moment ago, and that time has not passed):
 * the spool waits `retryAfterMs` before its next attempt instead of its own, shorter, backoff.
 */
export class RetryLaterError extends Error {
  override readonly name = 'RetryLaterError';
  constructor(
    message: string,
    /** How long from now, capped at MAX_RETRY_AFTER_MS. */
    readonly retryAfterMs: number,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/**
 * The longest wait a store's Retry-After imposes: a server over a daily quota may name the next midnight, hours
 * away, and a broken one any time at all; past this the agent tries again anyway (and is told to wait again).
 */
export const MAX_RETRY_AFTER_MS = 60 * 60 * 1000;

/**
 * The wait a `Retry-After` value asks for, in ms from `now`, capped at MAX_RETRY_AFTER_MS: delay-seconds (`120`)
 * or an HTTP date (`Wed, 21 Oct 2026 07:28:00 GMT`). Undefined when absent or not one of those (0 for a date
 * already past).
 */
export function retryAfterMs(value: string | undefined, now: number): number | undefined {
  if (value === undefined) return undefined;
  const text = value.trim();
  let ms: number;
  if (/^\d+$/.test(text)) ms = Number(text) * 1000;
  else {
    // Only the HTTP date forms (a weekday name first); Date.parse alone takes far more than HTTP allows.
    if (!/^[A-Za-z]{3},? /.test(text)) return undefined;
    const at = Date.parse(text);
    if (!Number.isFinite(at)) return undefined;
    ms = at - now;
  }
  return Math.min(MAX_RETRY_AFTER_MS, Math.max(0, ms));
}

/**
 * Remembers until when a store asked not to be called (its last Retry-After): every put until then fails at once
 * with RetryLaterError, making no request. So the capture service's direct writes honour the wait too, not only
 * the spool. Measured on a monotonic clock: a wall clock stepped back (NTP correcting a fast RTC, a manual set)
 * would otherwise stretch the wait by the step; and what is left is capped at MAX_RETRY_AFTER_MS regardless.
 */
export class RetryAfterGate {
  readonly #now: () => number;
  #until = 0;

  /** `now`: a monotonic clock in ms (tests inject one). */
  constructor(now: () => number = () => performance.now()) {
    this.#now = now;
  }

  /** The store asked to wait `ms` from now. */
  waitFor(ms: number): void {
    this.#until = Math.max(this.#until, this.#now() + Math.min(ms, MAX_RETRY_AFTER_MS));
  }

  /** Throws RetryLaterError while a wait the store asked for lasts. */
  check(description: string): void {
    const now = this.#now();
    // More left than any wait can be means the clock went back: the wait restarts from now, at most the cap.
    if (this.#until - now > MAX_RETRY_AFTER_MS) this.#until = now + MAX_RETRY_AFTER_MS;
    const left = this.#until - now;
    if (left > 0)
      throw new RetryLaterError(
        `${description} asked to wait (Retry-After); ${Math.ceil(left / 1000)} s left before the next attempt`,
        left,
      );
  }
}

/** The one operation capture needs from a bucket. */
export interface ObjectStore {
  readonly description: string;
  /** `s3://<bucket>/<key>`. */
  urlFor(key: string): string;
  put(key: string, body: Buffer, contentType: string): Promise<void>;
}

export type S3Credentials =
  /** The AWS SDK's default chain: environment, shared config/credentials files (profiles, SSO), web identity, ECS, EC2 IMDS. */
  | { source: 'default' }
  /** Static keys (tests, MinIO users). */
  | { source: 'static'; accessKeyId: string; secretAccessKey: string; sessionToken?: string }
  /** The AWS IoT credentials provider with the device certificate (what SageMaker Edge devices used). */
  | ({ source: 'iot' } & Omit<IotCredentialsOptions, 'now'>);

export interface S3ObjectStoreOptions {
  bucket: string;
  region: string;
  /** For MinIO, Ceph, s3rver…; absent = AWS (the SDK also honours AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL). */
  endpoint?: string;
  /** Path-style addressing (`endpoint/bucket/key`); default: on when an endpoint is given. */
  forcePathStyle?: boolean;
  credentials: S3Credentials;
  /** Extra CA certificate file (PEM) for TLS to the store, added to Node's built-in roots. */
  caFile?: string;
  /** Per request; a store that does not answer is treated as unreachable. Default 30 s. */
  requestTimeoutMs?: number;
  connectionTimeoutMs?: number;
  /** Attempts the SDK makes per put before reporting failure (capture adds its own backoff). Default 2. */
  maxAttempts?: number;
  /**
   * The monotonic clock (ms) Retry-After waits are measured on (tests). Default performance.now. An HTTP-date
   * Retry-After is turned into a wait with the wall clock once, when it arrives.
   */
  now?: () => number;
}

/**
 * The AWS SDK's default chain found no credentials. Its own message ("Could not load credentials from any
 * providers") names neither the sources it tried nor how to give the device some: this one does.
 */
/** The environment variables that point the default chain at a source: set and yet no credentials says much. */
const CREDENTIAL_SOURCE_VARIABLES = [
  'AWS_ACCESS_KEY_ID',
  'AWS_PROFILE',
  'AWS_WEB_IDENTITY_TOKEN_FILE',
  'AWS_CONTAINER_CREDENTIALS_FULL_URI',
  'AWS_CONTAINER_CREDENTIALS_RELATIVE_URI',
] as const;
/** What the default chain says when every source came up empty: nothing more specific to pass on. */
const GENERIC_CHAIN_MESSAGE = /^Could not load credentials from any providers\.?$/;

export class MissingCredentialsError extends Error {
  override readonly name = 'MissingCredentialsError';
  /**
   * `env`: the environment the SDK read, to say which of its sources were set and gave none (a profile that does
   * not exist, a Token Exchange Service that answers 403).
   */
  constructor(description: string, options: { cause: unknown; env: NodeJS.ProcessEnv }) {
    const set = CREDENTIAL_SOURCE_VARIABLES.filter((name) => (options.env[name] ?? '') !== '');
    const sdkMessage = String((options.cause as Error | undefined)?.message ?? '').slice(0, 500);
    const said = [
      ...(set.length > 0 ? [`${set.join(', ')} ${set.length === 1 ? 'is' : 'are'} set but gave none`] : []),
      ...(sdkMessage !== '' && !GENERIC_CHAIN_MESSAGE.test(sdkMessage) ? [`the AWS SDK: ${sdkMessage}`] : []),
    ];
    super(
      `no AWS credentials to upload to ${description}${said.length > 0 ? ` (${said.join('; ')})` : ''}: the AWS SDK tried the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), the shared config and credentials files (AWS_PROFILE), web identity (AWS_WEB_IDENTITY_TOKEN_FILE), container credentials (AWS_CONTAINER_CREDENTIALS_FULL_URI: on Greengrass, the Token Exchange Service, for a component that depends on aws.greengrass.TokenExchangeService) and EC2 instance metadata; or use the AWS IoT credentials provider: set sagemaker_edge_provider_aws_iot_cred_endpoint, sagemaker_edge_provider_aws_cert_file and sagemaker_edge_provider_aws_cert_pk_file (an AWS IoT certificate; role alias edgefleet_capture_iot_role_alias, default SageMakerEdge-<fleet>)`,
      { cause: options.cause },
    );
  }
}

/** A bucket in any S3-compatible store through the AWS SDK v3. */
export class S3ObjectStore implements ObjectStore {
  readonly description: string;
  readonly bucket: string;
  readonly client: S3Client;
  readonly #gate: RetryAfterGate;
  readonly #defaultChain: boolean;

  constructor(options: S3ObjectStoreOptions) {
    this.bucket = options.bucket;
    this.#defaultChain = options.credentials.source === 'default';
    this.#gate = new RetryAfterGate(options.now);
    this.description = `s3://${options.bucket}${options.endpoint ? ` at ${options.endpoint}` : ''}`;
    const ca =
      options.caFile === undefined ? undefined : [...rootCertificates, readFileSync(options.caFile, 'utf8')];
    this.client = new S3Client({
      region: options.region,
      ...(options.endpoint !== undefined && { endpoint: options.endpoint }),
      forcePathStyle: options.forcePathStyle ?? options.endpoint !== undefined,
      credentials: credentialsFor(options.credentials),
      maxAttempts: options.maxAttempts ?? 2,
      requestHandler: {
        requestTimeout: options.requestTimeoutMs ?? 30_000,
        throwOnRequestTimeout: true,
        connectionTimeout: options.connectionTimeoutMs ?? 5_000,
        ...(ca !== undefined && { httpsAgent: { ca, keepAlive: true } }),
      },
      // Checksums only where an operation demands them: many S3-compatible stores reject aws-chunked trailers.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    });
  }

  urlFor(key: string): string {
    return `s3://${this.bucket}/${key}`;
  }

  async put(key: string, body: Buffer, contentType: string): Promise<void> {
    this.#gate.check(this.description);
    try {
      await this.client.send(
        new PutObjectCommand({
          Bucket: this.bucket,
          Key: key,
          Body: body,
          ContentType: contentType,
          ContentLength: body.byteLength,
        }),
      );
    } catch (error) {
      if (this.#defaultChain && (error as Error | undefined)?.name === 'CredentialsProviderError')
        throw new MissingCredentialsError(this.description, { cause: error, env: process.env });
      // S3's SlowDown (503) and throttling answers may say how long to back off; the SDK's own retries are spent.
      const wait = s3RetryAfterMs(error, Date.now());
      if (wait === undefined) throw error;
      this.#gate.waitFor(wait);
      throw new RetryLaterError(`${key}: ${(error as Error).message}`, wait, { cause: error });
    }
  }

  close(): void {
    this.client.destroy();
  }
}

function credentialsFor(
  credentials: S3Credentials,
): AwsCredentials | (() => Promise<AwsCredentials>) | undefined {
  switch (credentials.source) {
    case 'default':
      return undefined;
    case 'static':
      return {
        accessKeyId: credentials.accessKeyId,
        secretAccessKey: credentials.secretAccessKey,
        ...(credentials.sessionToken !== undefined && { sessionToken: credentials.sessionToken }),
      };
    case 'iot': {
      const { source: _source, ...iot } = credentials;
      return iotCredentialProvider(iot);
    }
  }
}

/** The Retry-After of an SDK error for a 429 or 503 answer (the raw answer is on the error's hidden $response). */
function s3RetryAfterMs(error: unknown, now: number): number | undefined {
  const e = error as {
    $metadata?: { httpStatusCode?: number };
    $response?: { headers?: Record<string, string> };
  };
  const status = e?.$metadata?.httpStatusCode;
  if (status !== 429 && status !== 503) return undefined;
  const headers = e.$response?.headers ?? {};
  const name = Object.keys(headers).find((h) => h.toLowerCase() === 'retry-after');
  return retryAfterMs(name === undefined ? undefined : headers[name], now);
}
