// Install step of the packed @edgefleet/agent: builds the System V shared-memory addon with the node-gyp npm
// provides. A prebuilt addon of this version (the device bundle ships one) is kept. An older one that loads (built
// before its newest function) is rebuilt, and put back if the build fails: `node-gyp rebuild` empties build/ first,
// and a device without a compiler would otherwise lose shared memory it had. Without any addon the agent still runs,
// refusing only Predict calls that pass tensors in shared memory, so a failed build explains and exits 0.
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const nativeDir = dirname(fileURLToPath(import.meta.url));
const addon = join(nativeDir, 'build', 'Release', 'sysv_shm.node');

/** What the addon at `path` is: this version's, an older one that loads (without the newest function), or none. */
function versionOf(path) {
  try {
    return typeof createRequire(import.meta.url)(path).setMallocThresholds === 'function'
      ? 'current'
      : 'older';
  } catch {
    return 'none';
  }
}

/** What an older addon at `path` lacks, in the agent's terms. */
function olderLacks(path) {
  const lacks = ['edgefleet_keep_freed_memory_bytes has no effect'];
  if (typeof createRequire(import.meta.url)(path).threadCpuNanos !== 'function')
    lacks.push('inline runs are judged by the process CPU time');
  return lacks.join(', and ');
}

const before = existsSync(addon) ? versionOf(addon) : 'none';
if (before === 'current') process.exit(0);

// Node caches a loaded addon by path, so the rebuilt one is judged by a copy under a name of its own.
const scratch = mkdtempSync(join(tmpdir(), 'edgefleet-addon-'));
try {
  let kept;
  if (before === 'older') copyFileSync(addon, (kept = join(scratch, 'older.node')));

  const nodeGyp = process.env.npm_config_node_gyp;
  const command = nodeGyp ? [process.execPath, [nodeGyp, 'rebuild']] : ['node-gyp', ['rebuild']];
  const build = spawnSync(command[0], command[1], { cwd: nativeDir, stdio: ['ignore', 'pipe', 'pipe'] });
  if (build.status === 0 && existsSync(addon)) {
    copyFileSync(addon, join(scratch, 'rebuilt.node'));
    if (versionOf(join(scratch, 'rebuilt.node')) === 'current') process.exit(0);
  }

  const detail = build.error
    ? build.error.message
    : String(build.stderr).trim().split('\n').slice(-3).join('\n');
  if (kept) {
    mkdirSync(dirname(addon), { recursive: true });
    copyFileSync(kept, addon);
  }
  process.stderr.write(
    `@edgefleet/agent: could not build the native addon (${addon}).
  ${detail}
  ${
    kept
      ? `The addon that was there, built by an older version, is kept: shared memory works; ${olderLacks(kept)}.`
      : 'The agent works without it, except that Predict calls passing tensors in shared memory are refused, ' +
        'inline runs are judged by the process CPU time, and glibc keeps its own malloc thresholds.'
  }
  To build it: install a C++ compiler, make and Python (Debian: apt-get install build-essential python3),
  then run \`npm rebuild @edgefleet/agent\`.
`,
  );
} finally {
  rmSync(scratch, { recursive: true, force: true });
}
