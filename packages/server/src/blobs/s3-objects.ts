import type { Readable } from 'node:stream';
import { splitS3Uri } from '../fields/index.js';
import { invalid } from '../errors/index.js';
import type { S3ConnectionOptions } from './blob-location.js';
import { assertValidBlobKey, BlobNotFoundError, type BlobBody, type PutBlobOptions } from './blob-store.js';
import { S3BlobStore } from './s3-blob-store.js';

/**
 * Objects named by `s3://bucket/key` on the S3-compatible store the server is configured for (the same
 * endpoint and credentials as its blob store), in any bucket: where SageMaker clients keep model inputs and
 * want package outputs.
 */
export class S3Objects {
  constructor(private readonly connection: S3ConnectionOptions) {}

  /**
   * `signal`: aborting it ends the read wherever it is (waiting for the answer, or mid-body: the body stream is
   * destroyed with the signal's reason) and frees its socket.
   */
  async get(uri: string, options: { signal?: AbortSignal } = {}): Promise<Readable> {
    const { store, key } = this.storeFor(uri);
    const { signal } = options;
    let body: Readable;
    try {
      signal?.throwIfAborted();
      body = await store.get(key, undefined, signal !== undefined ? { signal } : {});
    } catch (error) {
      await store.close();
      if (signal?.aborted) throw signal.reason;
      if (error instanceof BlobNotFoundError) throw invalid(`${uri} does not exist or cannot be read`);
      throw this.explained('read', uri, error);
    }
    if (signal !== undefined) {
      const abort = () => body.destroy(signal.reason instanceof Error ? signal.reason : undefined);
      if (signal.aborted) abort();
      signal.addEventListener('abort', abort, { once: true });
      body.once('close', () => signal.removeEventListener('abort', abort));
    }
    // The client goes once the body has been read (or abandoned), not before: that would cut it.
    body.once('close', () => void store.close());
    return body;
  }

  async put(uri: string, body: BlobBody, options?: PutBlobOptions): Promise<void> {
    const { store, key } = this.storeFor(uri);
    try {
      await store.put(key, body, options);
    } catch (error) {
      throw this.explained('write', uri, error);
    } finally {
      await store.close();
    }
  }

  /**
   * The store's own error with what it was doing and where. When the error is one the S3 settings decide (often the
   * AWS SDK's "Could not load credentials from any providers" on a server with no S3 settings, or a refused key or
   * unreachable endpoint), also which settings those are: a SageMaker client does not know that the server reads
   * its s3:// URIs with its own settings. Other failures (a missing bucket, a client that went away mid-upload)
   * would be misled by that advice.
   */
  private explained(action: 'read' | 'write', uri: string, error: unknown): Error {
    const where =
      this.connection.endpoint !== undefined ? `the S3 endpoint ${this.connection.endpoint}` : 'AWS S3';
    const cause = error instanceof Error ? error.message : String(error);
    if (!settingsDecide(error))
      return new Error(`cannot ${action} ${uri} on ${where}: ${cause}`, { cause: error });
    const credentials =
      this.connection.credentials !== undefined
        ? 'with the configured s3.accessKeyId'
        : "with no credentials configured (the AWS SDK's default chain)";
    return new Error(
      // The store's words last: a stored failure reason is cut at 1 KiB, and the settings matter more.
      `cannot ${action} ${uri} on ${where} ${credentials}. The server reaches s3:// URIs through its own S3 settings: set s3.accessKeyId and s3.secretAccessKey (config file; or the AWS SDK's AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), and for an S3-compatible store --blob-endpoint (EDGEFLEET_BLOB_ENDPOINT, s3.endpoint) and --blob-region (s3.region). The store said: ${cause}`,
      { cause: error },
    );
  }

  private storeFor(uri: string): { store: S3BlobStore; key: string } {
    if (!uri.startsWith('s3://')) throw invalid(`expected an s3://bucket/key URI; got ${uri}`);
    const { bucket, prefix } = splitS3Uri(uri);
    if (bucket === '' || prefix === '') throw invalid(`expected an s3://bucket/key URI; got ${uri}`);
    try {
      assertValidBlobKey(prefix);
    } catch (error) {
      throw invalid(`${uri}: ${error instanceof Error ? error.message : String(error)}`);
    }
    return { store: new S3BlobStore({ ...this.connection, bucket, prefix: '' }), key: prefix };
  }
}

/** The AWS SDK's error names for credentials it has not, or that the store refuses. */
const CREDENTIAL_ERRORS = new Set([
  'CredentialsProviderError',
  'InvalidAccessKeyId',
  'SignatureDoesNotMatch',
  'AccessDenied',
  'ExpiredToken',
  'InvalidToken',
]);
/** Socket error codes for an endpoint that is not there (a wrong s3.endpoint or region). */
const ENDPOINT_ERRORS = new Set(['ENOTFOUND', 'EAI_AGAIN', 'ECONNREFUSED']);

/** Whether the S3 settings (credentials, endpoint, region) decide `error`, here or in its causes. */
function settingsDecide(error: unknown): boolean {
  for (let at = error, depth = 0; at !== undefined && at !== null && depth < 5; depth++) {
    const { name, code, errors } = at as { name?: unknown; code?: unknown; errors?: unknown };
    if (typeof name === 'string' && CREDENTIAL_ERRORS.has(name)) return true;
    if (typeof code === 'string' && ENDPOINT_ERRORS.has(code)) return true;
    // A connection to each of a name's addresses failed: an AggregateError of the socket errors.
    if (Array.isArray(errors) && errors.some(settingsDecide)) return true;
    at = (at as { cause?: unknown }).cause;
  }
  return false;
}
