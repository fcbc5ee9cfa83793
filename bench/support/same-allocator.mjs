// Runs this benchmark process (the in-process baseline, the clients) and the floor servers it starts (they inherit
// the variable) with glibc's malloc thresholds set as the agent sets them for itself by default
// (edgefleet_keep_freed_memory_bytes, packages/agent/src/daemon/process-tuning.ts): otherwise a baseline or floor
// whose outputs are large (the 588 KiB image) pays page faults on every run that the agent no longer pays, and its
// ratios would measure the allocator's settings rather than the agent's work. The agents run without the variable
// (withoutAllocatorSettings), with what they set themselves. Import it first: where the variable is not set yet, it
// starts this same command again with it and exits with its status. On a C library other than glibc it does
// nothing (the agent's setting does nothing there either).
import { spawnSync } from 'node:child_process';
import { DEFAULTS } from '../../packages/agent/dist/config/config-file.js';
import { mallocThresholds } from '../../packages/agent/dist/daemon/process-tuning.js';

const VARIABLE = 'GLIBC_TUNABLES';

/** `env` without the variable: for the agents a benchmark starts, which set their thresholds themselves. */
export function withoutAllocatorSettings(env) {
  const { [VARIABLE]: _, ...rest } = env;
  return rest;
}

const glibc = process.platform === 'linux' && Boolean(process.report?.getReport().header.glibcVersionRuntime);
if (glibc && process.env[VARIABLE] === undefined) {
  const { trimBytes, mmapBytes, topPadBytes } = mallocThresholds(DEFAULTS.keepFreedMemoryBytes);
  // Synchronously, so that no module imported after this one runs (loads ONNX Runtime) in this process.
  const { status, signal } = spawnSync(process.execPath, [...process.execArgv, ...process.argv.slice(1)], {
    stdio: 'inherit',
    env: {
      ...process.env,
      [VARIABLE]: `glibc.malloc.trim_threshold=${trimBytes}:glibc.malloc.mmap_threshold=${mmapBytes}:glibc.malloc.top_pad=${topPadBytes}`,
    },
  });
  process.exit(status ?? (signal ? 1 : 0));
}
