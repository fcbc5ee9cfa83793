/**
 * Captures a server kept in its local blob folder before it had S3 settings (`<blob folder>/fleet-output/<bucket>/`)
 * stay there once it has them: new ones go to the fleets' buckets, where the records' `data-ref`s point, and the
 * old ones must be copied there by hand. The server says so at each start while any are left.
 */
import { readdir } from 'node:fs/promises';
import path from 'node:path';

/** The buckets with captures left in `<blobRoot>/fleet-output/`, in name order; empty when none. */
export async function bucketsWithLocalCaptures(blobRoot: string): Promise<string[]> {
  try {
    const entries = await readdir(path.join(blobRoot, 'fleet-output'), { withFileTypes: true });
    return entries
      .filter((entry) => entry.isDirectory())
      .map((entry) => entry.name)
      .sort();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw error;
  }
}

/** The start-up warning for `buckets` left in `<blobRoot>/fleet-output/`, on a server that writes to S3. */
export function localCapturesLeftWarning(blobRoot: string, buckets: readonly string[]): string {
  const folder = path.join(blobRoot, 'fleet-output');
  return (
    `captures kept in ${folder} before the server had S3 settings are still there (bucket${buckets.length === 1 ? '' : 's'} ` +
    `${buckets.join(', ')}): the server now writes captures to the fleets' buckets, and their records' data-refs ` +
    `point there; copy each with "aws s3 sync ${folder}/<bucket>/ s3://<bucket>/" (adding --sse aws:kms ` +
    '--sse-kms-key-id <key> for a fleet with a KMS key, --endpoint-url for an S3-compatible store) once every ' +
    'replica runs this version, then remove the folder'
  );
}
