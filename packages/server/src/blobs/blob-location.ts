import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { BlobStore } from './blob-store.js';
import { LocalBlobStore } from './local-blob-store.js';
import { S3BlobStore, type S3BlobStoreOptions } from './s3-blob-store.js';

export type BlobLocation = { kind: 'local'; root: string } | { kind: 's3'; bucket: string; prefix: string };

/**
 * Reads a `--blob` value: `s3://bucket/prefix` selects an S3-compatible store; `file://…`, `file:<path>`
 * or a plain path selects a local folder (relative paths resolve against `baseDir`).
 */
export function parseBlobLocation(value: string, baseDir: string): BlobLocation {
  const trimmed = value.trim();
  if (trimmed === '') throw new Error('blob location is empty; expected s3://bucket/prefix or a folder path');
  const s3 = /^s3:\/\/([^/]+)\/?(.*)$/i.exec(trimmed);
  if (s3) {
    const bucket = s3[1] ?? '';
    if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) {
      throw new Error(`invalid S3 bucket name "${bucket}" in "${value}"; expected 3-63 of a-z 0-9 . -`);
    }
    return { kind: 's3', bucket, prefix: (s3[2] ?? '').replace(/^\/+|\/+$/g, '') };
  }
  if (/^file:\/\//i.test(trimmed)) return { kind: 'local', root: fileURLToPath(trimmed) };
  const plain = trimmed.replace(/^file:/i, '');
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(plain)) {
    throw new Error(`unsupported blob location "${value}"; expected s3://bucket/prefix or a folder path`);
  }
  return { kind: 'local', root: path.resolve(baseDir, plain) };
}

export type S3ConnectionOptions = Omit<S3BlobStoreOptions, 'bucket' | 'prefix'>;

/** `onLocalWrite`: a local folder's blob stored (LocalBlobStore's onWritten); an S3 store's disks are not the server's. */
export function createBlobStore(
  location: BlobLocation,
  s3: S3ConnectionOptions = {},
  options: { onLocalWrite?: () => void } = {},
): BlobStore {
  return location.kind === 'local'
    ? new LocalBlobStore(
        location.root,
        options.onLocalWrite === undefined ? {} : { onWritten: options.onLocalWrite },
      )
    : new S3BlobStore({ ...s3, bucket: location.bucket, prefix: location.prefix });
}
