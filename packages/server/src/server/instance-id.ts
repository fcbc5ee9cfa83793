/**
 * This server's identity across restarts: a random id kept in its data dir (`instance-id`), so that a server
 * that restarts knows the work it was doing when it stopped (packaging jobs it claimed: packaging-jobs.ts).
 * Replicas have their own data dirs, so their own ids; a data dir copied to make a replica copies the id too,
 * which costs repeated work, never mixed results (claims are fenced by their tokens). Delete the file in the copy.
 */
import { randomBytes } from 'node:crypto';
import { link, open, readFile, rm } from 'node:fs/promises';
import path from 'node:path';

export const INSTANCE_ID_FILE = 'instance-id';
const INSTANCE_ID = /^[0-9a-f]{32}$/;

/** Reads the data dir's instance id, or makes one (0600) when there is none; a file that is not one is an error. */
export async function loadInstanceId(dataDir: string): Promise<string> {
  const file = path.join(dataDir, INSTANCE_ID_FILE);
  const read = async () => {
    const text = (await readFile(file, 'utf8')).trim();
    if (!INSTANCE_ID.test(text))
      throw new Error(
        `${file} does not hold an instance id (32 hex digits); delete it and the server makes a new one`,
      );
    return text;
  };
  try {
    return await read();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
  const id = randomBytes(16).toString('hex');
  // Written whole and synced under a name of its own, then linked into place: `instance-id` never exists
  // empty or half-written, neither for a server starting beside this one nor after a power cut.
  const temp = `${file}.${randomBytes(6).toString('hex')}.tmp`;
  try {
    const handle = await open(temp, 'wx', 0o600);
    try {
      await handle.writeFile(`${id}\n`);
      await handle.sync();
    } finally {
      await handle.close();
    }
    try {
      // Exclusive: two processes starting on one data dir at once keep the first one's id.
      await link(temp, file);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EEXIST') return await read();
      throw error;
    }
    await syncDir(dataDir);
    return id;
  } finally {
    await rm(temp, { force: true });
  }
}

/** Makes the new name durable (the link is in the folder's entries). */
async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
