export {
  FolderInUseError,
  FolderLock,
  FolderLockError,
  lockHolder,
  lockHolderPid,
  type FolderLockOptions,
  type LockConnection,
  type LockedFolderKind,
} from './folder-lock.js';
