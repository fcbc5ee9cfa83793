// The packed agent's install step (native/install.mjs), run as npm runs it, in a copy of the native folder, with a
// stand-in for node-gyp: its rebuild empties build/ first, as node-gyp's does, then fails or "builds".
import { spawnSync } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { SYSV_SHM_ADDON_PATH } from '../../src/shm/sysv-shm-addon.js';

const INSTALL_SCRIPT = new URL('../../native/install.mjs', import.meta.url);
// A real Node addon that loads but is not this version's: it lacks setMallocThresholds (any addon does).
const OLDER_ADDON = join(
  createRequire(import.meta.url).resolve('better-sqlite3/package.json'),
  '../build/Release/better_sqlite3.node',
);

const dirs: string[] = [];
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

/** A native folder holding install.mjs, with `addon` (a path to copy) as its built addon, and a stand-in node-gyp. */
function nativeFolder(addon: string | null, build: 'fails' | 'builds') {
  const dir = mkdtempSync(join(tmpdir(), 'edgefleet-install-'));
  dirs.push(dir);
  copyFileSync(INSTALL_SCRIPT, join(dir, 'install.mjs'));
  const built = join(dir, 'build', 'Release', 'sysv_shm.node');
  if (addon) {
    mkdirSync(join(dir, 'build', 'Release'), { recursive: true });
    copyFileSync(addon, built);
  }
  const nodeGyp = join(dir, 'fake-node-gyp.cjs');
  writeFileSync(
    nodeGyp,
    `const fs = require('node:fs');
fs.writeFileSync(${JSON.stringify(join(dir, 'rebuild-ran'))}, '');
fs.rmSync('build', { recursive: true, force: true });
${
  build === 'fails'
    ? "process.stderr.write('gyp ERR! stack Error: not found: make\\n'); process.exit(1);"
    : `fs.mkdirSync('build/Release', { recursive: true }); fs.copyFileSync(${JSON.stringify(SYSV_SHM_ADDON_PATH)}, 'build/Release/sysv_shm.node');`
}`,
  );
  return {
    dir,
    built,
    rebuildRan: () => existsSync(join(dir, 'rebuild-ran')),
    // The older addon's copy while it rebuilds: never left behind.
    backupLeft: () => existsSync(join(dir, 'sysv_shm.older.node')),
    nodeGyp,
  };
}

function install(folder: { dir: string; nodeGyp: string }) {
  return spawnSync(process.execPath, ['install.mjs'], {
    cwd: folder.dir,
    env: { ...process.env, npm_config_node_gyp: folder.nodeGyp },
    encoding: 'utf8',
  });
}

describe('native/install.mjs', () => {
  it("keeps this version's addon without building", () => {
    const folder = nativeFolder(SYSV_SHM_ADDON_PATH, 'fails');
    const result = install(folder);
    expect(result.status).toBe(0);
    expect(folder.rebuildRan()).toBe(false);
    expect(result.stderr).toBe('');
  });

  it('rebuilds an older addon that loads, and puts it back when the build fails', () => {
    const folder = nativeFolder(OLDER_ADDON, 'fails');
    const result = install(folder);
    expect(result.status).toBe(0);
    expect(folder.rebuildRan()).toBe(true);
    expect(readFileSync(folder.built).equals(readFileSync(OLDER_ADDON))).toBe(true);
    expect(result.stderr).toContain('could not build the native addon');
    expect(result.stderr).toContain('not found: make');
    expect(result.stderr).toContain('built by an older version, is kept: shared memory works');
    expect(result.stderr).toContain('edgefleet_keep_freed_memory_bytes has no effect');
    expect(result.stderr).toContain('npm rebuild @edgefleet/agent');
    expect(folder.backupLeft()).toBe(false);
  });

  it('replaces an older addon with the rebuilt one', () => {
    const folder = nativeFolder(OLDER_ADDON, 'builds');
    const result = install(folder);
    expect(result.status).toBe(0);
    expect(readFileSync(folder.built).equals(readFileSync(SYSV_SHM_ADDON_PATH))).toBe(true);
    expect(result.stderr).toBe('');
    expect(folder.backupLeft()).toBe(false);
  });

  it('explains, and exits 0, when there is no addon and none builds', () => {
    const folder = nativeFolder(null, 'fails');
    const result = install(folder);
    expect(result.status).toBe(0);
    expect(existsSync(folder.built)).toBe(false);
    expect(result.stderr).toContain('The agent works without it');
    expect(result.stderr).toContain('apt-get install build-essential python3');
  });
});
