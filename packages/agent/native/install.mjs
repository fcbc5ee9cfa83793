// Install step of the packed @edgefleet/agent: builds the System V shared-memory addon with the node-gyp npm
// provides. A prebuilt addon (the device bundle ships one) is kept. Without a compiler the agent still runs,
// refusing only Predict calls that pass tensors in shared memory, so a failed build explains and exits 0.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const nativeDir = dirname(fileURLToPath(import.meta.url));
const addon = join(nativeDir, 'build', 'Release', 'sysv_shm.node');

/** The addon loads and is this version's (an older prebuilt one, without the newest function, is rebuilt). */
function loads() {
  try {
    return typeof createRequire(import.meta.url)(addon).setMallocThresholds === 'function';
  } catch {
    return false;
  }
}

if (existsSync(addon) && loads()) process.exit(0);

const nodeGyp = process.env.npm_config_node_gyp;
const command = nodeGyp ? [process.execPath, [nodeGyp, 'rebuild']] : ['node-gyp', ['rebuild']];
const build = spawnSync(command[0], command[1], { cwd: nativeDir, stdio: ['ignore', 'pipe', 'pipe'] });
if (build.status === 0 && loads()) process.exit(0);

const detail = build.error
  ? build.error.message
  : String(build.stderr).trim().split('\n').slice(-3).join('\n');
process.stderr.write(
  `@edgefleet/agent: could not build the System V shared-memory addon (${addon}).
  ${detail}
  The agent works without it, except that Predict calls passing tensors in shared memory are refused.
  To build it: install a C++ compiler, make and Python (Debian: apt-get install build-essential python3),
  then run \`npm rebuild @edgefleet/agent\`.
`,
);
