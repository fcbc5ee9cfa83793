import type { ServerConfig } from './config-schema.js';

/**
 * Whether this server has S3: its blobs are in S3 (`--blob s3://…`), or its `s3` settings name an endpoint, a
 * region or credentials (`--blob-endpoint`, `--blob-region`, `s3.accessKeyId`). The one rule for where a fleet's
 * output goes: with S3, the fleet's own bucket through those settings (where facade packaging jobs write their
 * packages too); with none, the server's local blob folder, so that a server that never meant to use S3 does not
 * fail every capture on the AWS SDK's default credential chain.
 */
export function hasS3(config: Pick<ServerConfig, 'blobLocation' | 's3'>): boolean {
  const { endpoint, region, accessKeyId } = config.s3;
  return (
    config.blobLocation.kind === 's3' ||
    endpoint !== undefined ||
    region !== undefined ||
    accessKeyId !== undefined
  );
}
