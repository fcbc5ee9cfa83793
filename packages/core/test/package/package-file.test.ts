import { spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  PackageFileError,
  jsonSyntaxErrorPosition,
  readPackageFile,
} from '../../src/package/package-file.js';

let root: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'edgefleet-package-file-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

async function problemOf(read: Promise<unknown>): Promise<PackageFileError> {
  const error = await read.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(PackageFileError);
  return error as PackageFileError;
}

describe('readPackageFile', () => {
  it('reads a regular file whole, within its cap', async () => {
    const path = join(root, 'manifest.json');
    await writeFile(path, '{"a":1}');
    expect((await readPackageFile(path, { maxBytes: 7 })).toString()).toBe('{"a":1}');
  });

  it('refuses a file over the cap before reading it', async () => {
    const path = join(root, 'big.bin');
    await writeFile(path, Buffer.alloc(100));
    const error = await problemOf(readPackageFile(path, { maxBytes: 99, label: 'big.bin' }));
    expect(error.problem).toBe('too-large');
    expect(error.message).toBe('big.bin is 100 bytes; expected at most 99');
  });

  it('refuses a FIFO at once (no writer needed), naming what it is', async () => {
    const path = join(root, 'fifo');
    expect(spawnSync('mkfifo', [path]).status).toBe(0);
    const error = await problemOf(readPackageFile(path, { maxBytes: 1024, label: 'fifo' }));
    expect(error.problem).toBe('not-regular');
    expect(error.message).toBe('fifo is not a regular file (it is a FIFO); expected a regular file');
  });

  it('refuses a folder, a missing file, and symlinks (to a file, and to /dev/zero) without following them', async () => {
    await mkdir(join(root, 'folder'));
    expect((await problemOf(readPackageFile(join(root, 'folder'), { maxBytes: 1 }))).problem).toBe(
      'not-regular',
    );
    expect((await problemOf(readPackageFile(join(root, 'nothing'), { maxBytes: 1 }))).problem).toBe(
      'missing',
    );
    await writeFile(join(root, 'secret'), 'root:*:SECRET');
    await symlink(join(root, 'secret'), join(root, 'to-secret'));
    await symlink('/dev/zero', join(root, 'to-zero'));
    for (const link of ['to-secret', 'to-zero']) {
      const error = await problemOf(
        readPackageFile(join(root, link), { maxBytes: Number.MAX_SAFE_INTEGER, label: link }),
      );
      expect(error.problem).toBe('symlink');
      expect(error.message).toBe(
        `${link} is a symbolic link; expected a regular file (links are not followed in a package)`,
      );
    }
  });
});

describe('jsonSyntaxErrorPosition', () => {
  it("keeps JSON.parse's position and none of the text it quotes", () => {
    const messageOf = (text: string): unknown => {
      try {
        JSON.parse(text);
      } catch (error) {
        return error;
      }
      throw new Error('parsed');
    };
    for (const text of ['root:*:20000:0:99999', '{"a": SECRET}', '{"unterminated']) {
      const where = jsonSyntaxErrorPosition(messageOf(text));
      expect(where).toMatch(/^( \(at position \d+\))?$/);
    }
    expect(jsonSyntaxErrorPosition(messageOf('{,}'))).toBe(' (at position 1)');
  });
});
