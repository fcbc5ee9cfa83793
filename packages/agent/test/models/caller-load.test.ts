import { chmod, cp, mkdir, readdir, rename, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { signPackage } from '@edgefleet/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_ORT_SESSION_CONFIG, InferencePool } from '../../src/inference/index.js';
import {
  ModelRegistry,
  fileSystemFolderAccess,
  openFolderForCaller,
  whyNotAFolder,
  type CallerIdentity,
  type OpenedFolderDeps,
} from '../../src/models/index.js';
import { agentErrorOf } from '../support/agent-error.js';
import { devPki, trustFolder } from '../support/dev-pki.js';
import { scratch } from './helpers.js';

// LoadModel for a caller the agent knows (SO_PEERCRED): the check must hold for the bytes the agent loads. The
// caller is given as the identity the socket would report; it is never this process's uid, so the folders it may
// read are those whose "others" bits let it in, as for any user the agent does not share a group with.
const caller: CallerIdentity = { uid: 4321, gid: 4321, groups: [] };
const refusal = (url: string) =>
  `no model package at ${url} that you can read; expected the folder of an extracted model package that your user (uid ${caller.uid}) may read and search, on a path it may search`;

const defaults = fileSystemFolderAccess;

let pool: InferencePool;
let files: Awaited<ReturnType<typeof scratch>>;
/** A package only the agent may read (0700, this process's): what a caller must never get loaded. */
let agentOnly: string;
/** A package anyone may read: the caller's own. */
let readable: string;
let copies = 0;

beforeAll(async () => {
  files = await scratch('agent-caller-load-');
  await chmod(files.root, 0o755);
  pool = await InferencePool.start({ workers: 1, session: DEFAULT_ORT_SESSION_CONFIG });
  agentOnly = await files.catalogue('mlp', 'agent-only');
  await chmod(agentOnly, 0o700);
  readable = await files.catalogue('tiny', 'callers');
});
afterAll(async () => {
  await pool?.close();
  await files?.cleanup();
});

function registry(callerAccess?: OpenedFolderDeps) {
  return new ModelRegistry({
    pool,
    trust: null,
    cwd: files.root,
    ...(callerAccess && { callerAccess }),
  });
}

/** A fresh copy of the caller's package (tests change or swap it). */
async function callersCopy(): Promise<string> {
  const dir = join(files.root, `callers-${++copies}`);
  await cp(readable, dir, { recursive: true });
  return dir;
}

/** Replaces the folder `dir` by a symlink to `target`, as a caller who owns the folder's parent can. */
async function swapForLink(dir: string, target: string): Promise<void> {
  await rename(dir, `${dir}.moved`);
  await symlink(target, dir);
}

async function openDescriptors(): Promise<number> {
  return (await readdir('/proc/self/fd')).length;
}

describe('LoadModel for a caller: the folder checked is the folder loaded', () => {
  it('refuses a folder swapped for a link to an agent-only package right after the check by name', async () => {
    const dir = await callersCopy();
    let swapped = false;
    // The check by name (stat of each folder on the way) ends with the package folder itself: it passes on the
    // caller's folder, which is swapped at once, before the agent opens anything.
    const models = registry({
      ...defaults,
      stat: async (path) => {
        const found = await stat(path);
        if (path === dir && !swapped) {
          swapped = true;
          await swapForLink(dir, agentOnly);
        }
        return found;
      },
    });
    const error = await agentErrorOf(models.load({ url: dir, name: 'swapped', caller }));
    expect(swapped).toBe(true);
    expect({ code: error.code, message: error.message }).toEqual({
      code: 'NOT_FOUND',
      message: refusal(dir),
    });
    expect(models.list()).toEqual([]);
  });

  it('loads the folder it checked even where the name is swapped for a link once it is open', async () => {
    const dir = await callersCopy();
    const models = registry({
      ...defaults,
      openFolder: async (path) => {
        const handle = await defaults.openFolder(path);
        await swapForLink(dir, agentOnly);
        return handle;
      },
    });
    const loaded = await models.load({ url: dir, name: 'held', caller });
    // The caller's package (tiny, "callers"), named as the caller named it: not the agent's, not a /proc path.
    expect({ packageName: loaded.packageName, path: loaded.path }).toEqual({
      packageName: 'callers',
      path: dir,
    });
    await models.close();
  });

  it('says nothing of where a swapped-in link led when the open fails, even with the name swapped back', async () => {
    const dir = await callersCopy();
    let swapped = false;
    // The open follows a link into the agent-only package, to a name that is not there, and the caller's folder
    // is back by the time the agent would explain the failure: "does not exist" would tell of the agent's folder.
    const models = registry({
      ...defaults,
      openFolder: async (path) => {
        if (path !== dir || swapped) return defaults.openFolder(path);
        swapped = true;
        await swapForLink(dir, join(agentOnly, 'nothere'));
        try {
          return await defaults.openFolder(path);
        } finally {
          await rm(dir);
          await rename(`${dir}.moved`, dir);
        }
      },
    });
    const error = await agentErrorOf(models.load({ url: dir, name: 'probe', caller }));
    expect(swapped).toBe(true);
    expect({ code: error.code, message: error.message }).toEqual({
      code: 'NOT_FOUND',
      message: refusal(dir),
    });
    expect(models.list()).toEqual([]);
  });

  it('refuses a package with a file or folder in it the caller could not read, as an unreadable folder', async () => {
    const modelFile = await callersCopy();
    await chmod(join(modelFile, 'model.onnx'), 0o600);
    const manifest = await callersCopy();
    await chmod(join(manifest, 'manifest.json'), 0o600);
    const folder = await callersCopy();
    await mkdir(join(folder, 'notes'), { mode: 0o700 });
    await writeFile(join(folder, 'notes', 'private.txt'), 'agent only');
    const models = registry();
    for (const dir of [modelFile, manifest, folder]) {
      const error = await agentErrorOf(models.load({ url: dir, name: 'partly', caller }));
      expect({ code: error.code, message: error.message }, dir).toEqual({
        code: 'NOT_FOUND',
        message: refusal(dir),
      });
    }
    expect(models.list()).toEqual([]);
    // The same packages load for the agent's own loads, which have no caller to check for.
    expect((await models.load({ url: modelFile, name: 'own' })).packageName).toBe('callers');
    await models.close();
  });

  it('names the folder as the caller did in its errors, where the caller may read it', async () => {
    const dir = await callersCopy();
    await writeFile(join(dir, 'manifest.json'), '{"not": "a manifest"}');
    const models = registry();
    const error = await agentErrorOf(models.load({ url: dir, name: 'bad', caller }));
    expect(error.code).toBe('FAILED_PRECONDITION');
    expect(error.message).toContain(dir);
    expect(error.message).not.toContain('/proc/');
    const missing = join(files.root, 'nothere');
    expect((await agentErrorOf(models.load({ url: missing, name: 'gone', caller }))).message).toBe(
      `no model package at ${missing}: the folder does not exist; expected the folder of an extracted model package`,
    );
    const file = join(dir, 'model.onnx');
    expect((await agentErrorOf(models.load({ url: file, name: 'file', caller }))).message).toBe(
      `no model package at ${file}: it is a file; expected an extracted package folder; expected the folder of an extracted model package`,
    );
  });

  it('verifies a signed package through the folder it holds, and names the folder in verification errors', async () => {
    const pki = devPki('EdgeFleet Test Root', 'Model Publisher');
    const trust = await trustFolder(join(files.root, 'certs'), pki.root);
    const signed = await callersCopy();
    await signPackage(signed, pki.signer);
    const unsigned = await callersCopy();
    const models = new ModelRegistry({ pool, trust, cwd: files.root });
    const loaded = await models.load({ url: signed, name: 'signed', caller });
    expect({ verified: loaded.signature.verified, path: loaded.path }).toEqual({
      verified: true,
      path: signed,
    });
    const error = await agentErrorOf(models.load({ url: unsigned, name: 'unsigned', caller }));
    expect(error.code).toBe('FAILED_PRECONDITION');
    expect(error.message).toMatch(/failed signature verification \(bundle-missing\)/);
    expect(error.message).toContain(`${unsigned} has no model.sig`);
    expect(error.message).not.toContain('/proc/');
    await models.close();
  });

  it('closes the folder it opened whether the load succeeds, fails or is refused', async () => {
    const models = registry();
    // A first load and unload, so that whatever the pool and ONNX Runtime open once is open before counting.
    await models.load({ url: readable, name: 'first', caller });
    await models.unload('first');
    const before = await openDescriptors();
    const broken = await callersCopy();
    await writeFile(join(broken, 'manifest.json'), '{}');
    expect((await agentErrorOf(models.load({ url: broken, name: 'broken', caller }))).code).toBe(
      'FAILED_PRECONDITION',
    );
    expect((await agentErrorOf(models.load({ url: agentOnly, name: 'refused', caller }))).code).toBe(
      'NOT_FOUND',
    );
    await models.load({ url: readable, name: 'ok', caller });
    await models.unload('ok');
    expect(await openDescriptors()).toBe(before);
  });

  it('refuses loads for a caller where the system shows no descriptor paths, rather than check by name', async () => {
    const before = await openDescriptors();
    const models = registry({ ...defaults, descriptors: join(files.root, 'no-proc') });
    const error = await agentErrorOf(models.load({ url: readable, name: 'noproc', caller }));
    expect(error.code).toBe('FAILED_PRECONDITION');
    expect(error.message).toMatch(
      /cannot read the path of an open folder .*needs Linux with \/proc mounted; expected root or the agent's own user to load/,
    );
    expect(models.list()).toEqual([]);
    expect(await openDescriptors()).toBe(before);
    // The agent's own loads do not need it.
    expect((await models.load({ url: readable, name: 'own' })).packageName).toBe('callers');
    await models.close();
  });

  it('openFolderForCaller: a folder the caller may not read is closed again and answered undefined', async () => {
    const before = await openDescriptors();
    expect(await openFolderForCaller(agentOnly, caller)).toBeUndefined();
    const folder = await openFolderForCaller(readable, caller);
    expect(folder?.path).toMatch(/^\/proc\/self\/fd\/\d+$/);
    await folder?.close();
    expect(await openDescriptors()).toBe(before);
    await expect(openFolderForCaller(join(files.root, 'nothere'), caller)).rejects.toMatchObject({
      code: 'ENOENT',
    });
  });

  it('whyNotAFolder: what the caller could see itself, and nothing where it may not search', async () => {
    const before = await openDescriptors();
    expect(await whyNotAFolder(join(files.root, 'nothere', 'deeper'), caller)).toBe('missing');
    expect(await whyNotAFolder(join(readable, 'model.onnx'), caller)).toBe('file');
    expect(await whyNotAFolder(join(readable, 'model.onnx', 'deeper'), caller)).toBe('missing');
    expect(await whyNotAFolder(join(agentOnly, 'nothere'), caller)).toBeUndefined();
    expect(await whyNotAFolder(join(agentOnly, 'model.onnx'), caller)).toBeUndefined();
    expect(await openDescriptors()).toBe(before);
  });
});
