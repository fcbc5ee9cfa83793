// glibc's malloc thresholds as the agent sets them for itself by default (edgefleet_keep_freed_memory_bytes, through
// its native addon: packages/agent/src/daemon/process-tuning.ts), for the benchmark's own processes: the in-process
// baseline (and its worker threads: the setting is process-wide), the clients, and the floor servers. Otherwise a
// baseline or floor whose outputs are large (the 588 KiB image) pays page faults on every run that the agent no
// longer pays, and its ratios measure the allocator's settings rather than the agent's work. The agents set theirs
// themselves (an older build, --compare, sets none).
import { join } from 'node:path';

/**
 * Sets them in this process; resolves what was set ("mmap threshold …, trim threshold …, top pad …"), or null where
 * they could not be (not glibc, no addon: the agent would not set them either).
 */
export async function useAgentMallocThresholds(root) {
  const dist = join(root, 'packages/agent/dist');
  const { DEFAULTS } = await import(join(dist, 'config/config-file.js'));
  const { mallocThresholds } = await import(join(dist, 'daemon/process-tuning.js'));
  const { loadSysvShmAddon } = await import(join(dist, 'shm/index.js'));
  let addon;
  try {
    addon = loadSysvShmAddon();
  } catch {
    return null;
  }
  const { mmapBytes, trimBytes, topPadBytes } = mallocThresholds(DEFAULTS.keepFreedMemoryBytes);
  if (addon.setMallocThresholds?.(mmapBytes, trimBytes, topPadBytes) !== 'applied') return null;
  const mib = (bytes) => `${bytes / 1024 ** 2} MiB`;
  return `mmap threshold ${mib(mmapBytes)}, trim threshold ${mib(trimBytes)}, top pad ${mib(topPadBytes)}`;
}
