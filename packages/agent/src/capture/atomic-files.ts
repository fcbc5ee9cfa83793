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
  const folder = dirname(path);
  const temp = join(
    folder,
    `${TEMP_FILE_MARK}${basename(path)}-${process.pid}-${randomBytes(4).toString('hex')}`,
  );
  await mkdir(folder, { recursive: true });
  let handle;
  try {
    handle = await open(temp, 'wx', 0o644);
  } catch (error) {
    // The folder may have been removed (periodic upload prunes empty folders) between mkdir and open.
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
  try {
    await rename(temp, path);
  } catch (error) {
    await rm(temp, { force: true });
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
