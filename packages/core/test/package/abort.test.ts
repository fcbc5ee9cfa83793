/**
 * A stopping server aborts a packaging build where it is (review H3): extracting an uploaded package, signing
 * (its hashing), and building a package from an ONNX model take the build's signal, reject with its reason and
 * leave nothing behind.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { writeTestModel } from '../../src/onnx/index.js';
import { extractPackageArchive, packModelPackage } from '../../src/package/archive.js';
import { createModelPackage } from '../../src/package/create.js';
import { SIGNATURE_FILE, generateKeyPair, signPackage } from '../../src/signing/index.js';

let work: string;
beforeEach(async () => {
  work = await mkdtemp(join(tmpdir(), 'ef-abort-'));
});
afterEach(async () => {
  await rm(work, { recursive: true, force: true });
});

describe('extractPackageArchive abort', () => {
  it('stops when its signal aborts mid-archive, leaving no folder, partial or whole', async () => {
    const pkg = join(work, 'pkg');
    await mkdir(pkg);
    // Random bytes, so that the archive stays as large as its content and arrives in many pieces.
    await writeFile(join(pkg, 'model.bin'), randomBytes(4 * 1024 * 1024));
    const archive = await readFile((await packModelPackage(pkg, join(work, 'p.tar.gz'))).path);
    await rm(pkg, { recursive: true });
    const stop = new AbortController();
    const half = archive.length >> 1;
    // The first half arrives, then the server stops, then the rest would arrive.
    const source = Readable.from(
      (async function* () {
        yield archive.subarray(0, half);
        stop.abort(new Error('stopping'));
        yield archive.subarray(half);
      })(),
    );
    await expect(
      extractPackageArchive(source, join(work, 'out'), {}, { signal: stop.signal }),
    ).rejects.toThrow('stopping');
    expect(await readdir(work)).toEqual(['p.tar.gz']);
  });

  it('does not start when its signal already aborted', async () => {
    const pkg = join(work, 'pkg');
    await mkdir(pkg);
    await writeFile(join(pkg, 'a.txt'), 'a');
    const archive = (await packModelPackage(pkg, join(work, 'p.tar.gz'))).path;
    await expect(
      extractPackageArchive(
        archive,
        join(work, 'out'),
        {},
        { signal: AbortSignal.abort(new Error('stopped')) },
      ),
    ).rejects.toThrow('stopped');
    expect((await readdir(work)).sort()).toEqual(['p.tar.gz', 'pkg']);
  });
});

describe('signPackage abort', () => {
  it('stops hashing when its signal aborts mid-file, writing no signature', async () => {
    await writeFile(join(work, 'model.bin'), Buffer.alloc(8 * 1024 * 1024, 7));
    const stop = new AbortController();
    const signer = { method: 'key' as const, privateKeyPem: generateKeyPair('ed25519').privateKeyPem };
    await expect(
      signPackage(work, signer, {
        signal: stop.signal,
        // Aborted as the first piece of the model is hashed: the hashing stops inside the file.
        onProgress: () => stop.abort(new Error('stopping')),
      }),
    ).rejects.toThrow('stopping');
    expect(await readdir(work)).toEqual(['model.bin']);
    expect((await readdir(work)).includes(SIGNATURE_FILE)).toBe(false);
  });
});

describe('createModelPackage abort', () => {
  it('does not build when its signal already aborted, leaving no folder', async () => {
    const modelPath = await writeTestModel('tiny', join(work, 'model'));
    await expect(
      createModelPackage(
        { modelPath, name: 'tiny', version: '1', outDir: join(work, 'out') },
        { signal: AbortSignal.abort(new Error('stopped')) },
      ),
    ).rejects.toThrow('stopped');
    expect(await readdir(work)).toEqual(['model']);
  });
});
