import { randomBytes } from 'node:crypto';
import { chmod, mkdir, open, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import path from 'node:path';

export async function fileExists(file: string): Promise<boolean> {
  try {
    await stat(file);
    return true;
  } catch (error) {
    if ((error as { code?: unknown }).code === 'ENOENT') return false;
    throw error;
  }
}

/**
 * Writes key material so that it is never readable by others, even for a moment: created 0600 under a 0700
 * folder, then renamed into place (a crash leaves no half-written key).
 */
export async function writeSecretFile(file: string, content: string): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  const temp = `${file}.${randomBytes(6).toString('hex')}.tmp`;
  try {
    await writeFile(temp, content, { mode: 0o600, flag: 'wx' });
    await chmod(temp, 0o600);
    await rename(temp, file);
  } catch (error) {
    await rm(temp, { force: true });
    throw error;
  }
}

/** Public material (certificates): readable by all, written atomically. */
export async function writePublicFile(file: string, content: string): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  const temp = `${file}.${randomBytes(6).toString('hex')}.tmp`;
  await writeFile(temp, content, { mode: 0o644, flag: 'wx' });
  await rename(temp, file);
}

/** Reads a key file; `looseMode` is set when group or others may read it (worth a warning). */
export async function readSecretFile(file: string): Promise<{ content: string; looseMode: boolean }> {
  const [content, info] = await Promise.all([readFile(file, 'utf8'), stat(file)]);
  return { content, looseMode: (info.mode & 0o077) !== 0 };
}

/**
 * Creates key material once even when several servers start together on a fresh shared folder: whoever
 * creates `lockFile` first generates (unless `ready` already holds); the others wait for the lock to go and
 * then load what it wrote. A lock left by a crash is reported after `timeoutMs`, naming the file.
 */
export async function createOnce(
  lockFile: string,
  ready: () => Promise<boolean>,
  create: () => Promise<void>,
  timeoutMs = 30_000,
): Promise<void> {
  await mkdir(path.dirname(lockFile), { recursive: true, mode: 0o700 });
  let handle;
  try {
    handle = await open(lockFile, 'wx', 0o600);
  } catch (error) {
    if ((error as { code?: unknown }).code !== 'EEXIST') throw error;
    for (let waited = 0; waited < timeoutMs; waited += 100) {
      await sleep(100);
      if (!(await fileExists(lockFile)) && (await ready())) return;
    }
    throw new Error(
      `${lockFile} exists: another server is creating key material, or one crashed while doing so; ` +
        'if no other server is starting, remove the file and start again',
    );
  }
  try {
    if (!(await ready())) await create();
  } finally {
    await handle.close();
    await rm(lockFile, { force: true });
  }
}
