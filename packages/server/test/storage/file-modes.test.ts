/**
 * Audit s8 finding 8: the state database (with its -wal and -shm) and local blobs are owner-only, also when
 * they lie outside the 0700 data dir (--database /var/lib/…, --blob /srv/blobs).
 */
import { chmod, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { getTestModel } from '@edgefleet/core';
import { afterEach, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../support/server.js';

const modeOf = async (file: string) => (await stat(file)).mode & 0o777;

/** Every folder and file under `root`, with its mode. */
async function walk(root: string): Promise<{ dirs: Map<string, number>; files: Map<string, number> }> {
  const dirs = new Map([[root, await modeOf(root)]]);
  const files = new Map<string, number>();
  for (const entry of await readdir(root, { withFileTypes: true, recursive: true })) {
    const full = path.join(entry.parentPath, entry.name);
    (entry.isDirectory() ? dirs : files).set(full, await modeOf(full));
  }
  return { dirs, files };
}

describe('file modes of the state database and local blobs outside the data dir', () => {
  let outside: string | undefined;
  let t: TestServer | undefined;
  afterEach(async () => {
    await t?.stop();
    t = undefined;
    if (outside !== undefined) await rm(outside, { recursive: true, force: true });
    outside = undefined;
  });

  const start = async (databaseFile: string, blobDir: string) => {
    t = await startTestServer({ database: { engine: 'sqlite', file: databaseFile }, blob: blobDir });
    return t;
  };

  it('creates state.db, its -wal and -shm 0600, and blob folders 0700 with files 0600', async () => {
    outside = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-outside-'));
    // Without the fix these would take the process umask: the control shows it lets others read.
    const control = path.join(outside, 'control');
    await writeFile(control, '');
    expect((await modeOf(control)) & 0o044).not.toBe(0);

    const databaseFile = path.join(outside, 'var', 'lib', 'state.db');
    const blobDir = path.join(outside, 'srv', 'blobs');
    const server = await start(databaseFile, blobDir);
    const uploaded = await fetch(`${server.url}/api/v1/models/tiny/versions/1`, {
      method: 'POST',
      headers: { authorization: `Bearer ${server.adminToken}`, 'content-type': 'application/octet-stream' },
      body: Buffer.from(getTestModel('tiny').build()),
    });
    expect(uploaded.status).toBe(201);

    for (const file of [databaseFile, `${databaseFile}-wal`, `${databaseFile}-shm`]) {
      expect({ file, mode: (await modeOf(file)).toString(8) }).toEqual({ file, mode: '600' });
    }
    expect((await modeOf(path.dirname(databaseFile))).toString(8)).toBe('700');
    const blobs = await walk(blobDir);
    expect(blobs.files.size).toBeGreaterThan(0);
    for (const [dir, mode] of blobs.dirs)
      expect({ dir, mode: mode.toString(8) }).toEqual({ dir, mode: '700' });
    for (const [file, mode] of blobs.files) {
      expect({ file, mode: mode.toString(8) }).toEqual({ file, mode: '600' });
    }
  });

  it('takes group and other access off a database file an older release left readable', async () => {
    outside = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-outside-'));
    const databaseFile = path.join(outside, 'state.db');
    // An empty file is an empty SQLite database: what an older release's first start left, but 0644.
    await writeFile(databaseFile, '');
    await chmod(databaseFile, 0o644);
    await start(databaseFile, path.join(outside, 'blobs'));
    expect((await modeOf(databaseFile)).toString(8)).toBe('600');
    expect((await modeOf(`${databaseFile}-wal`)).toString(8)).toBe('600');
  });
});
