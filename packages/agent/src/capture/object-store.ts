import { readFileSync } from 'node:fs';
import { rootCertificates } from 'node:tls';
import { PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { iotCredentialProvider, type AwsCredentials, type IotCredentialsOptions } from './iot-credentials.js';

/**
 * The store answered that it will never take this data (the control plane's 400, 403 or 413): retrying cannot
 * help, so the spool drops the batch (its captures become FAILURE with this reason) instead of holding every
 * later batch behind it.
 */
export class RefusedByStoreError extends Error {
  override readonly name = 'RefusedByStoreError';
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
}

/** A bucket in any S3-compatible store through the AWS SDK v3. */
export class S3ObjectStore implements ObjectStore {
  readonly description: string;
  readonly bucket: string;
  readonly client: S3Client;

  constructor(options: S3ObjectStoreOptions) {
    this.bucket = options.bucket;
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
    await this.client.send(
      new PutObjectCommand({
        Bucket: this.bucket,
        Key: key,
        Body: body,
        ContentType: contentType,
        ContentLength: body.byteLength,
      }),
    );
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
