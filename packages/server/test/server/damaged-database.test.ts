/**
 * A damaged SQLite state.db (finding F6): `serve` stops with exit 2 (a person must act; the unit does not restart
 * it), naming the file, saying it is damaged and how to restore it, instead of "database migration unknown
 * failed" and exit 1 (restarted every 2 s for ever). A real database made by a real server, damaged as a disk
 * would: bytes overwritten at page offsets; real `serve` processes.
 */
import { copyFile, mkdtemp, open, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { noise } from '../support/noise.js';
import { runServerCli } from '../support/process.js';
import { startTestServer } from '../support/server.js';

const PAGE = 4096;

async function overwrite(file: string, offset: number, bytes: Buffer): Promise<void> {
  const handle = await open(file, 'r+');
  try {
    await handle.write(bytes, 0, bytes.length, offset);
  } finally {
    await handle.close();
  }
}

describe('a damaged SQLite database at start', { timeout: 120_000 }, () => {
  let dataDir: string;
  let stateDb: string;
  const intact = () => `${stateDb}.intact`;
  beforeAll(async () => {
    dataDir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-damaged-'));
    const t = await startTestServer({ dataDir });
    stateDb = t.server.database.description.replace(/^sqlite:/, '');
    await t.stop();
    await copyFile(stateDb, intact());
  });
  afterAll(async () => rm(dataDir, { recursive: true, force: true }));

  const serve = () =>
    runServerCli(
      ['serve', '--config', path.join(dataDir, 'test-config.json'), '--log-level', 'warn'],
      dataDir,
    );

  it.each([
    { what: 'two b-tree pages overwritten', offset: 3 * PAGE, length: 2 * PAGE },
    { what: 'the file header overwritten (not a database any more)', offset: 0, length: 100 },
  ])('$what: exit 2 naming the file, that it is damaged, and restore --from', async ({ offset, length }) => {
    await copyFile(intact(), stateDb);
    await overwrite(stateDb, offset, noise(length, offset + 1));
    const damaged = await readFile(stateDb);

    const result = await serve();
    expect(result.code).toBe(2);
    expect(result.stderr).toContain(`edgefleet-server: the SQLite database ${stateDb} is damaged (`);
    expect(result.stderr).toContain('edgefleet-server restore --from <backup file>');
    expect(result.stderr).toContain('packages/server/README.md#backup-and-restore');
    expect(result.stderr).not.toMatch(/migration/);
    // Left as it was found, for the person who restores it (restore keeps it beside the restored one).
    expect((await readFile(stateDb)).equals(damaged)).toBe(true);
  });
});
