// Install step of the packed @edgefleet/agent: builds the System V shared-memory addon with the node-gyp npm
// provides. A prebuilt addon of this version (the device bundle ships one) is kept. An older one that loads (built
// before its newest function) is rebuilt, and put back if the build fails: `node-gyp rebuild` empties build/ first,
// and a device without a compiler would otherwise lose shared memory it had. Without any addon the agent still runs,
// refusing only Predict calls that pass tensors in shared memory, so a failed build explains and exits 0.
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const nativeDir = dirname(fileURLToPath(import.meta.url));
const addon = join(nativeDir, 'build', 'Release', 'sysv_shm.node');
// Beside the sources, not in the temporary folder: a device's /tmp may be mounted noexec, where no addon loads.
const backup = join(nativeDir, 'sysv_shm.older.node');

/**
 * What the addon at `path` is: this version's ('current'), an older one that loads ('older', with what it lacks)
 * or none. Judged in a child process: Node caches an addon by path, so this process would judge a rebuilt addon
 * by the one it loaded before.
 */
function judge(path) {
  const probe = spawnSync(
    process.execPath,
    [
      '-e',
      'const a = require(process.argv[1]); console.log(JSON.stringify({ current: typeof a.setMallocThresholds === "function", clock: typeof a.threadCpuNanos === "function" }))',
      path,
    ],
    { encoding: 'utf8' },
  );
  if (probe.status !== 0) return { version: 'none' };
  let current, clock;
  try {
    // The last line: a preload (NODE_OPTIONS=--require …) may print before it.
    ({ current, clock } = JSON.parse(probe.stdout.trim().split('\n').pop()));
  } catch {
    return { version: 'none' };
  }
  return current ? { version: 'current' } : { version: 'older', lacksClock: !clock };
}

/** What an older addon lacks, in the agent's terms. */
const lacksOf = (older) =>
  ['edgefleet_keep_freed_memory_bytes has no effect']
    .concat(older.lacksClock ? ['inline runs are judged by the process CPU time'] : [])
    .join(', and ');

const before = existsSync(addon) ? judge(addon) : { version: 'none' };
if (before.version !== 'current') build(before);

function build(before) {
  if (before.version === 'older') copyFileSync(addon, backup);
  const nodeGyp = process.env.npm_config_node_gyp;
  const command = nodeGyp ? [process.execPath, [nodeGyp, 'rebuild']] : ['node-gyp', ['rebuild']];
  const result = spawnSync(command[0], command[1], { cwd: nativeDir, stdio: ['ignore', 'pipe', 'pipe'] });
  const built = result.status === 0 && existsSync(addon) && judge(addon).version === 'current';
  const kept = !built && before.version === 'older';
  if (kept) {
    mkdirSync(dirname(addon), { recursive: true });
    copyFileSync(backup, addon);
  }
  rmSync(backup, { force: true });
  if (built) return;

  const detail = result.error
    ? result.error.message
    : String(result.stderr).trim().split('\n').slice(-3).join('\n');
  process.stderr.write(
    `@edgefleet/agent: could not build the native addon (${addon}).
  ${detail}
  ${
    kept
      ? `The addon that was there, built by an older version, is kept: shared memory works; ${lacksOf(before)}.`
      : 'The agent works without it, except that Predict calls passing tensors in shared memory are refused, ' +
        'inline runs are judged by the process CPU time, and glibc keeps its own malloc thresholds.'
  }
  To build it: install a C++ compiler, make and Python (Debian: apt-get install build-essential python3),
  then run \`npm rebuild @edgefleet/agent\`.
`,
  );
}
