import { randomBytes } from 'node:crypto';
import { chmod, link, mkdir, open, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
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
 * Moves a finished temporary file to `file` unless `file` exists: a hard link is created exclusively (so key
 * material is never replaced, and a reader never sees a half-written file), then the temporary is removed.
 * Where the file system has no hard links, a rename after an existence check (the creation lock serialises).
 */
async function publishExclusive(temp: string, file: string): Promise<void> {
  try {
    await link(temp, file);
  } catch (error) {
    const code = (error as { code?: unknown }).code;
    if (code === 'EEXIST')
      throw new Error(`${file} already exists: another server created key material at the same time`, {
        cause: error,
      });
    if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'ENOSYS' && code !== 'EOPNOTSUPP') throw error;
    if (await fileExists(file)) throw new Error(`${file} already exists`);
    await rename(temp, file);
    return;
  }
  await rm(temp, { force: true });
}

/**
 * Writes new key material: created with `mode` (0600 for keys, so never readable by others even for a
 * moment; 0644 for certificates) under a 0700 folder, then published exclusively (a crash leaves no
 * half-written file; an existing one is never replaced).
 */
async function writeNewFile(file: string, content: string, mode: 0o600 | 0o644): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  const temp = `${file}.${randomBytes(6).toString('hex')}.tmp`;
  try {
    await writeFile(temp, content, { mode, flag: 'wx' });
    await chmod(temp, mode); // whatever the umask
    await publishExclusive(temp, file);
  } finally {
    await rm(temp, { force: true });
  }
}

/** Reads a key file; `looseMode` is set when group or others may read it (worth a warning). */
export async function readSecretFile(file: string): Promise<{ content: string; looseMode: boolean }> {
  const [content, info] = await Promise.all([readFile(file, 'utf8'), stat(file)]);
  return { content, looseMode: (info.mode & 0o077) !== 0 };
}

/** How a creator under `createOnce` publishes key material, so that a failed creation can be undone. */
export interface KeyFilePublisher {
  secret(file: string, content: string): Promise<void>;
  public(file: string, content: string): Promise<void>;
}

/**
 * Creates key material once even when several servers start together on a fresh shared folder: whoever
 * creates `lockFile` (exclusively) generates, unless `ready` already holds; the others wait while the lock
 * exists and load what the winner wrote once `ready` holds. A creator that fails (a full disk between the key
 * and its certificate) removes the files it published while it still holds the lock, then its lock; a waiter
 * then takes the lock and tries itself, finding no half-written set. A lock left by a crash is reported after
 * `timeoutMs`, naming the file. `create` runs only under the lock, so it may read the files without racing
 * another creator.
 */
export async function createOnce(
  lockFile: string,
  ready: () => Promise<boolean>,
  create: (publish: KeyFilePublisher) => Promise<void>,
  timeoutMs = 30_000,
): Promise<void> {
  await mkdir(path.dirname(lockFile), { recursive: true, mode: 0o700 });
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await ready()) return;
    let handle;
    try {
      handle = await open(lockFile, 'wx', 0o600);
    } catch (error) {
      if ((error as { code?: unknown }).code !== 'EEXIST') throw error;
      if (Date.now() >= deadline)
        throw new Error(
          `${lockFile} exists: another server is creating key material, or one crashed while doing so; ` +
            'if no other server is starting, remove the file and start again',
        );
      await sleep(100);
      continue;
    }
    const published: string[] = [];
    try {
      if (!(await ready())) {
        await create({
          secret: async (file, content) => {
            await writeNewFile(file, content, 0o600);
            published.push(file);
          },
          public: async (file, content) => {
            await writeNewFile(file, content, 0o644);
            published.push(file);
          },
        });
      }
    } catch (error) {
      await Promise.all(published.map((file) => rm(file, { force: true })));
      throw error;
    } finally {
      await handle.close();
      await rm(lockFile, { force: true });
    }
    return;
  }
}
