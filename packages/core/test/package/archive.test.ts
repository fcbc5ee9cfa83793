import { mkdtemp, mkdir, readFile, readdir, rm, writeFile, symlink } from 'node:fs/promises';
import { createWriteStream } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import * as tar from 'tar-stream';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { extractPackageArchive, packModelPackage, safeMemberPath } from '../../src/package/archive.js';
import { PackageArchiveError } from '../../src/package/errors.js';

type Member = Partial<tar.Header> & { name: string; body?: Buffer };

/** Writes a .tar.gz with exactly these members, headers as given: the way an attacker would craft one. */
async function craftArchive(path: string, members: Member[]): Promise<void> {
  const pack = tar.pack();
  const done = pipeline(pack, createGzip(), createWriteStream(path));
  for (const { body, ...header } of members) {
    await new Promise<void>((resolve, reject) => {
      pack.entry({ ...header, mode: header.mode ?? 0o644 }, body ?? Buffer.alloc(0), (err) =>
        err ? reject(err) : resolve(),
      );
    });
  }
  pack.finalize();
  await done;
}

let work: string;
beforeEach(async () => {
  work = await mkdtemp(join(tmpdir(), 'ef-archive-'));
});
afterEach(async () => {
  await rm(work, { recursive: true, force: true });
});

async function expectRefused(members: Member[], reason: string, limits = {}): Promise<PackageArchiveError> {
  const archive = join(work, 'evil.tar.gz');
  await craftArchive(archive, members);
  const dest = join(work, 'out');
  const error = await extractPackageArchive(archive, dest, limits).catch((e: unknown) => e);
  expect(error).toBeInstanceOf(PackageArchiveError);
  expect((error as PackageArchiveError).reason).toBe(reason);
  // Nothing may be left behind: not the destination, not a partial folder.
  expect(await readdir(work)).toEqual(['evil.tar.gz']);
  return error as PackageArchiveError;
}

describe('packModelPackage + extractPackageArchive', () => {
  it('round-trips a folder with subfolders, byte for byte, deterministically', async () => {
    const src = join(work, 'pkg');
    await mkdir(join(src, 'weights', 'deep'), { recursive: true });
    await writeFile(join(src, 'manifest.json'), '{"a":1}');
    await writeFile(join(src, 'model.onnx'), Buffer.from([0, 1, 2, 255]));
    await writeFile(join(src, 'weights', 'deep', 'w.bin'), Buffer.alloc(100_000, 7));
    const a = await packModelPackage(src, join(work, 'a.tar.gz'));
    const b = await packModelPackage(src, join(work, 'b.tar.gz'));
    expect(a.files).toBe(3);
    expect(await readFile(a.path)).toEqual(await readFile(b.path));

    const out = await extractPackageArchive(a.path, join(work, 'out'));
    expect(out.files).toBe(3);
    expect(await readFile(join(work, 'out', 'model.onnx'))).toEqual(Buffer.from([0, 1, 2, 255]));
    expect(await readFile(join(work, 'out', 'weights', 'deep', 'w.bin'))).toEqual(Buffer.alloc(100_000, 7));
  });

  it('refuses to pack a folder holding a symlink', async () => {
    const src = join(work, 'pkg');
    await mkdir(src);
    await writeFile(join(src, 'model.onnx'), 'x');
    await symlink('/etc/passwd', join(src, 'passwd'));
    await expect(packModelPackage(src, join(work, 'a.tar.gz'))).rejects.toMatchObject({ reason: 'link' });
  });

  it('accepts ./-prefixed members as `tar -C dir .` writes them', async () => {
    const archive = join(work, 'dot.tar.gz');
    await craftArchive(archive, [
      { name: './', type: 'directory', mode: 0o755 },
      { name: './model.onnx', body: Buffer.from('m') },
    ]);
    await extractPackageArchive(archive, join(work, 'out'));
    expect(await readFile(join(work, 'out', 'model.onnx'), 'utf8')).toBe('m');
  });

  it('refuses a destination that exists', async () => {
    const archive = join(work, 'ok.tar.gz');
    await craftArchive(archive, [{ name: 'a', body: Buffer.from('a') }]);
    await mkdir(join(work, 'out'));
    await expect(extractPackageArchive(archive, join(work, 'out'))).rejects.toMatchObject({
      reason: 'destination-exists',
    });
  });

  it('refuses an archive that is not a gzip', async () => {
    await writeFile(join(work, 'junk.tar.gz'), 'this is not gzip');
    await expect(extractPackageArchive(join(work, 'junk.tar.gz'), join(work, 'out'))).rejects.toMatchObject({
      reason: 'corrupt',
    });
    expect((await readdir(work)).sort()).toEqual(['junk.tar.gz']);
  });

  it('says when the archive does not exist', async () => {
    await expect(extractPackageArchive(join(work, 'missing.tar.gz'), join(work, 'out'))).rejects.toThrow(
      /does not exist/,
    );
  });
});

describe('the adversarial archive corpus', () => {
  it('../ path traversal', async () => {
    const e = await expectRefused([{ name: '../escaped', body: Buffer.from('x') }], 'path-traversal');
    expect(e.message).toContain('../escaped');
  });
  it('traversal hidden in the middle of a path', async () => {
    await expectRefused([{ name: 'a/../../escaped', body: Buffer.from('x') }], 'path-traversal');
  });
  it('absolute path', async () => {
    await expectRefused([{ name: '/tmp/escaped', body: Buffer.from('x') }], 'absolute-path');
  });
  it('symlink escaping the folder', async () => {
    await expectRefused([{ name: 'link', type: 'symlink', linkname: '/etc/passwd' }], 'link');
  });
  it('symlink then a file written through it', async () => {
    await expectRefused(
      [
        { name: 'dir', type: 'symlink', linkname: '/tmp' },
        { name: 'dir/escaped', body: Buffer.from('x') },
      ],
      'link',
    );
  });
  it('hard link to a file outside', async () => {
    await expectRefused([{ name: 'hard', type: 'link', linkname: '../../etc/passwd' }], 'link');
  });
  it('hard link to a file inside, and a symlinked folder to a folder inside (still links)', async () => {
    const inside = { name: 'model/model.onnx', body: Buffer.from('x') };
    await expectRefused([inside, { name: 'copy.onnx', type: 'link', linkname: 'model/model.onnx' }], 'link');
    await expectRefused([inside, { name: 'alias', type: 'symlink', linkname: 'model' }], 'link');
  });
  it('a link named with ./ and a trailing slash, as `tar -C dir .` writes folders', async () => {
    await expectRefused([{ name: './model/', type: 'symlink', linkname: '/etc' }], 'link');
  });
  it('device file', async () => {
    await expectRefused(
      [{ name: 'dev', type: 'character-device', devmajor: 1, devminor: 3 }],
      'special-file',
    );
  });
  it('fifo', async () => {
    await expectRefused([{ name: 'pipe', type: 'fifo' }], 'special-file');
  });
  it('the same member twice (a later one would overwrite a verified file)', async () => {
    await expectRefused(
      [
        { name: 'model.onnx', body: Buffer.from('good') },
        { name: 'model.onnx', body: Buffer.from('evil') },
      ],
      'duplicate-entry',
    );
  });
  it('too many members', async () => {
    const members = Array.from({ length: 20 }, (_, i) => ({ name: `f${i}`, body: Buffer.from('x') }));
    await expectRefused(members, 'too-many-entries', { maxEntries: 10 });
  });
  it('a tar bomb: a highly compressible member far over the size limit', async () => {
    const e = await expectRefused(
      [{ name: 'zeros', body: Buffer.alloc(8 * 1024 * 1024) }],
      'entry-too-large',
      {
        maxEntryBytes: 1024 * 1024,
        maxTotalBytes: 2 * 1024 * 1024,
      },
    );
    expect(e.entry).toBe('zeros');
  });
  it('a tar bomb spread over many members', async () => {
    const members = Array.from({ length: 8 }, (_, i) => ({ name: `z${i}`, body: Buffer.alloc(512 * 1024) }));
    await expectRefused(members, 'too-large', { maxTotalBytes: 2 * 1024 * 1024 });
  });
});

describe('safeMemberPath (property)', () => {
  const segment = fc.oneof(
    fc.constantFrom('.', '..', '', 'a', 'model.onnx', '...', '..a'),
    fc.string({ minLength: 1, maxLength: 8 }).filter((s) => !s.includes('/')),
  );
  it('either refuses with a PackageArchiveError or yields a path that stays inside', () => {
    fc.assert(
      fc.property(fc.array(segment, { maxLength: 6 }), fc.boolean(), (segments, absolute) => {
        const name = (absolute ? '/' : '') + segments.join('/');
        let result: string | undefined;
        try {
          result = safeMemberPath(name);
        } catch (error) {
          expect(error).toBeInstanceOf(PackageArchiveError);
          return;
        }
        if (result === undefined) return;
        expect(result.startsWith('/')).toBe(false);
        expect(result.split('/')).not.toContain('..');
        expect(result.split('/')).not.toContain('.');
        expect(result.split('/')).not.toContain('');
      }),
    );
  });
});

describe('extractPackageArchive (property)', () => {
  const name = fc
    .array(fc.constantFrom('a', 'b', '..', '.', '', 'model.onnx', 'x y'), { minLength: 1, maxLength: 4 })
    .chain((segs) => fc.boolean().map((abs) => (abs ? '/' : '') + segs.join('/')));
  const member = fc.record({
    name,
    type: fc.constantFrom('file', 'file', 'file', 'directory', 'symlink', 'link', 'fifo') as fc.Arbitrary<
      tar.Header['type']
    >,
    body: fc.uint8Array({ maxLength: 64 }).map((a) => Buffer.from(a)),
  });

  it('extracts everything inside the destination, or refuses and leaves nothing', async () => {
    let run = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(member, { minLength: 1, maxLength: 6 }), async (members) => {
        const dir = join(work, `run${run++}`);
        await mkdir(dir);
        const archive = join(dir, 'p.tar.gz');
        await craftArchive(
          archive,
          members.map((m) =>
            m.type === 'file'
              ? { name: m.name, body: m.body }
              : m.type === 'symlink' || m.type === 'link'
                ? { name: m.name, type: m.type, linkname: '../outside' }
                : { name: m.name, type: m.type },
          ),
        );
        const dest = join(dir, 'out');
        try {
          await extractPackageArchive(archive, dest);
        } catch (error) {
          expect(error).toBeInstanceOf(PackageArchiveError);
          expect(await readdir(dir)).toEqual(['p.tar.gz']);
          return;
        }
        // Whatever was written is under dest; nothing appeared beside it.
        expect((await readdir(dir)).sort()).toEqual(['out', 'p.tar.gz']);
        expect(members.every((m) => m.type === 'file' || m.type === 'directory')).toBe(true);
      }),
      { numRuns: 60 },
    );
  });
});

describe('packModelPackage abort (a stopping server, F7)', () => {
  it('stops packing when its signal aborts mid-file, leaving no archive or temporary file', async () => {
    const dir = join(work, 'pkg');
    await mkdir(dir);
    await writeFile(join(dir, 'model.bin'), Buffer.alloc(8 * 1024 * 1024, 7));
    const stop = new AbortController();
    const out = join(work, 'out.tar.gz');
    await expect(
      packModelPackage(dir, out, {
        signal: stop.signal,
        // Aborted as the first chunk of the model is read: the packing stops inside the file.
        onProgress: () => stop.abort(new Error('stopping')),
      }),
    ).rejects.toThrow('stopping');
    expect((await readdir(work)).sort()).toEqual(['pkg']);
  });

  it('does not start when its signal already aborted', async () => {
    const dir = join(work, 'pkg');
    await mkdir(dir);
    await writeFile(join(dir, 'a.txt'), 'a');
    await expect(
      packModelPackage(dir, join(work, 'out.tar.gz'), { signal: AbortSignal.abort(new Error('stopped')) }),
    ).rejects.toThrow('stopped');
    expect(await readdir(work)).toEqual(['pkg']);
  });
});
