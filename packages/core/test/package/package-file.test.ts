import { spawn, spawnSync } from 'node:child_process';
import { lstatSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, open, rm, symlink, writeFile } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PackageFileError } from '../../src/package/errors.js';
import { jsonSyntaxErrorPosition, packageFileSize, readPackageFile } from '../../src/package/package-file.js';
import {
  badPackagePathReason,
  descriptorLookupWorks,
  openFolderByDescriptors,
  openPackagePath,
  openPackagePathChecked,
} from '../../src/package/package-path.js';

let root: string;
/** A package folder with hostile links in it (see beforeAll), and a folder outside it holding a secret. */
let pkg: string;
let outside: string;
const SECRET = 'root:*:SECRET-OUTSIDE';

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'edgefleet-package-file-'));
  outside = join(root, 'outside');
  await mkdir(outside);
  for (const name of ['model.onnx', 'secret', 'w.bin']) await writeFile(join(outside, name), SECRET);
  pkg = join(root, 'pkg');
  await mkdir(join(pkg, 'model', 'sub'), { recursive: true });
  await writeFile(join(pkg, 'manifest.json'), 'inside: manifest');
  await writeFile(join(pkg, 'model', 'model.onnx'), 'inside: model');
  await writeFile(join(pkg, 'model', 'sub', 'w.bin'), 'inside: weights');
  await symlink(outside, join(pkg, 'linked')); // a folder linked outside: `linked/model.onnx`
  await symlink(join(outside, 'secret'), join(pkg, 'model', 'secret')); // a file linked outside
  await symlink('..', join(pkg, 'model', 'up')); // a folder linked to its parent (inside, still a link)
  await symlink('.', join(pkg, 'self'));
  await symlink('sub', join(pkg, 'model', 'alias')); // a folder linked to a folder inside
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
  it('reads a regular file whole, within its cap, by its package-relative path', async () => {
    await writeFile(join(root, 'manifest.json'), '{"a":1}');
    expect((await readPackageFile(root, 'manifest.json', { maxBytes: 7 })).toString()).toBe('{"a":1}');
    expect((await readPackageFile(pkg, 'model/sub/w.bin', { maxBytes: 100 })).toString()).toBe(
      'inside: weights',
    );
  });

  it('refuses a file over the cap before reading it', async () => {
    await writeFile(join(root, 'big.bin'), Buffer.alloc(100));
    const error = await problemOf(readPackageFile(root, 'big.bin', { maxBytes: 99 }));
    expect(error.problem).toBe('too-large');
    expect(error.message).toBe('big.bin is 100 bytes; expected at most 99');
  });

  it('refuses a FIFO at once (no writer needed), naming what it is', async () => {
    expect(spawnSync('mkfifo', [join(root, 'fifo')]).status).toBe(0);
    const error = await problemOf(readPackageFile(root, 'fifo', { maxBytes: 1024 }));
    expect(error.problem).toBe('not-regular');
    expect(error.message).toBe('fifo is not a regular file (it is a FIFO); expected a regular file');
  });

  it('refuses a folder, a missing file, and symlinks (to a file, and to /dev/zero) without following them', async () => {
    await mkdir(join(root, 'folder'));
    expect((await problemOf(readPackageFile(root, 'folder', { maxBytes: 1 }))).problem).toBe('not-regular');
    expect((await problemOf(readPackageFile(root, 'nothing', { maxBytes: 1 }))).problem).toBe('missing');
    await writeFile(join(root, 'secret'), 'root:*:SECRET');
    await symlink(join(root, 'secret'), join(root, 'to-secret'));
    await symlink('/dev/zero', join(root, 'to-zero'));
    for (const link of ['to-secret', 'to-zero']) {
      const error = await problemOf(readPackageFile(root, link, { maxBytes: Number.MAX_SAFE_INTEGER }));
      expect(error.problem).toBe('symlink');
      expect(error.message).toBe(
        `${link} is a symbolic link; expected a regular file (links are not followed in a package)`,
      );
    }
  });

  it('refuses a symlinked folder on the way, to outside the package or inside it, naming the folder', async () => {
    for (const [path, through] of [
      ['linked/model.onnx', 'linked'],
      ['linked/secret', 'linked'],
      ['model/up/manifest.json', 'model/up'],
      ['self/manifest.json', 'self'],
      ['model/alias/w.bin', 'model/alias'],
    ]) {
      const error = await problemOf(readPackageFile(pkg, path!, { maxBytes: 1024 }));
      expect(error.problem).toBe('symlink');
      expect(error.file).toBe(path);
      expect(error.message).toBe(
        `${path} is reached through ${through}, a symbolic link; expected a folder of the package (links are not followed in a package)`,
      );
    }
    // The same file by its real path is read.
    expect((await readPackageFile(pkg, 'model/sub/w.bin', { maxBytes: 1024 })).toString()).toBe(
      'inside: weights',
    );
  });

  it('refuses a path that is not plain names inside the package, before opening anything', async () => {
    for (const [path, reason] of [
      ['../outside/secret', 'it has an empty, "." or ".." component'],
      ['model/../../outside/secret', 'it has an empty, "." or ".." component'],
      ['./manifest.json', 'it has an empty, "." or ".." component'],
      ['model//model.onnx', 'it has an empty, "." or ".." component'],
      [join(outside, 'secret'), 'it is absolute'],
      ['model\\model.onnx', 'it contains a backslash'],
      ['', 'it is empty'],
    ]) {
      const error = await problemOf(readPackageFile(pkg, path!, { maxBytes: 1024, label: 'the file' }));
      expect(error.problem).toBe('bad-path');
      expect(error.message).toBe(
        `the file is not a path inside the package (${reason}); expected a relative path of plain names, such as model/model.onnx`,
      );
    }
  });

  it('says which folder on the way is a file', async () => {
    const error = await problemOf(readPackageFile(pkg, 'manifest.json/x', { maxBytes: 1024 }));
    expect(error.problem).toBe('missing');
    expect(error.message).toBe(
      'manifest.json/x does not exist: manifest.json is not a folder; expected a regular file',
    );
  });

  it('never reads outside the package while a folder on the way is swapped for a link and back', async () => {
    const dir = join(root, 'swapped');
    await mkdir(join(dir, 'model'), { recursive: true });
    await writeFile(join(dir, 'model', 'model.onnx'), 'inside: model');
    await symlink(outside, join(dir, 'link'));
    // A real process swapping `model` between the folder and the link to `outside` as fast as it can. It says
    // so after its first swap (stdout to a pipe is written at once on Linux): reading starts only then, so that
    // its start-up, long on a loaded machine, cannot take up the reads.
    const swapper = spawn(process.execPath, [
      '-e',
      `const { renameSync } = require('node:fs'); const d = ${JSON.stringify(dir)};
       const swap = () => { renameSync(d + '/model', d + '/real'); renameSync(d + '/link', d + '/model');
                            renameSync(d + '/model', d + '/link'); renameSync(d + '/real', d + '/model'); };
       swap(); process.stdout.write('swapping\\n');
       for (;;) swap();`,
    ]);
    try {
      await new Promise<void>((resolve, reject) => {
        swapper.stdout.setEncoding('utf8').on('data', (chunk: string) => {
          if (chunk.includes('swapping')) resolve();
        });
        swapper.once('exit', (code) => reject(new Error(`the swapper exited (${code}) before swapping`)));
      });
      let read = 0;
      let refused = 0;
      for (let i = 0; i < 2000; i++) {
        const bytes = await readPackageFile(dir, 'model/model.onnx', { maxBytes: 1024 }).catch(
          (error: unknown) => {
            expect(error).toBeInstanceOf(PackageFileError);
            return undefined;
          },
        );
        if (bytes === undefined) refused++;
        else {
          expect(bytes.toString()).toBe('inside: model');
          read++;
        }
      }
      expect(read + refused).toBe(2000);
      expect(swapper.exitCode).toBeNull(); // it kept swapping throughout
    } finally {
      swapper.kill('SIGKILL');
    }
  });
});

describe('packageFileSize', () => {
  it('gives the size of a regular file, refusing what readPackageFile refuses', async () => {
    expect(await packageFileSize(pkg, 'model/sub/w.bin')).toBe('inside: weights'.length);
    expect((await problemOf(packageFileSize(pkg, 'linked/w.bin'))).problem).toBe('symlink');
    expect((await problemOf(packageFileSize(pkg, 'model/secret'))).problem).toBe('symlink');
    expect((await problemOf(packageFileSize(pkg, 'model'))).problem).toBe('not-regular');
  });
});

/**
 * What a package path must lead to: the bytes of the regular file reached through real folders only, or a refusal
 * (undefined). Worked out with lstat, one component at a time.
 */
function expectedBytes(path: string): string | undefined {
  if (badPackagePathReason(path) !== undefined) return undefined;
  let at = pkg;
  const parts = path.split('/');
  for (const [i, part] of parts.entries()) {
    at = join(at, part);
    let found;
    try {
      found = lstatSync(at);
    } catch {
      return undefined;
    }
    if (i < parts.length - 1 ? !found.isDirectory() : !found.isFile()) return undefined;
  }
  return readFileSync(at, 'utf8');
}

/** Reads a file through a way of opening it, a folder read as a refusal (its caller's fstat refuses one). */
const readingThrough =
  (openPath: (root: string, path: string) => Promise<FileHandle>) =>
  async (path: string): Promise<string> => {
    const handle = await openPath(pkg, path);
    try {
      if (!(await handle.stat()).isFile()) throw new PackageFileError('not-regular', path, 'not a file');
      return (await handle.readFile()).toString('utf8');
    } finally {
      await handle.close();
    }
  };

describe.each([
  [
    'readPackageFile',
    async (path: string) => (await readPackageFile(pkg, path, { maxBytes: 1024 })).toString(),
  ],
  ['openPackagePath (each folder opened by its descriptor: Linux)', readingThrough(openPackagePath)],
  [
    'openPackagePathChecked (each component checked before and after the open: elsewhere)',
    readingThrough(openPackagePathChecked),
  ],
] as const)('%s over hostile paths', (_way, read) => {
  const readThrough = (path: string): Promise<string | PackageFileError> =>
    read(path).catch((error: unknown) => {
      expect(error).toBeInstanceOf(PackageFileError);
      return error as PackageFileError;
    });

  it('refuses the hostile paths: a linked folder, a linked file, a link inside, ..', async () => {
    for (const path of ['linked/model.onnx', 'model/secret', 'model/up/manifest.json', '../outside/secret'])
      expect(await readThrough(path)).toBeInstanceOf(PackageFileError);
    expect(await readThrough('model/model.onnx')).toBe('inside: model');
  });

  it('over generated relative paths: the file reached through real folders only, or a refusal; never outside', async () => {
    const component = fc.constantFrom(
      'manifest.json',
      'model',
      'model.onnx',
      'sub',
      'w.bin',
      'linked',
      'secret',
      'up',
      'self',
      'alias',
      'missing',
      '..',
      '.',
      '',
    );
    await fc.assert(
      fc.asyncProperty(
        fc.array(component, { minLength: 1, maxLength: 5 }),
        fc.boolean(),
        async (parts, absolute) => {
          const path = (absolute ? '/' : '') + parts.join('/');
          const got = await readThrough(path);
          expect(got).not.toBe(SECRET);
          const expected = expectedBytes(path);
          if (expected === undefined) expect(got).toBeInstanceOf(PackageFileError);
          else expect(got).toBe(expected);
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe('openFolderByDescriptors', () => {
  it('opens a folder below a held one, visiting each folder on the way, and refuses links, files and gaps', async () => {
    const held = await open(pkg, 'r');
    try {
      expect(await descriptorLookupWorks(held)).toBe(true);
      const visited: boolean[] = [];
      const visit = async (folder: FileHandle) => {
        visited.push((await folder.stat()).isDirectory());
      };
      const sub = await openFolderByDescriptors(held, ['model', 'sub'], { visit });
      expect((await sub.stat()).isDirectory()).toBe(true);
      expect(readFileSync(`/proc/self/fd/${sub.fd}/w.bin`, 'utf8')).toBe('inside: weights');
      await sub.close();
      // Visited: the held folder, then model/ (not sub/, which nothing is looked up in).
      expect(visited).toEqual([true, true]);
      const problems = async (components: string[]) => {
        const error = await problemOf(openFolderByDescriptors(held, components, { visit }));
        return error.problem;
      };
      expect(await problems(['linked'])).toBe('symlink');
      expect(await problems(['model', 'alias'])).toBe('symlink');
      expect(await problems(['model', 'up', 'model'])).toBe('symlink');
      expect(await problems(['manifest.json'])).toBe('not-regular');
      expect(await problems(['manifest.json', 'deeper'])).toBe('missing');
      expect(await problems(['nothere', 'deeper'])).toBe('missing');
      // A visit that refuses stops the walk before anything is looked up in that folder.
      const refusal = new Error('not this one');
      await expect(
        openFolderByDescriptors(held, ['model', 'sub'], {
          visit: () => Promise.reject(refusal),
        }),
      ).rejects.toBe(refusal);
    } finally {
      await held.close();
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
