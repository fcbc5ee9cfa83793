import { lstatSync, readdirSync, realpathSync } from 'node:fs';
import { dirname, join } from 'node:path';
import SqliteDatabase from 'better-sqlite3';
import {
  acquireAgentFolderLock,
  FolderInUseError,
  lockHolderPid,
  type FolderLock,
  type FolderLockOptions,
  type LockedFolderKind,
  type NestedFolder,
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
 * Nested folders share files just the same (the outer agent sweeps, uploads and counts the inner one's), so the
 * folder is refused too when another agent holds a capture folder inside it or around it, compared by real path
 * (no symbolic link or `..` hides one). Throws FolderInUseError when held elsewhere (with `nested` for such a
 * folder), FolderLockError when it cannot be taken.
 */
export function lockCaptureFolder(folder: string, options: FolderLockOptions = {}): FolderLock {
  const lock = acquireAgentFolderLock(folder, CAPTURE_FOLDER, options);
  try {
    // After taking its own lock: of two agents starting at once on nested folders, at least one sees the other.
    const nested = heldNestedFolder(realpathSync(folder), options);
    if (nested)
      throw new FolderInUseError(
        CAPTURE_FOLDER,
        folder,
        lockHolderPid(join(nested.folder, CAPTURE_FOLDER_LOCK_FILE), options.procLocksPath),
        nested,
      );
  } catch (error) {
    lock.release();
    throw error;
  }
  return lock;
}

/**
 * A capture folder another agent holds around `real` (an ancestor's lock file) or inside it (a lock file anywhere
 * below, symbolic links not followed: the agent's sweeps and uploads do not follow them either), or undefined.
 * Lock files no process holds (an agent that stopped), and other users' files, do not count.
 */
function heldNestedFolder(real: string, options: FolderLockOptions): NestedFolder | undefined {
  for (let dir = dirname(real); ; dir = dirname(dir)) {
    if (heldByAnother(join(dir, CAPTURE_FOLDER_LOCK_FILE), options))
      return { folder: dir, relation: 'inside' };
    if (dir === dirname(dir)) break;
  }
  // Not across mount points: another filesystem mounted below (a dead NFS mount included) is not walked.
  const device = lstatSync(real).dev;
  const below = (dir: string): NestedFolder | undefined => {
    let entries;
    try {
      entries = readdirSync(dir, { withFileTypes: true });
    } catch {
      return undefined; // gone meanwhile, or not ours to read: nothing the agent sweeps either
    }
    for (const entry of entries) {
      if (!entry.isDirectory()) continue;
      const sub = join(dir, entry.name);
      if (!onDevice(sub, device)) continue;
      if (heldByAnother(join(sub, CAPTURE_FOLDER_LOCK_FILE), options))
        return { folder: sub, relation: 'contains' };
      const found = below(sub);
      if (found) return found;
    }
    return undefined;
  };
  return below(real);
}

/**
 * Whether a process holds the capture folder lock file at `path`. /proc/locks first, without opening the file:
 * a lock of this very process (another FolderLock in it) would be dropped by closing a descriptor of the file.
 * Where it cannot tell (no /proc/locks, a holder in another pid namespace), a read of the file is refused
 * (SQLITE_BUSY) while an agent keeps its exclusive lock. Only a regular file is looked at (no link followed, no
 * FIFO waited on). Never called on this agent's own lock file.
 */
function heldByAnother(path: string, options: FolderLockOptions): boolean {
  try {
    const stats = lstatSync(path);
    // Only an agent's lock file: one of this user's (or root's). Another local user's file in a shared folder
    // above (/tmp) must not be able to keep this agent from starting.
    if (!stats.isFile() || (stats.uid !== process.getuid?.() && stats.uid !== 0)) return false;
  } catch {
    return false;
  }
  if (lockHolderPid(path, options.procLocksPath) !== undefined) return true;
  let db;
  try {
    db = new SqliteDatabase(path, { readonly: true, fileMustExist: true, timeout: 0 });
  } catch {
    return false; // not ours to open (another user's, 0600), and not listed as held
  }
  try {
    db.prepare('SELECT count(*) FROM sqlite_master').get();
    return false;
  } catch (error) {
    return (error as { code?: unknown }).code === 'SQLITE_BUSY';
  } finally {
    db.close();
  }
}

function onDevice(path: string, device: number): boolean {
  try {
    return lstatSync(path).dev === device;
  } catch {
    return false;
  }
}
