import { lstat, readdir, rm } from 'node:fs/promises';
import path from 'node:path';

/** Names of the temporary files and folders the server makes in its work dir (uploads, packaging, inspection). */
const TEMP_NAME = /^(upload|job|inspect)-/;

/** Untouched for this long, a temporary file belongs to no live process: uploads and jobs write continuously. */
export const STALE_TEMP_AFTER_MS = 60 * 60 * 1000;

export interface TempSweepResult {
  removed: string[];
  bytes: number;
}

/** The latest modification under a path, and its size in bytes (a folder: everything inside it). */
async function newestAndSize(target: string): Promise<{ newestMs: number; bytes: number }> {
  const info = await lstat(target);
  if (!info.isDirectory()) return { newestMs: info.mtimeMs, bytes: info.size };
  let newestMs = info.mtimeMs;
  let bytes = 0;
  for (const entry of await readdir(target)) {
    const inner = await newestAndSize(path.join(target, entry));
    newestMs = Math.max(newestMs, inner.newestMs);
    bytes += inner.bytes;
  }
  return { newestMs, bytes };
}

/**
 * Removes temporary files a killed server left in its work dir. Replicas may share the folder, so only what
 * nothing has touched for `olderThanMs` goes (a folder counts as touched when anything inside it was): a
 * live upload or packaging job keeps writing, so it is never taken from under another process.
 */
export async function sweepStaleTempFiles(
  workDir: string,
  options: { olderThanMs?: number; now?: number } = {},
): Promise<TempSweepResult> {
  const cutoff = (options.now ?? Date.now()) - (options.olderThanMs ?? STALE_TEMP_AFTER_MS);
  const result: TempSweepResult = { removed: [], bytes: 0 };
  let entries: string[];
  try {
    entries = await readdir(workDir);
  } catch {
    return result; // no work dir yet: nothing was left behind
  }
  for (const name of entries) {
    if (!TEMP_NAME.test(name)) continue;
    const target = path.join(workDir, name);
    try {
      const { newestMs, bytes } = await newestAndSize(target);
      if (newestMs >= cutoff) continue;
      await rm(target, { recursive: true, force: true });
      result.removed.push(target);
      result.bytes += bytes;
    } catch {
      // Removed meanwhile by its owner, or unreadable: not ours to report.
    }
  }
  return result;
}
