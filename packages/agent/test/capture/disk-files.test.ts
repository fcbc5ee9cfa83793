import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_ORT_SESSION_CONFIG, InferencePool } from '../../src/inference/index.js';
import { ModelRegistry } from '../../src/models/index.js';
import { DiskDestination, startCaptureService } from '../../src/capture/index.js';
import { testSettings } from './helpers.js';

// Issue 15 items 8 and 14: temporary files left by a killed agent were never cleaned, and capture files were
// 0644 in 0755 folders wherever the capture path pointed.

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'edgefleet-disk-files-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

/** A temporary file as stageFile names it, written by a real process that is then SIGKILLed mid-write. */
async function leftByKilledWriter(folder: string, name: string): Promise<string> {
  const script = `
    const fs = require('fs');
    const path = require('path').join(${JSON.stringify(folder)}, '.tmp-${name}-' + process.pid + '-0123abcd');
    fs.writeFileSync(path, 'half a file');
    console.log(path);
    setInterval(() => {}, 1000);`;
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  const path = await new Promise<string>((resolve) =>
    child.stdout.setEncoding('utf8').once('data', (text: string) => resolve(text.trim())),
  );
  child.kill('SIGKILL');
  await new Promise((resolve) => child.once('exit', resolve));
  return path;
}

describe('capture files on disk', () => {
  it('are written readable by owner and group only, in folders closed to others', async () => {
    const destination = new DiskDestination(join(root, 'custom', 'path'));
    await destination.write([
      {
        key: 'sme-capture/m/2026/01/02/03/side.bin',
        body: Buffer.from('side'),
        contentType: 'application/octet-stream',
        kind: 'side',
      },
      {
        key: 'sme-capture/m/2026/01/02/03/a.jsonl',
        body: Buffer.from('{}\n'),
        contentType: 'application/jsonl',
        kind: 'manifest',
      },
    ]);
    const file = await stat(destination.pathOf('sme-capture/m/2026/01/02/03/a.jsonl'));
    // Whatever the umask adds, nothing for others and no execute bits; at most 0640.
    expect(file.mode & 0o777 & ~0o640).toBe(0);
    for (const folder of [
      'custom/path',
      'custom/path/sme-capture',
      'custom/path/sme-capture/m/2026/01/02/03',
    ]) {
      expect((await stat(join(root, folder))).mode & 0o007).toBe(0);
    }
  });

  it('sweeps temporary files of killed writers, keeping those of live ones and everything else', async () => {
    const folder = join(root, 'sweep', 'sme-capture', 'm');
    await mkdir(folder, { recursive: true });
    const stale = await leftByKilledWriter(folder, 'a.jsonl');
    const ours = join(folder, `.tmp-b.jsonl-${process.pid}-0123abcd`);
    await writeFile(ours, 'being written');
    await writeFile(join(folder, 'c.jsonl'), '{}\n');
    const destination = new DiskDestination(join(root, 'sweep'));
    expect(await destination.sweep()).toBe(1);
    expect(existsSync(stale)).toBe(false);
    expect((await readdir(folder)).sort()).toEqual([`.tmp-b.jsonl-${process.pid}-0123abcd`, 'c.jsonl']);
    expect(await new DiskDestination(join(root, 'missing')).sweep()).toBe(0);
  });

  it('are swept when capture starts', async () => {
    const work = join(root, 'start');
    const settings = testSettings(work);
    const folder = join(settings.diskPath, 'sme-capture', 'm');
    await mkdir(folder, { recursive: true });
    const stale = await leftByKilledWriter(folder, 'x.bin');
    const pool = await InferencePool.start({ workers: 1, session: DEFAULT_ORT_SESSION_CONFIG });
    const registry = new ModelRegistry({ pool, trust: null, cwd: work });
    try {
      const capture = await startCaptureService({ settings, models: registry });
      expect(existsSync(stale)).toBe(false);
      await capture.close();
    } finally {
      await registry.close();
      await pool.close();
    }
  });
});
