import { randomBytes } from 'node:crypto';
import { chmod, mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
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
