import { randomBytes } from 'node:crypto';
import { mkdir, open, opendir, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/** Temporary files start with this; readers and the periodic upload skip names starting with '.'. */
export const TEMP_FILE_MARK = '.tmp-';

/**
 * Capture files hold model inputs and outputs: readable by the agent's user and group (a collector or the
 * upload job in the group), not by everyone, whatever folder the capture path names.
 */
export const CAPTURE_FILE_MODE = 0o640;
export const CAPTURE_FOLDER_MODE = 0o750;

/** How a file is written: `createFolder` false, a missing folder is not made (ENOENT is thrown). */
export interface WriteFileOptions {
  createFolder?: boolean;
}

/**
 * Writes a file so that a reader sees either nothing or all of it: the bytes go to a hidden temporary file in
 * the same folder, are fsynced, then renamed over the final name. The caller fsyncs the folder (syncFolder) once
 * it has renamed everything it writes there, so the new names survive a power cut too. A missing folder is made,
 * unless `createFolder` is false (a folder removed meanwhile stays removed).
 */
export async function writeFileAtomic(
  path: string,
  body: Uint8Array,
  options: WriteFileOptions = {},
): Promise<void> {
  if (options.createFolder !== false)
    await mkdir(dirname(path), { recursive: true, mode: CAPTURE_FOLDER_MODE });
  const staged = await stageFile(path, body, options);
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

/**
 * Writes and fsyncs `body` under a hidden temporary name next to `path` (see writeFileAtomic). A missing folder is
 * made, unless `createFolder` is false: then ENOENT is thrown (a folder removed meanwhile stays removed).
 */
export async function stageFile(
  path: string,
  body: Uint8Array,
  options: WriteFileOptions = {},
): Promise<StagedFile> {
  const folder = dirname(path);
  const temp = join(
    folder,
    `${TEMP_FILE_MARK}${basename(path)}-${process.pid}-${randomBytes(4).toString('hex')}`,
  );
  let handle;
  try {
    handle = await open(temp, 'wx', CAPTURE_FILE_MODE);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT' || options.createFolder === false) throw error;
    await mkdir(folder, { recursive: true, mode: CAPTURE_FOLDER_MODE });
    handle = await open(temp, 'wx', CAPTURE_FILE_MODE);
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

/** The process id in a temporary file's name (see stageFile), or undefined when the name has none. */
function writerOf(name: string): number | undefined {
  const match = /-(\d+)-[0-9a-f]{8}$/.exec(name);
  return match ? Number(match[1]) : undefined;
}

function isAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Removes the temporary files under `root` that a writer killed mid-write left behind (their names start with
 * TEMP_FILE_MARK and end with the writer's process id; files of a process still running are left alone).
 * Symbolic links are not followed. Returns how many it removed; a missing root is fine.
 */
export async function sweepTemporaryFiles(root: string): Promise<number> {
  let removed = 0;
  const walk = async (folder: string): Promise<void> => {
    let entries;
    try {
      entries = await opendir(folder);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw error;
    }
    for await (const entry of entries) {
      const path = join(folder, entry.name);
      if (entry.isDirectory()) await walk(path);
      else if (entry.isFile() && entry.name.startsWith(TEMP_FILE_MARK)) {
        const writer = writerOf(entry.name);
        if (writer !== undefined && isAlive(writer)) continue;
        await rm(path, { force: true });
        removed++;
      }
    }
  };
  await walk(root);
  return removed;
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
