import { execFile } from 'node:child_process';
import { chmod, chown, cp, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { callerCanReadFolder, type CallerIdentity } from '../../src/models/index.js';
import { SharedMemoryReader, loadSysvShmAddon } from '../../src/shm/index.js';
import { HttpClient, scratch, startAgent, targetOf } from './helpers.js';

// Red-team F-G: the agent opens the package a caller names with its own rights; for a caller it knows (SO_PEERCRED)
// it loads only from a folder the caller could read itself, and answers every other with one error, so that its
// distinct errors ("it is a file", "does not exist", "has no manifest.json") are no oracle over its private files.

const NOBODY = 65534;
const isRoot = process.getuid?.() === 0;
const nobody: CallerIdentity = { uid: NOBODY, gid: NOBODY, groups: [] };

let files: Awaited<ReturnType<typeof scratch>>;
/** 0700, root's: what only the agent's user may look into. */
let privateDir: string;
/** 0755: anyone may read. */
let openDir: string;
let tiny: string;

beforeAll(async () => {
  files = await scratch('agent-load-as-caller-');
  await chmod(files.root, 0o755);
  tiny = await files.catalogue('tiny');
  privateDir = join(files.root, 'private');
  openDir = join(files.root, 'open');
  await mkdir(join(privateDir, 'empty'), { recursive: true });
  await writeFile(join(privateDir, 'device.key'), 'secret');
  await cp(tiny, join(privateDir, 'tiny'), { recursive: true });
  await chmod(privateDir, 0o700);
  await mkdir(openDir, { mode: 0o755 });
  await cp(tiny, join(openDir, 'tiny'), { recursive: true });
  await chmod(join(openDir, 'tiny'), 0o755);
});

afterAll(async () => {
  await files?.cleanup();
});

describe.skipIf(!isRoot)('callerCanReadFolder (real folders, the caller’s credentials given)', () => {
  it('refuses, for a caller who may not search the folder on the way, whatever is there', async () => {
    for (const path of ['tiny', 'empty', 'device.key', 'nothere', 'nothere/deeper'])
      expect(await callerCanReadFolder(join(privateDir, path), nobody), path).toBe(false);
  });

  it('lets the folder’s group in through the group bits, and root and the owner always', async () => {
    await chown(privateDir, 0, 4242);
    try {
      const groupMember: CallerIdentity = { uid: NOBODY, gid: NOBODY, groups: [4242] };
      expect(await callerCanReadFolder(join(privateDir, 'tiny'), groupMember)).toBe(false);
      await chmod(privateDir, 0o710);
      expect(await callerCanReadFolder(join(privateDir, 'tiny'), groupMember)).toBe(true);
      expect(await callerCanReadFolder(join(privateDir, 'tiny'), nobody)).toBe(false);
      expect(await callerCanReadFolder(join(privateDir, 'tiny'), { uid: 0, gid: 0, groups: [] })).toBe(true);
    } finally {
      await chown(privateDir, 0, 0);
      await chmod(privateDir, 0o700);
    }
  });

  it('lets a caller learn what it could see itself: a missing folder or a file where it may search', async () => {
    expect(await callerCanReadFolder(join(openDir, 'tiny'), nobody)).toBe(true);
    expect(await callerCanReadFolder(join(openDir, 'nothere'), nobody)).toBe(true);
    expect(await callerCanReadFolder(join(openDir, 'tiny', 'manifest.json'), nobody)).toBe(true);
  });

  it('needs read on the package folder itself, and follows symlinks to check the real path', async () => {
    const unreadable = join(openDir, 'unreadable');
    await mkdir(unreadable, { mode: 0o711 });
    expect(await callerCanReadFolder(unreadable, nobody)).toBe(false);
    const { symlink } = await import('node:fs/promises');
    await symlink(join(privateDir, 'tiny'), join(openDir, 'link'));
    expect(await callerCanReadFolder(join(openDir, 'link'), nobody)).toBe(false);
  });
});

/** Runs HTTP requests on the agent's Unix socket as `nobody`, each a POST with a JSON body. */
function loadAsNobody(socketPath: string, requests: Array<{ path: string; body: unknown }>) {
  const script = `
    const http = require('node:http');
    const [socketPath, plan] = process.argv.slice(1);
    const call = ({ path, body }) => new Promise((resolve, reject) => {
      const data = JSON.stringify(body);
      const req = http.request({ socketPath, path, method: 'POST', headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) } }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString() }));
      });
      req.on('error', reject);
      req.end(data);
    });
    (async () => {
      const results = [];
      for (const r of JSON.parse(plan)) results.push(await call(r));
      process.stdout.write(JSON.stringify(results));
    })();`;
  return new Promise<Array<{ status: number; body: string }>>((resolve, reject) => {
    execFile(
      process.execPath,
      ['-e', script, socketPath, JSON.stringify(requests)],
      { uid: NOBODY, gid: NOBODY, timeout: 30_000, killSignal: 'SIGKILL', cwd: files.root },
      (error, stdout, stderr) => {
        if (error) reject(new Error(`the client failed: ${error.message}\n${stderr}`));
        else resolve(JSON.parse(stdout) as Array<{ status: number; body: string }>);
      },
    );
  });
}

describe.skipIf(!isRoot)('REST load over the Unix socket, the caller as nobody (real process)', () => {
  let agent: Awaited<ReturnType<typeof startAgent>>;
  let socketPath: string;
  beforeAll(async () => {
    socketPath = join(files.root, 'agent.rest.sock');
    agent = await startAgent({
      socketPath,
      sharedMemory: new SharedMemoryReader({ addon: loadSysvShmAddon() }),
    });
    await chmod(socketPath, 0o666);
  });
  afterAll(async () => {
    await agent?.stop();
  });

  it('answers one error for every path in a folder the caller may not search, and loads nothing', async () => {
    const paths = ['device.key', 'nothere', 'empty', 'tiny'].map((name) => join(privateDir, name));
    const results = await loadAsNobody(
      socketPath,
      paths.map((url, i) => ({
        path: `/v2/repository/models/probe${i}/load`,
        body: { parameters: { url } },
      })),
    );
    results.forEach((result, i) => {
      expect(result.status, result.body).toBe(404);
      expect(JSON.parse(result.body)).toEqual({
        error: `no model package at ${paths[i]} that you can read; expected the folder of an extracted model package that your user (uid ${NOBODY}) may read and search, on a path it may search`,
      });
    });
    expect(agent.registry.list()).toEqual([]);
  });

  it('loads, for the same caller, a package it may read; root still loads from the private folder', async () => {
    const [loaded] = await loadAsNobody(socketPath, [
      { path: '/v2/repository/models/mine/load', body: { parameters: { url: join(openDir, 'tiny') } } },
    ]);
    expect(loaded!.status, loaded!.body).toBe(200);
    // And where the caller may look, the agent says what it found.
    const [missing] = await loadAsNobody(socketPath, [
      { path: '/v2/repository/models/gone/load', body: { parameters: { url: join(openDir, 'nothere') } } },
    ]);
    expect(JSON.parse(missing!.body).error).toMatch(/does not exist/);
    const root = new HttpClient(targetOf(`unix:${socketPath}`));
    try {
      const own = await root.postJson('/v2/repository/models/privately/load', {
        parameters: { url: join(privateDir, 'tiny') },
      });
      expect(own.status, own.text()).toBe(200);
    } finally {
      root.close();
    }
    expect(
      agent.registry
        .list()
        .map((m) => m.name)
        .sort(),
    ).toEqual(['mine', 'privately']);
  });
});
