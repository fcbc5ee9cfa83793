export {
  FolderInUseError,
  FolderLock,
  FolderLockError,
  lockHolder,
  lockHolderPid,
  type FolderLockOptions,
  type LockConnection,
  type LockedFolderKind,
  type NestedFolder,
} from './folder-lock.js';
