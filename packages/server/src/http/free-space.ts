import { statfs } from 'node:fs/promises';
import type { StateComponent } from '../errors/dependency-unavailable.js';

/** Default floor of free space under the SQLite file and the blob folder below which /readyz fails (64 MiB). */
export const DEFAULT_MIN_FREE_BYTES = 64 * 1024 * 1024;

/** The part of `fs.statfs` the check reads (injected in tests of the arithmetic only). */
export type StatFs = (folder: string) => Promise<{ bavail: number | bigint; bsize: number | bigint }>;

/**
 * Throws, saying why, when the file system holding `folder` has less than `minFreeBytes` free for an
 * unprivileged writer. Readiness asks the file system, not the last refused write: one write larger than the
 * space left (a device's big upload) fails on its own while everything else still fits, and a disk that is
 * still full must not read "ready" again only because no traffic came while the server was out of the balancer.
 * One statfs per probe: cheap.
 */
export async function checkFreeSpace(
  component: StateComponent,
  folder: string,
  minFreeBytes: number,
  read: StatFs = statfs,
): Promise<void> {
  const stats = await read(folder);
  const free = Number(stats.bavail) * Number(stats.bsize);
  if (free >= minFreeBytes) return;
  throw new Error(
    `the ${component}'s disk is full: ${free} bytes free on the file system of ${folder}, below ` +
      `storage.minFreeBytes (${minFreeBytes}); free space on it`,
  );
}
