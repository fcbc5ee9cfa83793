import { randomBytes } from 'node:crypto';
import { mkdir, open, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/** Temporary files start with this; readers and the periodic upload skip names starting with '.'. */
export const TEMP_FILE_MARK = '.tmp-';

/**
 * Writes a file so that a reader sees either nothing or all of it: the bytes go to a hidden temporary file in
 * the same folder, are fsynced, then renamed over the final name. The caller fsyncs the folder (syncFolder) once
 * it has renamed everything it writes there, so the new names survive a power cut too.
 */
export async function writeFileAtomic(path: string, body: Uint8Array): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const staged = await stageFile(path, body);
  try {
    await rename(staged.temp, staged.path);
  } catch (error) {
    await rm(staged.temp, { force: true });
    throw error;
  }
}

/** fsync of a folder: makes the names created or renamed in it durable. */
export async function syncFolder(folder: string): Promise<void> {
  const handle = await open(folder, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** A file written under a temporary name, fsynced, waiting to be renamed into place. */
export interface StagedFile {
  temp: string;
  path: string;
}

/** Writes and fsyncs `body` under a hidden temporary name next to `path` (see writeFileAtomic). */
export async function stageFile(path: string, body: Uint8Array): Promise<StagedFile> {
  const folder = dirname(path);
  const temp = join(
    folder,
    `${TEMP_FILE_MARK}${basename(path)}-${process.pid}-${randomBytes(4).toString('hex')}`,
  );
  let handle;
  try {
    handle = await open(temp, 'wx', 0o644);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    await mkdir(folder, { recursive: true });
    handle = await open(temp, 'wx', 0o644);
  }
  try {
    await handle.writeFile(body);
    await handle.sync();
  } catch (error) {
    await handle.close().catch(() => {});
    await rm(temp, { force: true });
    throw error;
  }
  await handle.close();
  return { temp, path };
}

/** Runs `task` over `items` with at most `limit` running at once; rejects with the first failure once all settle. */
export async function eachLimit<T>(
  items: readonly T[],
  limit: number,
  task: (item: T) => Promise<void>,
): Promise<void> {
  let next = 0;
  let failure: { error: unknown } | undefined;
  const lane = async () => {
    while (next < items.length) {
      const item = items[next++]!;
      try {
        await task(item);
      } catch (error) {
        failure ??= { error };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, lane));
  if (failure) throw failure.error;
}
