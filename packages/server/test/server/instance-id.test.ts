/**
 * Review N1: the instance id is published whole. Before, the file was created by `open(…, 'wx')` and written
 * afterwards, so a server starting beside another could read it empty and refuse to start ("does not hold an
 * instance id"), and a crash or power cut between the two left it empty for good. Real files and processes.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { INSTANCE_ID_FILE, loadInstanceId } from '../../src/server/instance-id.js';

const STARTER = fileURLToPath(new URL('../support/load-instance-id.ts', import.meta.url));
const TSX_LOADER = pathToFileURL(
  path.resolve(path.dirname(STARTER), '../../../../node_modules/tsx/dist/loader.mjs'),
).href;

/**
 * A real process that loads the data dir's id with no file growth allowed (`ulimit -f 0`): its writes fail
 * after the file is created, as a crash between the two would leave it. Answers its exit code.
 */
function startWithoutRoomToWrite(dataDir: string): Promise<number | null> {
  const child = spawn(
    '/bin/sh',
    ['-c', 'ulimit -f 0; exec "$@"', 'sh', process.execPath, '--import', TSX_LOADER, STARTER, dataDir],
    { stdio: 'ignore' },
  );
  return new Promise((resolve, reject) => child.once('error', reject).once('exit', resolve));
}

let work: string;
beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-instance-id-'));
});
afterAll(() => rm(work, { recursive: true, force: true }));

describe('the instance id', () => {
  it('is one id for every starter on a fresh data dir, never read half-written, and leaves nothing else', async () => {
    for (let round = 0; round < 20; round++) {
      const dataDir = await mkdtemp(path.join(work, 'data-'));
      const ids = await Promise.all(Array.from({ length: 16 }, () => loadInstanceId(dataDir)));
      expect(new Set(ids).size).toBe(1);
      expect((await readFile(path.join(dataDir, INSTANCE_ID_FILE), 'utf8')).trim()).toBe(ids[0]);
      expect(await readdir(dataDir)).toEqual([INSTANCE_ID_FILE]);
      expect((await stat(path.join(dataDir, INSTANCE_ID_FILE))).mode & 0o777).toBe(0o600);
      expect(await loadInstanceId(dataDir)).toBe(ids[0]);
    }
  });

  it('is never left empty by a start that could not write it: the next start makes it', async () => {
    const dataDir = await mkdtemp(path.join(work, 'data-'));
    expect(await startWithoutRoomToWrite(dataDir)).not.toBe(0);
    const id = await loadInstanceId(dataDir);
    expect(id).toMatch(/^[0-9a-f]{32}$/);
    expect(await readdir(dataDir)).toEqual([INSTANCE_ID_FILE]);
  });

  it('refuses a file that does not hold one, naming it', async () => {
    const dataDir = await mkdtemp(path.join(work, 'data-'));
    await writeFile(path.join(dataDir, INSTANCE_ID_FILE), 'not an id\n');
    await expect(loadInstanceId(dataDir)).rejects.toThrow(
      `${path.join(dataDir, INSTANCE_ID_FILE)} does not hold an instance id`,
    );
  });
});
