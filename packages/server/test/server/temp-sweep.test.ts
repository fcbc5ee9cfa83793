import { mkdir, mkdtemp, readdir, rm, utimes, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { STALE_TEMP_AFTER_MS } from '../../src/server/temp-sweep.js';
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
});
