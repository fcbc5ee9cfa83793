import {
  acquireAgentFolderLock,
  type FolderLock,
  type FolderLockOptions,
  type LockedFolderKind,
} from '../state/index.js';
import { CAPTURE_FOLDER_MODE } from './atomic-files.js';

/**
 * The lock file's name in the Disk capture folder. Hidden, so the periodic upload and collectors skip it (as
 * they skip temporary files); not agent.lock, so a capture folder that is the data root itself is locked twice
 * without one lock's file closing the other's descriptors.
 */
export const CAPTURE_FOLDER_LOCK_FILE = '.edgefleet-capture.lock';

export const CAPTURE_FOLDER: LockedFolderKind = {
  label: 'the Disk capture folder',
  configKey: 'sagemaker_edge_core_capture_data_disk_path',
  logField: 'captureFolder',
  onePerFolder:
    'one agent per capture folder (each writes, uploads and counts the quota of the whole folder)',
  ownFolder: 'a capture folder of its own',
  program: 'edgefleet-agent',
  holder: 'agent',
  lockFileName: CAPTURE_FOLDER_LOCK_FILE,
  folderMode: CAPTURE_FOLDER_MODE,
};

/**
 * One agent per Disk capture folder, as per data root (FolderLock): agents with different data roots but the
 * same capture folder would otherwise write, sweep, upload and count each other's files against their quotas.
 * Throws FolderInUseError when held elsewhere, FolderLockError when it cannot be taken.
 */
export function lockCaptureFolder(folder: string, options: FolderLockOptions = {}): FolderLock {
  return acquireAgentFolderLock(folder, CAPTURE_FOLDER, options);
}
