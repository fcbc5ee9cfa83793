export {
  assertValidBlobKey,
  BlobNotFoundError,
  type BlobBody,
  type BlobInfo,
  type BlobStore,
  type ByteRange,
  type PutBlobOptions,
} from './blob-store.js';
export { LocalBlobStore } from './local-blob-store.js';
export { S3BlobStore, type S3BlobStoreOptions } from './s3-blob-store.js';
export {
  createBlobStore,
  parseBlobLocation,
  type BlobLocation,
  type S3ConnectionOptions,
} from './blob-location.js';
