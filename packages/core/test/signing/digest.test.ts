import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { readFile, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  UnsupportedFileError,
  compareResourcePaths,
  digestFiles,
  type DigestProgress,
} from '../../src/signing/index.js';
import { sha256Hex, tempDirs, writeTree } from './helpers.js';

const dirs = tempDirs();
afterEach(() => dirs.cleanup());

const MiB = 1024 * 1024;

describe('digestFiles', () => {
  it('hashes every regular file, recursively, as whole-buffer SHA-256 does (sizes across read boundaries)', async () => {
    const dir = await dirs.make();
    const files: Record<string, Buffer> = {
      'empty.bin': Buffer.alloc(0),
      'one-read.bin': randomBytes(MiB),
      'several-reads.bin': randomBytes(2 * MiB + 17),
      'deep/er/still.txt': Buffer.from('x'),
    };
    await writeTree(dir, files);
    const digests = await digestFiles(dir);
    expect(digests).toEqual(
      Object.entries(files)
        .map(([path, bytes]) => ({ path, sha256: sha256Hex(bytes), size: bytes.length }))
        .sort((a, b) => compareResourcePaths(a.path, b.path)),
    );
  });

  it('sorts like the reference implementation: path components first, then code points', async () => {
    const dir = await dirs.make();
    await writeTree(dir, { 'a-b': '1', 'a/b': '2', 'a.txt': '3', B: '4' });
    const order = (await digestFiles(dir)).map((d) => d.path);
    // A plain string sort would give B, a-b, a.txt, a/b.
    expect(order).toEqual(['B', 'a/b', 'a-b', 'a.txt']);
  });

  it('compares by code point, not UTF-16 unit (astral characters sort after U+FFxx)', () => {
    expect(compareResourcePaths('\u{1F600}', '\uFF01')).toBeGreaterThan(0);
    expect(compareResourcePaths('dir/\uFF01', 'dir/\u{1F600}')).toBeLessThan(0);
    expect(compareResourcePaths('same', 'same')).toBe(0);
  });

  it('leaves out ignored files and whole ignored folders without looking inside them', async () => {
    const dir = await dirs.make();
    await writeTree(dir, {
      'model.sig': '{}',
      'keep.bin': 'k',
      'cache/a': 'a',
      'cache/b/c': 'c',
      'sub/model.sig': 's',
    });
    await symlink('/nonexistent', join(dir, 'cache', 'dangling'));
    const paths = (await digestFiles(dir, { ignore: ['model.sig', './cache/'] })).map((d) => d.path);
    expect(paths).toEqual(['keep.bin', 'sub/model.sig']);
  });

  it('rejects an ignore path that leaves the folder', async () => {
    const dir = await dirs.make();
    await expect(digestFiles(dir, { ignore: ['../etc'] })).rejects.toThrow(/not a package-relative path/);
  });

  it('rejects a symlink with a typed error naming it', async () => {
    const dir = await dirs.make();
    await writeTree(dir, { 'sub/real.bin': 'r' });
    await symlink('real.bin', join(dir, 'sub', 'link.bin'));
    const error = await digestFiles(dir).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(UnsupportedFileError);
    expect(error).toMatchObject({ path: 'sub/link.bin', kind: 'symlink' });
    expect((error as Error).message).toContain('sub/link.bin');
  });

  it('rejects a symlinked folder', async () => {
    const dir = await dirs.make();
    const elsewhere = await dirs.make();
    await writeTree(elsewhere, { 'x.bin': 'x' });
    await symlink(elsewhere, join(dir, 'linked'));
    await expect(digestFiles(dir)).rejects.toMatchObject({ path: 'linked', kind: 'symlink' });
  });

  it('rejects a named pipe (special file) without blocking on it', async () => {
    const dir = await dirs.make();
    execFileSync('mkfifo', [join(dir, 'pipe')]);
    await expect(digestFiles(dir)).rejects.toMatchObject({
      name: 'UnsupportedFileError',
      path: 'pipe',
      kind: 'fifo',
    });
  });

  it('reports progress over all files, ending at the total', async () => {
    const dir = await dirs.make();
    await writeTree(dir, {
      'a.bin': randomBytes(MiB + 5),
      'b.bin': Buffer.alloc(0),
      'c.bin': randomBytes(300),
    });
    const events: DigestProgress[] = [];
    await digestFiles(dir, { onProgress: (p) => events.push(p) });
    const total = MiB + 5 + 300;
    expect(events.every((e) => e.bytesTotal === total)).toBe(true);
    for (let i = 1; i < events.length; i++)
      expect(events[i]?.bytesDone).toBeGreaterThanOrEqual(events[i - 1]?.bytesDone as number);
    expect(events.at(-1)).toEqual({ file: 'c.bin', bytesDone: total, bytesTotal: total });
    expect([...new Set(events.map((e) => e.file))]).toEqual(['a.bin', 'b.bin', 'c.bin']);
  });

  it.each([
    ['mid-file, a read in flight', MiB],
    ['at the end of a file, the next file being opened', 3 * MiB - 100],
  ])(
    'a listener that throws (%s) stops the run with its error and leaves nothing in flight',
    async (_, at) => {
      const dir = await dirs.make();
      await writeTree(dir, { 'a.bin': randomBytes(3 * MiB - 100), 'b.bin': randomBytes(2 * MiB) });
      const stop = new Error('stop');
      const openFiles = () => readdirSync('/proc/self/fd').length;
      const before = openFiles();
      await expect(
        digestFiles(dir, {
          onProgress: ({ bytesDone }) => {
            if (bytesDone === at) throw stop;
          },
        }),
      ).rejects.toBe(stop);
      expect(openFiles()).toBe(before); // no file left open
      // Everything landed: the folder digests again, correctly.
      const again = await digestFiles(dir);
      expect(again.map((d) => d.sha256)).toEqual([
        sha256Hex(await readFile(join(dir, 'a.bin'))),
        sha256Hex(await readFile(join(dir, 'b.bin'))),
      ]);
    },
  );
});
