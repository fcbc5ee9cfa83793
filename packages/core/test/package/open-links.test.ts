import type { Stats } from 'node:fs';
import { cp, mkdir, mkdtemp, readFile, rename, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeTestModel } from '../../src/onnx/index.js';
import {
  MANIFEST_FILE,
  PACKAGE_MODEL_FILE,
  PackageInvalidError,
  createModelPackage,
  openModelPackage,
  readPackageModel,
} from '../../src/package/index.js';
import type { PackageVerificationError } from '../../src/signing/index.js';
import { generateKeyPair, signPackage } from '../../src/signing/index.js';

// A package whose model sits in a folder that is a link (to another folder, anywhere) is refused where it is
// opened and where it is read: O_NOFOLLOW alone checks only a path's last component. Real files, real links.

let work: string;
/** An unsigned package of the tiny model, its manifest's model file moved into the folder `m/`. */
let base: string;
let counter = 0;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'ef-open-links-'));
  base = join(work, 'base');
  await createModelPackage({
    modelPath: await writeTestModel('tiny', join(work, 'model')),
    name: 'tiny',
    version: '1',
    outDir: base,
  });
  await mkdir(join(base, 'm'));
  await rename(join(base, PACKAGE_MODEL_FILE), join(base, 'm', PACKAGE_MODEL_FILE));
  const manifest = JSON.parse(await readFile(join(base, MANIFEST_FILE), 'utf8')) as {
    model: { file: string };
  };
  manifest.model.file = `m/${PACKAGE_MODEL_FILE}`;
  await writeFile(join(base, MANIFEST_FILE), JSON.stringify(manifest));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

/** A copy of the base package, and a folder outside it holding a copy of its `m/`. */
async function copies(): Promise<{ dir: string; elsewhere: string }> {
  const dir = join(work, `copy-${++counter}`);
  const elsewhere = join(work, `elsewhere-${counter}`);
  await cp(base, dir, { recursive: true });
  await cp(join(base, 'm'), elsewhere, { recursive: true });
  return { dir, elsewhere };
}

/** Replaces the package's `m/` with a link to `target`. */
async function linkModelFolder(dir: string, target: string): Promise<void> {
  await rm(join(dir, 'm'), { recursive: true });
  await symlink(target, join(dir, 'm'));
}

const modelFile = `m/${PACKAGE_MODEL_FILE}`;

describe('a package with a linked folder on the way to its model', () => {
  it('is opened and read with its folder real', async () => {
    const { dir } = await copies();
    const opened = await openModelPackage(dir, { trust: null });
    const bytes = await readPackageModel(opened);
    expect(bytes.model).toEqual(await readFile(join(dir, modelFile)));
  });

  it('is refused by openModelPackage, naming the package, the file and the linked folder', async () => {
    const { dir, elsewhere } = await copies();
    await linkModelFolder(dir, elsewhere);
    const error = await openModelPackage(dir, { trust: null }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(PackageInvalidError);
    expect((error as Error).message).toBe(
      `model package ${dir} is not valid: the model file ${modelFile} named by ${MANIFEST_FILE} is not a regular file of the package: ${modelFile} is reached through m, a symbolic link; expected a folder of the package (links are not followed in a package)`,
    );
  });

  it('is refused by readPackageModel when the folder became a link after opening', async () => {
    const { dir, elsewhere } = await copies();
    const opened = await openModelPackage(dir, { trust: null });
    await linkModelFolder(dir, elsewhere);
    await expect(readPackageModel(opened)).rejects.toThrow(
      new PackageInvalidError(
        dir,
        `${modelFile} is reached through m, a symbolic link; expected a folder of the package (links are not followed in a package)`,
      ),
    );
  });

  it('is refused by signature verification (a link is never a signed file), signed with its folder real', async () => {
    const { dir, elsewhere } = await copies();
    const keys = generateKeyPair('ed25519');
    await signPackage(dir, { method: 'key', privateKeyPem: keys.privateKeyPem });
    const trust = { publicKeysPem: [keys.publicKeyPem] };
    await expect(openModelPackage(dir, { trust })).resolves.toMatchObject({ manifest: { name: 'tiny' } });
    await linkModelFolder(dir, elsewhere); // the same bytes, through a link
    await expect(openModelPackage(dir, { trust })).rejects.toMatchObject({ reason: 'file-unsupported' });
  });
});

describe('openModelPackage with shownDir', () => {
  it('names the folder as shownDir in its errors, verification and later reads, never as the path it reads', async () => {
    const { dir, elsewhere } = await copies();
    const shownDir = '/as/the/caller/named/it';
    const failure = async (attempt: Promise<unknown>) =>
      attempt.then(
        () => 'resolved',
        (e: unknown) => (e as Error).message,
      );
    const keys = generateKeyPair('ed25519');
    const trust = { publicKeysPem: [keys.publicKeyPem] };
    // Unsigned: verification's "has no model.sig" names shownDir.
    expect(await failure(openModelPackage(dir, { trust, shownDir }))).toBe(
      `${shownDir} has no model.sig; every package must carry its signature bundle`,
    );
    const opened = await openModelPackage(dir, { trust: null, shownDir });
    expect(opened.shownDir).toBe(shownDir);
    await linkModelFolder(dir, elsewhere);
    expect(await failure(readPackageModel(opened))).toBe(
      `model package ${shownDir} is not valid: ${modelFile} is reached through m, a symbolic link; expected a folder of the package (links are not followed in a package)`,
    );
    await rm(join(dir, MANIFEST_FILE));
    expect(await failure(openModelPackage(dir, { trust: null, shownDir }))).toBe(
      `no model package at ${shownDir}: it has no ${MANIFEST_FILE}`,
    );
  });
});

describe('openModelPackage with fileCheck', () => {
  it('asks about each file on the descriptor it reads, refusing one before its bytes are read or hashed', async () => {
    const { dir } = await copies();
    const keys = generateKeyPair('ed25519');
    await signPackage(dir, { method: 'key', privateKeyPem: keys.privateKeyPem });
    const trust = { publicKeysPem: [keys.publicKeyPem] };
    const asked: number[] = [];
    const modelIno = (await stat(join(dir, modelFile))).ino;
    const refuseModel = (file: Stats) => {
      asked.push(file.ino);
      return file.ino === modelIno ? 'not for this reader' : undefined;
    };
    // Verified: the model file is refused where it is hashed, and no hash of it is told.
    const verified = await openModelPackage(dir, { trust, fileCheck: refuseModel }).then(
      () => undefined,
      (e: unknown) => e as PackageVerificationError,
    );
    expect({ reason: verified?.reason, message: verified?.message }).toEqual({
      reason: 'file-unreadable',
      message: `${modelFile} cannot be read: not for this reader (found while verifying)`,
    });
    // Unverified: refused where openModelPackage checks it, and by readPackageModel.
    await expect(openModelPackage(dir, { trust: null, fileCheck: refuseModel })).rejects.toThrow(
      `the model file ${modelFile} named by ${MANIFEST_FILE} is not a regular file of the package: ${modelFile} cannot be read: not for this reader`,
    );
    const opened = await openModelPackage(dir, {
      trust: null,
      fileCheck: (file) => void asked.push(file.ino),
    });
    await expect(readPackageModel({ ...opened, fileCheck: refuseModel })).rejects.toThrow(
      new PackageInvalidError(dir, `${modelFile} cannot be read: not for this reader`),
    );
    expect(asked).toContain(modelIno);
  });
});
