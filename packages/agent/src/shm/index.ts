// System V shared memory: the segments SageMaker Edge clients name in SharedMemoryHandle (spec §3 item 6).
export {
  SharedMemoryError,
  SharedMemoryReader,
  SegmentLocationSchema,
  detachQuietly,
  sharedMemoryErrorOf,
} from './shared-memory.js';
export type {
  SegmentLease,
  SegmentLocation,
  SharedMemoryErrorCode,
  SharedMemoryReaderOptions,
} from './shared-memory.js';
export { SYSV_SHM_ADDON_PATH, isSysvShmSystemError, loadSysvShmAddon } from './sysv-shm-addon.js';
export type { SegmentStat, SysvShmAddon, SysvShmSystemError } from './sysv-shm-addon.js';
export { peerMay, type PeerCredentials } from './segment-access.js';
export { identityOf, rangesOverlap, sameSegment } from './segment-reference.js';
export type { SegmentIdentity, SegmentReference } from './segment-reference.js';
