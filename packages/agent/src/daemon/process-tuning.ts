/**
 * What the daemon sets up in its own process through the native addon (shm/sysv-shm-addon.ts), loaded once by the
 * daemon and passed in (null without it), each optional: an agent without the addon, or with one built before the
 * function, runs as before.
 */
import type { Logger } from 'pino';
import type { SysvShmAddon } from '../shm/index.js';

/** Where glibc's own adaptive mmap threshold stops on 64-bit (HEAP_MAX_SIZE / 2); some versions refuse a higher one. */
const MAX_MMAP_THRESHOLD_BYTES = 32 * 1024 ** 2;

/**
 * The event loop's CPU clock, for judging inline runs (InferencePoolOptions.threadCpuMs); without it the pool uses
 * the process's CPU time.
 */
export function threadCpuClock(addon: SysvShmAddon | null): { threadCpuMs?: () => number } {
  const clock = addon?.threadCpuNanos?.bind(addon);
  return clock ? { threadCpuMs: () => clock() / 1e6 } : {};
}

/** glibc's thresholds for keeping `bytes` of freed memory (see keepFreedMemory; the benchmarks set the same). */
export function mallocThresholds(bytes: number): {
  mmapBytes: number;
  trimBytes: number;
  topPadBytes: number;
} {
  return {
    mmapBytes: Math.min(Math.floor(bytes / 2), MAX_MMAP_THRESHOLD_BYTES),
    trimBytes: bytes,
    topPadBytes: bytes,
  };
}

/**
 * `edgefleet_keep_freed_memory_bytes`: glibc gives a heap's free top back to the kernel only past `bytes`, and then
 * keeps `bytes` of it (trim threshold, top pad: V8 can let more garbage pile up between collections than it keeps,
 * and a heap trimmed to nothing faulted it all in again), and serves allocations under half of it (at most 32 MiB)
 * from its heaps rather than from mmap (mmap threshold). onnxruntime-node copies each output into a new
 * ArrayBuffer, freed when V8 collects it: with glibc's own thresholds the freed copies of a model with large outputs
 * went back to the kernel, and every run faulted fresh pages in (147 page faults and about 180 µs per 588 KiB
 * request, docs/benchmarks.md). The cost: each heap that frees large buffers (the event loop's, each inference
 * worker's) may keep up to `bytes` it no longer uses, instead of shrinking between collections (the agent's peak
 * resident memory was about 20 MB higher in that benchmark). 0 leaves glibc's thresholds alone. Off glibc, or
 * without the addon (or with one that predates this), it does nothing; the log says which.
 */
export function keepFreedMemory(bytes: number, logger: Logger, addon: SysvShmAddon | null): boolean {
  if (bytes === 0) return false;
  const setThresholds = addon?.setMallocThresholds?.bind(addon);
  const thresholds = mallocThresholds(bytes);
  const outcome = setThresholds?.(thresholds.mmapBytes, thresholds.trimBytes, thresholds.topPadBytes);
  const fields = { keepFreedMemoryBytes: bytes, ...thresholds };
  if (outcome === 'applied') logger.debug(fields, 'glibc keeps freed memory for reuse');
  else if (outcome === 'refused')
    logger.warn(
      fields,
      'edgefleet_keep_freed_memory_bytes: glibc refused the mmap threshold (a 32-bit glibc, or huge pages for its heaps?); its own thresholds stay',
    );
  else
    logger.debug(
      fields,
      outcome === 'unsupported'
        ? 'edgefleet_keep_freed_memory_bytes: the C library is not glibc; its own allocator settings stay'
        : 'edgefleet_keep_freed_memory_bytes: the native addon is missing or predates it; glibc keeps its own thresholds',
    );
  return outcome === 'applied';
}
