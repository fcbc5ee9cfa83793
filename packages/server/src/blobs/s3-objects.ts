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

  async get(uri: string): Promise<Readable> {
    const { store, key } = this.storeFor(uri);
    let body: Readable;
    try {
      body = await store.get(key);
    } catch (error) {
      await store.close();
      if (error instanceof BlobNotFoundError) throw invalid(`${uri} does not exist or cannot be read`);
      throw error;
    }
    // The client goes once the body has been read (or abandoned), not before: that would cut it.
    body.once('close', () => void store.close());
    return body;
  }

  async put(uri: string, body: BlobBody, options?: PutBlobOptions): Promise<void> {
    const { store, key } = this.storeFor(uri);
    try {
      await store.put(key, body, options);
    } finally {
      await store.close();
    }
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
