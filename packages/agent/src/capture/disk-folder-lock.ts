import { FolderLock, type FolderLockOptions, type LockedFolderKind } from '../state/index.js';
import { CAPTURE_FOLDER_MODE } from './atomic-files.js';

/**
 * The lock file's name in the Disk capture folder. Hidden, so the periodic upload and collectors skip it (as
 * they skip temporary files); not agent.lock, so a capture folder that is the data root itself is locked twice
 * without one lock's file closing the other's descriptors.
 */
export const CAPTURE_FOLDER_LOCK_FILE = '.edgefleet-capture.lock';

/** Another process (another edgefleet-agent) holds the Disk capture folder's lock. */
export class CaptureFolderInUseError extends Error {
  override readonly name = 'CaptureFolderInUseError';
  constructor(
    readonly folder: string,
    /** The holder's pid, when the kernel says (Linux /proc/locks); undefined when it cannot be known. */
    readonly holderPid: number | undefined,
  ) {
    super(
      `the Disk capture folder ${folder} (sagemaker_edge_core_capture_data_disk_path) is in use by another edgefleet-agent` +
        `${holderPid === undefined ? '' : ` (pid ${holderPid})`}; one agent per capture folder (each writes, uploads and counts the quota of the whole folder): stop that agent, or give this one a capture folder of its own`,
    );
  }
}

/** The capture folder's lock could not be taken for a reason other than another holder. */
export class CaptureFolderLockError extends Error {
  override readonly name = 'CaptureFolderLockError';
  constructor(
    readonly folder: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

const CAPTURE_FOLDER: LockedFolderKind = {
  label: 'the Disk capture folder',
  lockFileName: CAPTURE_FOLDER_LOCK_FILE,
  folderMode: CAPTURE_FOLDER_MODE,
  inUse: (folder, holderPid) => new CaptureFolderInUseError(folder, holderPid),
  failed: (folder, message, cause) =>
    new CaptureFolderLockError(folder, message, cause === undefined ? undefined : { cause }),
};

/**
 * One agent per Disk capture folder, as per data root (FolderLock): agents with different data roots but the
 * same capture folder would otherwise write, sweep, upload and count each other's files against their quotas.
 * Throws CaptureFolderInUseError when held elsewhere, CaptureFolderLockError when it cannot be taken.
 */
export function lockCaptureFolder(folder: string, options: FolderLockOptions = {}): FolderLock {
  return FolderLock.acquire(folder, CAPTURE_FOLDER, options);
}
