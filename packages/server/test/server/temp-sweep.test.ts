import { request } from 'node:http';
import { mkdir, mkdtemp, readdir, rm, utimes, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { STALE_TEMP_AFTER_MS } from '../../src/server/temp-sweep.js';
import { runServerCli, startServerProcess } from '../support/process.js';
import { startTestServer } from '../support/server.js';

const dirs: string[] = [];
afterAll(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

const age = async (file: string, ms: number) => {
  const at = new Date(Date.now() - ms);
  await utimes(file, at, at);
};

describe('temporary files a killed server left behind (issue 15, item 8)', () => {
  it('are removed at start, except what another live process is still writing', async () => {
    const dataDir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-sweep-'));
    dirs.push(dataDir);
    const tmp = path.join(dataDir, 'tmp');
    const stale = STALE_TEMP_AFTER_MS + 60_000;
    await mkdir(path.join(tmp, 'job-old-abc'), { recursive: true });
    await writeFile(path.join(tmp, 'job-old-abc', 'model.onnx'), Buffer.alloc(4096));
    await age(path.join(tmp, 'job-old-abc', 'model.onnx'), stale);
    await age(path.join(tmp, 'job-old-abc'), stale);
    await writeFile(path.join(tmp, 'upload-0123456789abcdef'), Buffer.alloc(8192));
    await age(path.join(tmp, 'upload-0123456789abcdef'), stale);
    // Another replica's job: its folder is old but a file inside it is being written now.
    await mkdir(path.join(tmp, 'job-live-def'));
    await age(path.join(tmp, 'job-live-def'), stale);
    await writeFile(path.join(tmp, 'job-live-def', 'package.tar.gz'), 'growing');
    await writeFile(path.join(tmp, 'upload-fedcba9876543210'), 'an upload in progress');
    await writeFile(path.join(tmp, 'operator-notes.txt'), 'not ours');
    await age(path.join(tmp, 'operator-notes.txt'), stale);

    const t = await startTestServer({ dataDir });
    try {
      expect((await readdir(tmp)).sort()).toEqual([
        'job-live-def',
        'operator-notes.txt',
        'upload-fedcba9876543210',
      ]);
    } finally {
      await t.stop();
    }
  });

  it('reproduced: an upload cut short by SIGKILL leaves its spool file, which the next start removes', async () => {
    const cwd = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-sweep-kill-'));
    dirs.push(cwd);
    const init = await runServerCli(['init'], cwd);
    expect(init.code).toBe(0);
    const token = init.stdout.trim();
    const server = await startServerProcess(
      ['--listen', '127.0.0.1:0', '--device-listen', '127.0.0.1:0'],
      cwd,
    );
    const tmp = path.join(cwd, '.edgefleet', 'server', 'tmp');
    let spooled: string[] = [];
    try {
      // An upload whose body never ends: the server spools what arrived to tmp/upload-*.
      const upload = request(`${server.operatorUrl}/api/v1/models/tiny/versions/1`, {
        method: 'POST',
        headers: {
          authorization: `Bearer ${token}`,
          'content-type': 'application/octet-stream',
          'content-length': String(1024 * 1024),
        },
      });
      upload.on('error', () => undefined);
      upload.write(Buffer.alloc(64 * 1024));
      for (let attempt = 0; attempt < 200 && spooled.length === 0; attempt++) {
        await new Promise((resolve) => setTimeout(resolve, 50));
        spooled = (await readdir(tmp).catch(() => [] as string[])).filter((n) => n.startsWith('upload-'));
      }
      expect(spooled).toHaveLength(1);
    } finally {
      await server.stop('SIGKILL');
    }
    const leftover = path.join(tmp, spooled[0]!);
    expect((await readdir(tmp)).includes(spooled[0]!)).toBe(true);

    // Nothing touches it again; an hour later the next start finds it stale.
    await age(leftover, STALE_TEMP_AFTER_MS + 60_000);
    const restarted = await startServerProcess(
      ['--listen', '127.0.0.1:0', '--device-listen', '127.0.0.1:0'],
      cwd,
    );
    try {
      expect((await readdir(tmp)).filter((n) => n.startsWith('upload-'))).toEqual([]);
      expect(restarted.logs.some((l) => l.msg === 'removed temporary files left by an earlier run')).toBe(
        true,
      );
    } finally {
      await restarted.stop();
    }
  }, 60_000);
});
