// blob-store.ts is the capability's contract (interface, key rules, errors): all of it is public.
export * from './blob-store.js';
export { LocalBlobStore } from './local-blob-store.js';
export { S3BlobStore, s3ProblemOf, type S3BlobStoreOptions } from './s3-blob-store.js';
export { S3Objects } from './s3-objects.js';
export {
  createBlobStore,
  parseBlobLocation,
  type BlobLocation,
  type S3ConnectionOptions,
} from './blob-location.js';
