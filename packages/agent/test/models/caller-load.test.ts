import {
  chmod,
  cp,
  mkdir,
  readFile,
  readdir,
  readlink,
  rename,
  rm,
  stat,
  symlink,
  writeFile,
} from 'node:fs/promises';
import { renameSync } from 'node:fs';
import { join, relative } from 'node:path';
import { signPackage } from '@edgefleet/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_ORT_SESSION_CONFIG, InferencePool } from '../../src/inference/index.js';
import {
  MAX_CALLER_LOADS_AT_ONCE,
  ModelRegistry,
  MAX_CHECKED_DEPTH,
  MAX_CHECKED_ENTRIES,
  fileSystemFolderAccess,
  openFolderForCaller,
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

/**
 * This process's descriptors that hold something under the test's folder, or `/`: a leak shows here, and nothing
 * else in the worker (its pool, ONNX Runtime, vitest's own pipes) opens any; tests compare counts before and after.
 */
async function openDescriptors(): Promise<number> {
  let count = 0;
  for (const fd of await readdir('/proc/self/fd')) {
    const target = await readlink(`/proc/self/fd/${fd}`).catch(() => '');
    // `/` too: openFolderForCaller's walk starts from a descriptor of it.
    if (target.startsWith(files.root) || target === '/') count++;
  }
  return count;
}

/** A registry whose check by name passes on `dir`, which is then swapped at once for a link to `target`. */
function swappedAfterNameCheck(dir: string, target: string, more: Partial<OpenedFolderDeps> = {}) {
  const state = { swapped: false };
  const models = registry({
    ...defaults,
    ...more,
    // The check by name (stat of each folder on the way) ends with the package folder itself.
    stat: async (path) => {
      const found = await (more.stat ?? stat)(path);
      if (path === dir && !state.swapped) {
        state.swapped = true;
        await swapForLink(dir, target);
      }
      return found;
    },
  });
  return { models, state };
}

interface Logged {
  level: 'warn' | 'info';
  message: string;
  details?: Record<string, unknown>;
}
function capturingLogger(logged: Logged[]) {
  return {
    warn: (message: string, details?: Record<string, unknown>) =>
      logged.push({ level: 'warn', message, ...(details && { details }) }),
    info: (message: string, details?: Record<string, unknown>) =>
      logged.push({ level: 'info', message, ...(details && { details }) }),
  };
}

/** Every message of `error` and its causes, joined. */
function messagesOf(error: unknown): string {
  const out: string[] = [];
  for (let e = error; e instanceof Error; e = e.cause) out.push(e.message);
  return out.join(' <- ');
}

describe('LoadModel for a caller: the folder checked is the folder loaded', () => {
  it('refuses a caller load past the number at once, and takes one again when one has finished', async () => {
    const dirs = await Promise.all(Array.from({ length: MAX_CALLER_LOADS_AT_ONCE }, () => callersCopy()));
    const before = await openDescriptors();
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    let waiting = 0;
    // The check by name waits on each held load's own folder, so all of them are in progress at once.
    const models = registry({
      ...defaults,
      stat: async (path) => {
        if (dirs.includes(path)) {
          waiting++;
          await held;
        }
        return stat(path);
      },
    });
    const loads = dirs.map((url, i) => models.load({ url, name: `held-${i}`, caller }));
    await expect.poll(() => waiting).toBe(MAX_CALLER_LOADS_AT_ONCE);
    const extra = await callersCopy();
    const refused = await agentErrorOf(models.load({ url: extra, name: 'one-too-many', caller }));
    expect(refused.code).toBe('RESOURCE_EXHAUSTED');
    expect(refused.message).toMatch(/already in progress/);
    // The agent's own loads are not counted.
    const own = await models.load({ url: extra, name: 'own' });
    expect(own.name).toBe('own');
    release();
    await Promise.all(loads);
    const again = await models.load({ url: extra, name: 'after', caller });
    expect(again.name).toBe('after');
    for (const { name } of models.list()) await models.unload(name);
    expect(await openDescriptors()).toBe(before);
  });

  it('refuses a folder swapped for a link to an agent-only package right after the check by name', async () => {
    const dir = await callersCopy();
    const { models, state } = swappedAfterNameCheck(dir, agentOnly);
    const error = await agentErrorOf(models.load({ url: dir, name: 'swapped', caller }));
    expect(state.swapped).toBe(true);
    expect({ code: error.code, message: error.message }).toEqual({
      code: 'NOT_FOUND',
      message: refusal(dir),
    });
    expect(models.list()).toEqual([]);
  });

  it('reads through the folder it checked even where the name is swapped for a link once it is open', async () => {
    const dir = await callersCopy();
    const found = await openFolderForCaller(dir, caller);
    expect(found.kind).toBe('opened');
    const folder = found.kind === 'opened' ? found.folder : undefined;
    await swapForLink(dir, agentOnly);
    const manifest = JSON.parse(await readFile(join(folder!.path, 'manifest.json'), 'utf8')) as {
      name: string;
    };
    await folder!.close();
    expect(manifest.name).toBe('callers');
  });

  it('loads through a link the caller names, holding the folder it led to when the link is swapped after the open', async () => {
    const target = await callersCopy();
    const link = join(files.root, `link-${++copies}`);
    await symlink(target, link);
    const models = registry({
      ...defaults,
      openFolder: async (path) => {
        const handle = await defaults.openFolder(path);
        if (path === link) await swapForLink(target, agentOnly);
        return handle;
      },
    });
    const loaded = await models.load({ url: link, name: 'held', caller });
    // The caller's package (tiny, "callers"), named as the caller named it: not the agent's, not a /proc path.
    expect({ packageName: loaded.packageName, path: loaded.path }).toEqual({
      packageName: 'callers',
      path: link,
    });
    await models.close();
  });

  it('says nothing of where a swapped-in link led when the open fails, even with the name swapped back', async () => {
    const dir = await callersCopy();
    let restored = false;
    // The open follows the link into the agent-only package, to a name that is not there, and the caller's
    // folder is back by the time the agent would explain the failure: "does not exist" would tell of the agent's.
    const { models, state } = swappedAfterNameCheck(dir, join(agentOnly, 'nothere'), {
      openFolder: async (path) => {
        if (path !== dir || restored) return defaults.openFolder(path);
        restored = true;
        try {
          return await defaults.openFolder(path);
        } finally {
          await rm(dir);
          await rename(`${dir}.moved`, dir);
        }
      },
    });
    const error = await agentErrorOf(models.load({ url: dir, name: 'probe', caller }));
    expect({ swapped: state.swapped, restored }).toEqual({ swapped: true, restored: true });
    expect({ code: error.code, message: error.message }).toEqual({
      code: 'NOT_FOUND',
      message: refusal(dir),
    });
    expect(models.list()).toEqual([]);
  });

  it('answers one refusal whether a link put in for the open, then deleted, led to a folder or to nothing', async () => {
    // The review's existence oracle: a folder that exists behind the link opens and is refused by the check; one
    // that does not fails the open. Asked again after the link is gone, the name is missing; the answer must not
    // be "does not exist" in the one case and the refusal in the other.
    const secret = join(files.root, `secret-${++copies}`);
    await mkdir(join(secret, 'exists'), { recursive: true });
    await chmod(secret, 0o700);
    const answers: Record<string, string> = {};
    for (const probe of ['exists', 'absent']) {
      const dir = await callersCopy();
      let deleted = false;
      const { models } = swappedAfterNameCheck(dir, join(secret, probe), {
        openFolder: async (path) => {
          if (path !== dir || deleted) return defaults.openFolder(path);
          deleted = true;
          try {
            return await defaults.openFolder(path);
          } finally {
            await rm(dir);
          }
        },
      });
      const error = await agentErrorOf(models.load({ url: dir, name: 'probe', caller }));
      expect(deleted, probe).toBe(true);
      answers[probe] = `${error.code} ${error.message.replace(dir, '<dir>')}`;
    }
    const refused = `NOT_FOUND ${refusal('<dir>')}`;
    expect(answers).toEqual({ exists: refused, absent: refused });
  });

  it('refuses a link swapped in to a package anyone may read inside a folder the caller may not search', async () => {
    const dir = await callersCopy();
    const hidden = join(files.root, `hidden-${++copies}`);
    await mkdir(hidden);
    await cp(readable, join(hidden, 'pkg'), { recursive: true });
    await chmod(hidden, 0o700);
    // The package folder itself (0755) and all in it pass; only its parent keeps the caller out.
    const { models, state } = swappedAfterNameCheck(dir, join(hidden, 'pkg'));
    const error = await agentErrorOf(models.load({ url: dir, name: 'hidden', caller }));
    expect(state.swapped).toBe(true);
    expect({ code: error.code, message: error.message }).toEqual({
      code: 'NOT_FOUND',
      message: refusal(dir),
    });
  });

  it('refuses where the folders on the reported path are changed after it was read, before the path is checked again', async () => {
    const dir = await callersCopy();
    const hidden = join(files.root, `hidden-${++copies}`);
    await mkdir(hidden);
    await cp(readable, join(hidden, 'pkg'), { recursive: true });
    await chmod(hidden, 0o700);
    let replaced = false;
    // When the agent looks at the held folder's parent by name, the 0700 parent is moved away and a folder anyone
    // may search, with a package of its own, put in its place: every folder on the path now passes.
    const { models } = swappedAfterNameCheck(dir, join(hidden, 'pkg'), {
      stat: async (path) => {
        if (path === hidden && !replaced) {
          replaced = true;
          await rename(hidden, `${hidden}.moved`);
          await mkdir(hidden, { mode: 0o755 });
          await chmod(hidden, 0o755);
          await cp(readable, join(hidden, 'pkg'), { recursive: true });
        }
        return stat(path);
      },
    });
    const error = await agentErrorOf(models.load({ url: dir, name: 'moved', caller }));
    expect(replaced).toBe(true);
    expect({ code: error.code, message: error.message }).toEqual({
      code: 'NOT_FOUND',
      message: refusal(dir),
    });
  });

  it('refuses a folder removed once it is open, through a link', async () => {
    const target = await callersCopy();
    const link = join(files.root, `link-${++copies}`);
    await symlink(target, link);
    const models = registry({
      ...defaults,
      openFolder: async (path) => {
        const handle = await defaults.openFolder(path);
        if (path === link) await rm(target, { recursive: true });
        return handle;
      },
    });
    const error = await agentErrorOf(models.load({ url: link, name: 'removed', caller }));
    expect({ code: error.code, message: error.message }).toEqual({
      code: 'NOT_FOUND',
      message: refusal(link),
    });
  });

  it('refuses a package with a file or folder in it the caller could not read, as an unreadable folder', async () => {
    const modelFile = await callersCopy();
    await chmod(join(modelFile, 'model.onnx'), 0o600);
    const manifest = await callersCopy();
    await chmod(join(manifest, 'manifest.json'), 0o600);
    const folder = await callersCopy();
    await mkdir(join(folder, 'notes'), { mode: 0o700 });
    await writeFile(join(folder, 'notes', 'private.txt'), 'agent only');
    // A link beside it (the reader refuses links itself) does not stop the check before it reaches the folder.
    const besideLink = await callersCopy();
    await symlink('/etc', join(besideLink, 'a-link'));
    await mkdir(join(besideLink, 'z-notes'), { mode: 0o700 });
    const models = registry();
    for (const dir of [modelFile, manifest, folder, besideLink]) {
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
    // Nor anywhere in its causes, which a handler may log.
    expect(messagesOf(error)).not.toContain('/proc/');
    const missing = join(files.root, 'nothere');
    expect((await agentErrorOf(models.load({ url: missing, name: 'gone', caller }))).message).toBe(
      `no model package at ${missing}: the folder does not exist; expected the folder of an extracted model package`,
    );
    const file = join(dir, 'model.onnx');
    expect((await agentErrorOf(models.load({ url: file, name: 'file', caller }))).message).toBe(
      `no model package at ${file}: it is a file; expected the folder of an extracted model package`,
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
      /cannot look inside an open folder through .*needs Linux with \/proc mounted; expected root or the agent's own user to load/,
    );
    expect(models.list()).toEqual([]);
    expect(await openDescriptors()).toBe(before);
    // The agent's own loads do not need it.
    expect((await models.load({ url: readable, name: 'own' })).packageName).toBe('callers');
    await models.close();
  });

  it('openFolderForCaller: a folder the caller may not read is closed again and refused', async () => {
    const before = await openDescriptors();
    expect(await openFolderForCaller(agentOnly, caller)).toEqual({ kind: 'refused' });
    const found = await openFolderForCaller(readable, caller);
    expect(found.kind).toBe('opened');
    if (found.kind === 'opened') {
      expect(found.folder.path).toMatch(/^\/proc\/self\/fd\/\d+$/);
      await found.folder.close();
    }
    expect(await openDescriptors()).toBe(before);
  });

  it('openFolderForCaller: missing or a file only where its walk, following no link, found so where the caller may search', async () => {
    const before = await openDescriptors();
    expect(await openFolderForCaller(join(files.root, 'nothere', 'deeper'), caller)).toEqual({
      kind: 'missing',
    });
    expect(await openFolderForCaller(join(readable, 'model.onnx'), caller)).toEqual({ kind: 'file' });
    expect(await openFolderForCaller(join(readable, 'model.onnx', 'deeper'), caller)).toEqual({
      kind: 'missing',
    });
    expect(await openFolderForCaller(join(agentOnly, 'nothere'), caller)).toEqual({ kind: 'refused' });
    expect(await openFolderForCaller(join(agentOnly, 'model.onnx'), caller)).toEqual({ kind: 'refused' });
    // A link on the way: the folder it leads to is judged once opened; where none opens, nothing is said.
    const dangling = join(files.root, `dangling-${++copies}`);
    await symlink(join(files.root, 'nothere'), dangling);
    expect(await openFolderForCaller(dangling, caller)).toEqual({ kind: 'refused' });
    const linked = join(files.root, `linked-${++copies}`);
    await symlink(files.root, linked);
    expect(await openFolderForCaller(join(linked, 'nothere'), caller)).toEqual({ kind: 'refused' });
    const through = await openFolderForCaller(join(linked, relative(files.root, readable)), caller);
    expect(through.kind).toBe('opened');
    if (through.kind === 'opened') await through.folder.close();
    expect(await openDescriptors()).toBe(before);
  });
});

describe('LoadModel for a caller: the check is bounded and does the cheap parts first', () => {
  it(`refuses a package folder with more than ${MAX_CHECKED_ENTRIES} entries, or nested deeper than ${MAX_CHECKED_DEPTH}, saying why`, async () => {
    const wide = await callersCopy();
    await mkdir(join(wide, 'many'));
    for (let i = 0; i < MAX_CHECKED_ENTRIES; i += 500)
      await Promise.all(
        Array.from({ length: 500 }, (_, k) => writeFile(join(wide, 'many', `f${i + k}`), '')),
      );
    const deep = await callersCopy();
    await mkdir(join(deep, ...Array.from({ length: MAX_CHECKED_DEPTH + 1 }, () => 'd')), { recursive: true });
    const models = registry();
    const tooWide = await agentErrorOf(models.load({ url: wide, name: 'wide', caller }));
    expect({ code: tooWide.code, message: tooWide.message }).toEqual({
      code: 'FAILED_PRECONDITION',
      message: `model package ${wide} is too large to check for you: it holds more than ${MAX_CHECKED_ENTRIES} files and folders, more than a model package may; expected an extracted model package of at most ${MAX_CHECKED_ENTRIES} files and folders, ${MAX_CHECKED_DEPTH} levels deep`,
    });
    const tooDeep = await agentErrorOf(models.load({ url: deep, name: 'deep', caller }));
    expect({ code: tooDeep.code, message: tooDeep.message }).toEqual({
      code: 'FAILED_PRECONDITION',
      message: `model package ${deep} is too large to check for you: its folders are nested more than ${MAX_CHECKED_DEPTH} deep, deeper than a model package needs; expected an extracted model package of at most ${MAX_CHECKED_ENTRIES} files and folders, ${MAX_CHECKED_DEPTH} levels deep`,
    });
    // One level less loads.
    await rm(join(deep, ...Array.from({ length: MAX_CHECKED_DEPTH + 1 }, () => 'd')), { recursive: true });
    expect((await models.load({ url: deep, name: 'deep', caller })).packageName).toBe('callers');
    await models.close();
  });

  it('looks no further than a missing manifest.json: the caller is told what it could see, nothing below is walked', async () => {
    const dir = await callersCopy();
    await rm(join(dir, 'manifest.json'));
    // Would refuse the load if the tree were walked: a folder the caller may not read.
    await mkdir(join(dir, 'private'), { mode: 0o700 });
    const error = await agentErrorOf(registry().load({ url: dir, name: 'nomanifest', caller }));
    expect({ code: error.code, message: error.message }).toEqual({
      code: 'NOT_FOUND',
      message: `no model package at ${dir}: it has no manifest.json; expected the folder of an extracted model package`,
    });
    // An Edge Manager package is recognised by the names in the folder the caller may list, read through the
    // folder the agent holds; the message names the caller's path, never /proc.
    await writeFile(join(dir, 'compiled.so'), 'neo');
    const neo = await agentErrorOf(registry().load({ url: dir, name: 'neo', caller }));
    expect({ code: neo.code, message: neo.message }).toEqual({
      code: 'FAILED_PRECONDITION',
      message: `model package ${dir} is not valid: it is a SageMaker Edge Manager (Neo/DLR-compiled) package (compiled.so, sagemaker_edge_manifest), and EdgeFleet runs ONNX model packages: re-export the model to ONNX, then package and sign it (see docs/migrating-from-edge-manager.md)`,
    });
  });

  it('refuses a name already loaded before opening or checking anything', async () => {
    let looked = 0;
    const models = registry({
      ...defaults,
      stat: async (path) => {
        looked++;
        return stat(path);
      },
      openFolder: async (path) => {
        looked++;
        return defaults.openFolder(path);
      },
    });
    await models.load({ url: readable, name: 'taken', caller });
    looked = 0;
    const error = await agentErrorOf(models.load({ url: readable, name: 'taken', caller }));
    expect({ code: error.code, looked }).toEqual({ code: 'ALREADY_EXISTS', looked: 0 });
    await models.close();
  });

  it('answers running out of descriptors as RESOURCE_EXHAUSTED with a log line, not as the caller lacking rights', async () => {
    const logged: Logged[] = [];
    const models = new ModelRegistry({
      pool,
      trust: null,
      cwd: files.root,
      logger: capturingLogger(logged),
      callerAccess: {
        ...defaults,
        openFolder: () =>
          Promise.reject(Object.assign(new Error('EMFILE: too many open files, open'), { code: 'EMFILE' })),
      },
    });
    const error = await agentErrorOf(models.load({ url: readable, name: 'emfile', caller }));
    expect({ code: error.code, message: error.message }).toEqual({
      code: 'RESOURCE_EXHAUSTED',
      message: `the agent has run out of file descriptors opening model package ${readable}; try again later`,
    });
    expect(logged.filter((l) => l.level === 'warn').map((l) => l.details?.['code'])).toEqual(['EMFILE']);
  });
});

describe('LoadModel for a caller: each file is checked on the descriptor it is read from', () => {
  it('refuses a model file the caller may not read, moved into its folder after the check', async () => {
    const dir = await callersCopy();
    const privateCopy = join(files.root, `private-model-${++copies}`);
    await cp(join(dir, 'model.onnx'), privateCopy);
    await chmod(privateCopy, 0o600);
    let moved = false;
    // The warning that the package is not verified comes once the manifest is read, before the model file is:
    // the caller (who may write its folder) moves in a file it cannot read, as rename(2) lets it from a folder
    // it may write.
    const models = new ModelRegistry({
      pool,
      trust: null,
      cwd: files.root,
      logger: {
        warn: (message) => {
          if (!moved && message.includes(dir)) {
            moved = true;
            renameSync(privateCopy, join(dir, 'model.onnx'));
          }
        },
      },
    });
    const error = await agentErrorOf(models.load({ url: dir, name: 'moved-in', caller }));
    expect(moved).toBe(true);
    expect({ code: error.code, message: error.message }).toEqual({
      code: 'FAILED_PRECONDITION',
      message: `model package ${dir} is not valid: model.onnx cannot be read: your user (uid ${caller.uid}) may not read it`,
    });
    expect(models.list()).toEqual([]);
  });
});

describe('LoadModel for a caller: messages name the folder as the caller did', () => {
  it('logs and stores the reason of an unsigned package loaded with signatures not required, naming its folder', async () => {
    const pki = devPki('EdgeFleet Test Root', 'Model Publisher');
    const trust = await trustFolder(join(files.root, 'certs-optional'), pki.root);
    const unsigned = await callersCopy();
    const logged: Logged[] = [];
    const models = new ModelRegistry({
      pool,
      trust,
      requireSignatures: false,
      cwd: files.root,
      logger: capturingLogger(logged),
    });
    const loaded = await models.load({ url: unsigned, name: 'unsigned', caller });
    expect(loaded.signature.verified).toBe(false);
    expect(loaded.signature.verified === false && loaded.signature.reason).toBe(
      `bundle-missing: ${unsigned} has no model.sig; every package must carry its signature bundle`,
    );
    const warning = logged.find((l) => l.message.includes('signature did not verify'));
    expect(warning?.message).toBe(
      `loading model package ${unsigned} although its signature did not verify: ${unsigned} has no model.sig; every package must carry its signature bundle`,
    );
    expect(JSON.stringify(logged)).not.toContain('/proc/');
    expect(JSON.stringify(models.list())).not.toContain('/proc/');
    await models.close();
  });
});
