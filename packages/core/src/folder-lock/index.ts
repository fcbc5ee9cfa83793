export {
  describeFileError,
  FolderInUseError,
  FolderLock,
  FolderLockError,
  lockHolder,
  lockHolderPid,
  type FolderLockOptions,
  type FolderLockProblem,
  type LockConnection,
  type LockedFolderKind,
  type NestedFolder,
} from './folder-lock.js';
