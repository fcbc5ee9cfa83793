/**
 * A transient I/O error of the disk under the SQLite database, made for real: the running `serve` process's file
 * size limit (RLIMIT_FSIZE, set with prlimit) lowered below the database's pages, so that SQLite's next write
 * fails with EFBIG, which it reports as SQLITE_IOERR_WRITE (Node ignores SIGXFSZ). /readyz then reports the
 * database not ready; once the limit is lifted, the next write that succeeds makes it ready again at once, not
 * only after the 30 s window.
 */
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServerProcess } from '../support/process.js';
import { startTestServer } from '../support/server.js';

const havePrlimit = spawnSync('prlimit', ['--version'], { stdio: 'ignore' }).status === 0;

function setFileSizeLimit(pid: number, limit: string): void {
  // soft:hard, the hard limit left unlimited so that the soft one can be raised again.
  const result = spawnSync('prlimit', ['--pid', String(pid), `--fsize=${limit}`], { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`prlimit failed: ${result.stderr}`);
}

describe.skipIf(!havePrlimit)(
  'readiness after a transient I/O error of the database disk',
  { timeout: 120_000 },
  () => {
    let dataDir: string;
    let adminToken: string;
    beforeAll(async () => {
      dataDir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-io-error-'));
      const t = await startTestServer({ dataDir });
      adminToken = t.adminToken;
      await t.stop();
    });
    afterAll(async () => rm(dataDir, { recursive: true, force: true }));

    it('is not ready after the write the disk failed, and ready again at the next write that succeeds', async () => {
      const server = await startServerProcess(
        ['--config', path.join(dataDir, 'test-config.json'), '--log-level', 'info'],
        dataDir,
      );
      const createToken = (name: string) =>
        fetch(`${server.operatorUrl}/api/v1/tokens`, {
          method: 'POST',
          headers: { authorization: `Bearer ${adminToken}`, 'content-type': 'application/json' },
          body: JSON.stringify({ name, scope: 'read-only' }),
        });
      const ready = async () => (await fetch(`${server.operatorUrl}/readyz`)).status;
      try {
        expect(await ready()).toBe(200);
        // No file of the process may grow past its first page: the WAL's next frame cannot be written.
        setFileSizeLimit(server.child.pid!, '4096:unlimited');
        const refused = await createToken('refused');
        expect(refused.status).toBe(503);
        expect(await refused.json()).toMatchObject({
          code: 'DependencyUnavailable',
          details: { component: 'database', cause: 'diskError' },
        });
        expect(await ready()).toBe(503);

        setFileSizeLimit(server.child.pid!, 'unlimited:unlimited');
        // Not asked here whether the window is still open: a background write (a sweeper, the server registry's
        // renewal) may land first and clear it, as it should. What clears it is covered where nothing else writes
        // (test/storage/disk-faults.test.ts, onWriteCommitted); here, the request's write does at the latest.
        expect((await createToken('accepted')).status).toBe(201);
        expect(await ready()).toBe(200);
      } finally {
        expect(await server.stop()).toBe(0);
      }
    });
  },
);
