import { renameSync, symlinkSync } from 'node:fs';
import { chmod, mkdir, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { PackageFileError } from '../../src/package/errors.js';
import { generateKeyPair, listFiles, signPackage, verifyPackage } from '../../src/signing/index.js';
import { tempDirs, writeSamplePackage, writeTree } from './helpers.js';

// The listing of a package's files must never follow a folder swapped for a link after its parent was listed:
// the names below wherever the link leads would reach whoever asked (file-unlisted names the first). The swap is
// made by a hook at the moment between the parent's listing and the subfolder's open, not by a timing loop.

const dirs = tempDirs();
afterEach(() => dirs.cleanup());

/** A folder only its owner may look into, holding a name no one else should learn. */
async function secretFolder(): Promise<string> {
  const secret = await dirs.make('edgefleet-secret-');
  await writeTree(secret, { 'inner/topsecret-name.txt': 'x' });
  await chmod(join(secret, 'inner'), 0o700);
  await chmod(secret, 0o700);
  return secret;
}

/** Every message of `error` and its causes, joined. */
function messagesOf(error: unknown): string {
  const out: string[] = [];
  for (let e = error; e instanceof Error; e = e.cause) out.push(e.message);
  return out.join(' <- ');
}

describe('listFiles through held folders', () => {
  it('refuses a subfolder swapped for a link after its parent was listed, naming no file from where it leads', async () => {
    const dir = await dirs.make();
    await writeTree(dir, { 'a.txt': 'a' });
    await mkdir(join(dir, 'x'));
    const secret = await secretFolder();
    let swapped = false;
    // The parent's files are checked after its listing, before any subfolder is opened: the race, made certain.
    const fileCheck = (): undefined => {
      if (!swapped) {
        swapped = true;
        // Synchronous: the swap is done before the listing goes on.
        swapForLink(dir, secret);
      }
      return undefined;
    };
    const error = await listFiles(dir, [], { fileCheck }).catch((e: unknown) => e);
    expect(swapped).toBe(true);
    expect(error).toBeInstanceOf(PackageFileError);
    expect(error).toMatchObject({ problem: 'symlink', file: 'x' });
    expect(messagesOf(error)).not.toMatch(/topsecret|inner/);
  });

  it('asks folderCheck about each folder on its descriptor before listing it, and stops at the first it refuses', async () => {
    const dir = await dirs.make();
    await writeTree(dir, { 'a.txt': 'a', 'open/b.txt': 'b', 'closed/hidden-name.txt': 'c' });
    await chmod(dir, 0o755);
    await chmod(join(dir, 'closed'), 0o700);
    const seen: number[] = [];
    const error = await listFiles(dir, [], {
      folderCheck: (folder) => {
        seen.push(folder.mode & 0o777);
        return (folder.mode & 0o077) === 0 ? 'the test refuses 0700 folders' : undefined;
      },
    }).catch((e: unknown) => e);
    expect(error).toMatchObject({ problem: 'unreadable', file: 'closed' });
    expect((error as Error).message).toBe('folder closed cannot be read: the test refuses 0700 folders');
    expect(messagesOf(error)).not.toContain('hidden-name');
    expect(seen).toContain(0o700);
  });

  it('refuses past its bounds of entries and depth, saying which; unbounded without them', async () => {
    const dir = await dirs.make();
    await writeTree(dir, { 'a.txt': 'a', 'b.txt': 'b', 'x/y/c.txt': 'c' });
    expect((await listFiles(dir, [])).map((f) => f.path)).toEqual(['a.txt', 'b.txt', 'x/y/c.txt']);
    await expect(listFiles(dir, [], { limits: { maxEntries: 4, maxDepth: 32 } })).rejects.toThrow(
      'the package holds more than 4 files and folders, more than a model package may',
    );
    await expect(listFiles(dir, [], { limits: { maxEntries: 100, maxDepth: 1 } })).rejects.toThrow(
      "the package's folders are nested more than 1 deep, deeper than a model package needs",
    );
    expect((await listFiles(dir, [], { limits: { maxEntries: 5, maxDepth: 2 } })).map((f) => f.path)).toEqual(
      ['a.txt', 'b.txt', 'x/y/c.txt'],
    );
  });

  it('passes over links and special files with skipUnsupported, still checking what lies beside them', async () => {
    const dir = await dirs.make();
    await writeTree(dir, { 'a.txt': 'a', 'sub/b.txt': 'b' });
    await symlink('/etc', join(dir, 'link'));
    expect((await listFiles(dir, [], { skipUnsupported: true })).map((f) => f.path)).toEqual([
      'a.txt',
      'sub/b.txt',
    ]);
    await expect(listFiles(dir, [])).rejects.toMatchObject({ name: 'UnsupportedFileError', path: 'link' });
  });
});

describe('verifyPackage with a folder swapped for a link during its listing', () => {
  it("answers no name from the folder the link leads to (the review's file-unlisted oracle)", async () => {
    const dir = await dirs.make();
    await writeSamplePackage(dir);
    const keys = generateKeyPair('ed25519');
    await signPackage(dir, { method: 'key', privateKeyPem: keys.privateKeyPem }, { modelName: 'resnet' });
    // Folders are not signed resources: an empty one added after signing still verifies.
    await mkdir(join(dir, 'x'));
    await expect(verifyPackage(dir, { publicKeysPem: [keys.publicKeyPem] })).resolves.toMatchObject({
      modelName: 'resnet',
    });
    const secret = await secretFolder();
    let checks = 0;
    // Call 1 is model.sig, read before the listing; the next are the package folder's files, sized after its
    // listing and before any subfolder is opened: the moment the review's loop raced for.
    const fileCheck = (): undefined => {
      if (++checks === 2) swapForLink(dir, secret);
      return undefined;
    };
    const error = await verifyPackage(
      dir,
      { publicKeysPem: [keys.publicKeyPem] },
      { fileCheck, folderCheck: () => undefined },
    ).catch((e: unknown) => e);
    expect(checks).toBeGreaterThanOrEqual(2);
    expect(error).toMatchObject({ name: 'PackageVerificationError', reason: 'file-unsupported', path: 'x' });
    expect(messagesOf(error)).not.toMatch(/topsecret|inner/);
  });
});

/** Replaces `<dir>/x` by a link to `target`, at once (the hooks that call it are synchronous). */
function swapForLink(dir: string, target: string): void {
  renameSync(join(dir, 'x'), join(dir, 'x.moved'));
  symlinkSync(target, join(dir, 'x'));
}
