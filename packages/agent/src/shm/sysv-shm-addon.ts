import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

/** What IPC_STAT says about a segment. */
export interface SegmentStat {
  /** shm_segsz: the segment's size in bytes (fixed for its lifetime). */
  size: number;
  /** Permission bits, e.g. 0o400. */
  mode: number;
  attachCount: number;
  /** shm_ctime, seconds since the epoch: creation or last IPC_SET. */
  changeTime: number;
  creatorPid: number;
  ownerUid: number;
  ownerGid: number;
  /** The creator's uid and gid (cuid, cgid), which the kernel treats like the owner's. */
  creatorUid: number;
  creatorGid: number;
  /** IPC_RMID was called: the segment goes when its last process detaches (Linux still lets it be attached). */
  markedForRemoval: boolean;
}

/**
 * The native System V shared memory addon (packages/agent/native/sysv_shm.cc). Failing calls throw an Error
 * whose `code` is the errno name (EINVAL, EACCES, EIDRM, …); shmids outside 0..2^31−1 throw with code EINVAL
 * before reaching the kernel.
 */
export interface SysvShmAddon {
  segmentSize(shmid: number): number;
  stat(shmid: number): SegmentStat;
  /**
   * The whole segment, mapped SHM_RDONLY, as an external ArrayBuffer exactly the segment's size. Writing to it
   * raises SIGSEGV: treat it as read-only. Unmapped by `detach`, or after garbage collection if never detached.
   */
  attachReadOnly(shmid: number): ArrayBuffer;
  /** The whole segment, mapped read-write (tests, benchmarks, clients). */
  attachReadWrite(shmid: number): ArrayBuffer;
  /**
   * Detaches the ArrayBuffer (all views over it become zero-length) and then unmaps the segment, so no JS code
   * can touch it afterwards. Returns false if it was detached already.
   */
  detach(attachment: ArrayBuffer): boolean;
  /** A new private segment (IPC_PRIVATE), mode 0600. */
  create(size: number): { shmid: number };
  /** IPC_RMID: the segment goes once no process has it attached. */
  remove(shmid: number): void;
  /** IPC_SET of the permission bits. */
  setMode(shmid: number, mode: number): void;
  /**
   * The credentials of the process at the other end of a connected Unix socket's file descriptor (SO_PEERCRED,
   * supplementary groups by SO_PEERGROUPS). Throws a system error (ENOTSOCK, EBADF; ENOSYS off Linux).
   */
  peerCredentials(fd: number): { pid: number; uid: number; gid: number; groups: number[] };
  /**
   * The calling thread's CPU time in nanoseconds (CLOCK_THREAD_CPUTIME_ID). Absent from addons built before it
   * (a prebuilt one is kept on install), so it is not required to load.
   */
  threadCpuNanos?(): number;
  /**
   * glibc's M_MMAP_THRESHOLD, M_TRIM_THRESHOLD and M_TOP_PAD, in bytes (0..2^31-1): 'applied', 'refused' (glibc
   * refused the mmap threshold; nothing was set) or 'unsupported' (not glibc). Absent from addons built before it,
   * like threadCpuNanos.
   */
  setMallocThresholds?(
    mmapBytes: number,
    trimBytes: number,
    topPadBytes: number,
  ): 'applied' | 'refused' | 'unsupported';
}

/** An Error thrown by the addon for a failed system call. */
export interface SysvShmSystemError extends Error {
  code: string;
  errno?: number;
  syscall?: string;
}

/** Where `npm run build:native -w @edgefleet/agent` puts the addon: same relative path from src/shm and dist/shm. */
export const SYSV_SHM_ADDON_PATH = fileURLToPath(
  new URL('../../native/build/Release/sysv_shm.node', import.meta.url),
);

const ADDON_FUNCTIONS = [
  'segmentSize',
  'stat',
  'attachReadOnly',
  'attachReadWrite',
  'detach',
  'create',
  'remove',
  'setMode',
  'peerCredentials',
] as const satisfies readonly (keyof SysvShmAddon)[];

/** Loads the addon (Node caches it per thread; loading it in a worker thread is fine). */
export function loadSysvShmAddon(path: string = SYSV_SHM_ADDON_PATH): SysvShmAddon {
  if (!existsSync(path)) {
    throw new Error(
      `the System V shared memory addon is not built: expected ${path}; run \`npm run build:native -w @edgefleet/agent\``,
    );
  }
  const loaded = createRequire(import.meta.url)(path) as Record<string, unknown>;
  const missing = ADDON_FUNCTIONS.filter((name) => typeof loaded[name] !== 'function');
  if (missing.length > 0) {
    throw new Error(`${path} is not the System V shared memory addon: it lacks ${missing.join(', ')}`);
  }
  return loaded as unknown as SysvShmAddon;
}

export function isSysvShmSystemError(error: unknown): error is SysvShmSystemError {
  return error instanceof Error && typeof (error as { code?: unknown }).code === 'string';
}
