import { constants } from 'node:fs';
import { lstat, open, readdir, readlink, realpath, stat, type FileHandle } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, sep } from 'node:path';

/**
 * Who asks the agent to load a package, as the kernel saw the process at the other end of its Unix socket
 * (SO_PEERCRED; PeerCredentials fits).
 */
export interface CallerIdentity {
  uid: number;
  gid: number;
  /** Supplementary groups; empty where the kernel cannot tell them (the caller then gets fewer rights, not more). */
  groups: readonly number[];
}

/** What the check reads of a file: its owner, group and permission bits. */
export interface FileModeOf {
  /** Device and inode: which file it is. */
  dev: number;
  ino: number;
  uid: number;
  gid: number;
  mode: number;
  isDirectory(): boolean;
}

export interface CallerAccessDeps {
  realpath(path: string): Promise<string>;
  stat(path: string): Promise<FileModeOf>;
}

const SEARCH = 0o1;
const READ = 0o4;
const READ_AND_SEARCH = 0o5;

/**
 * Whether `caller` holds all of `bits` (read 4, write 2, search 1) on a file: the owner's bits for its owner, the
 * group's for a member of its group, the others' for everyone else; root holds all. POSIX ACLs are not read: a
 * caller an ACL alone lets in is refused (fail closed).
 */
export function callerHolds(file: FileModeOf, caller: CallerIdentity, bits: number): boolean {
  if (caller.uid === 0) return true;
  const shift =
    caller.uid === file.uid ? 6 : caller.gid === file.gid || caller.groups.includes(file.gid) ? 3 : 0;
  return ((file.mode >> shift) & bits) === bits;
}

/**
 * Whether `caller` could itself read the package folder `dir` (absolute): search every folder on the way to it
 * (symlinks resolved) and read and search the folder itself. Where `dir` does not exist, whether the caller could
 * search its way to the deepest part that does, and so see for itself that the rest is missing. Anything the
 * agent cannot tell counts as not readable. It reads by name, so it cannot say what a later open of `dir` finds:
 * LoadModel asks it first, as a cheap refusal before opening anything, and decides on the folder it then opens
 * (openFolderForCaller, or whyNotAFolder where none opens), so that the agent, which opens packages with its own
 * rights, tells a caller nothing of folders it could not look into.
 */
export async function callerCanReadFolder(
  dir: string,
  caller: CallerIdentity,
  deps: CallerAccessDeps = { realpath, stat },
): Promise<boolean> {
  if (caller.uid === 0) return true;
  let existing = dir;
  let real: string;
  for (;;) {
    try {
      real = await deps.realpath(existing);
      break;
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      const parent = dirname(existing);
      if ((code !== 'ENOENT' && code !== 'ENOTDIR') || parent === existing) return false;
      existing = parent;
    }
  }
  const found = existing === dir;
  const parts = real.split(sep).filter(Boolean);
  const chain = [sep, ...parts.map((_, i) => sep + parts.slice(0, i + 1).join(sep))];
  for (const [i, path] of chain.entries()) {
    let file: FileModeOf;
    try {
      file = await deps.stat(path);
    } catch {
      return false;
    }
    const last = i === chain.length - 1;
    // A file at the end (the url names a file, or a path goes on below one): its type is all the caller learns,
    // and it can see that itself once it may search the folders on the way.
    if (last && !file.isDirectory()) return true;
    if (!callerHolds(file, caller, last && found ? READ_AND_SEARCH : SEARCH)) return false;
  }
  return true;
}

/** What the check reads of an open folder: its stat (fstat) and the path the kernel reports for it. */
export interface OpenedFolderDeps extends CallerAccessDeps {
  /** Opens a folder to read: O_RDONLY | O_DIRECTORY, symlinks on the way followed (the caller named them). */
  openFolder(path: string): Promise<FileHandle>;
  /**
   * Where this process's descriptors appear as links (Linux: /proc/self/fd): `<descriptors>/<fd>` names the
   * folder a descriptor holds, whatever has become of the name it was opened by.
   */
  descriptors: string;
}

/** The file system itself: what the agent checks and opens with. */
export const fileSystemFolderAccess: OpenedFolderDeps = {
  realpath,
  stat,
  // Non-blocking: whatever is there, the open never waits (O_DIRECTORY refuses a FIFO before opening it anyway).
  openFolder: (path) => open(path, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NONBLOCK),
  descriptors: '/proc/self/fd',
};

/** A package folder opened for a caller, checked on its descriptor: load through `path` until `close()`. */
export interface CallerFolder {
  /** `<descriptors>/<fd>`: the folder the check passed, whatever is named `dir` by now. */
  readonly path: string;
  close(): Promise<void>;
}

/** The agent cannot hold a folder open and read where it is (no /proc/self/fd), so cannot check it for a caller. */
export class DescriptorPathsUnavailableError extends Error {
  override readonly name = 'DescriptorPathsUnavailableError';
}

/**
 * Opens the package folder `dir` once and decides on that descriptor whether `caller` could read it itself: the
 * folder's own owner, group and mode (fstat: read and search), search on every folder of the path the kernel
 * reports for the descriptor (which must still lead to the same folder), and read on everything in it (read and
 * search on each folder below, read on each file; links and special files the package reader refuses anyway).
 * Resolves with the open folder, to load through its `path`, so that what is loaded is what was checked even if
 * `dir` is swapped for a link meanwhile; or undefined (closed again) where the caller could not read it. Rejects
 * with the open's own error (ENOENT, ENOTDIR, ...) where `dir` cannot be opened as a folder, and with
 * DescriptorPathsUnavailableError where this system does not show descriptors' paths.
 */
export async function openFolderForCaller(
  dir: string,
  caller: CallerIdentity,
  deps: OpenedFolderDeps = fileSystemFolderAccess,
): Promise<CallerFolder | undefined> {
  const handle = await deps.openFolder(dir);
  try {
    const { path, real } = await descriptorPath(handle, deps);
    if (
      (await callerReachesOpenedFolder(handle, real, caller, deps, READ_AND_SEARCH)) &&
      (await callerCanReadTree(path, caller))
    )
      return { path, close: () => handle.close() };
  } catch (error) {
    await handle.close();
    throw error;
  }
  await handle.close();
  return undefined;
}

/**
 * Why `dir` could not be opened as a folder, where `caller` could see that for itself: 'missing' (nothing there,
 * or the path goes on below a file) or 'file' (`dir` is one); undefined where the caller could not, or the agent
 * cannot tell without looking by name again. Decided inside the deepest folder on the way the agent can open, on
 * its descriptor (search on it and on the folders of its real path, as openFolderForCaller checks), so that a
 * link swapped in or out meanwhile tells the caller nothing of a folder it may not search. Rejects with
 * DescriptorPathsUnavailableError where this system does not show descriptors' paths.
 */
export async function whyNotAFolder(
  dir: string,
  caller: CallerIdentity,
  deps: OpenedFolderDeps = fileSystemFolderAccess,
): Promise<'missing' | 'file' | undefined> {
  const below: string[] = [];
  let above = dir;
  let handle: FileHandle | undefined;
  while (!handle) {
    const parent = dirname(above);
    if (parent === above) return undefined;
    below.unshift(basename(above));
    above = parent;
    try {
      handle = await deps.openFolder(above);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ENOTDIR') return undefined;
    }
  }
  try {
    const { path, real } = await descriptorPath(handle, deps);
    if (!(await callerReachesOpenedFolder(handle, real, caller, deps, SEARCH))) return undefined;
    // Looked up in the folder held: what the caller would find there itself, searching it.
    const next = await lstat(join(path, below[0]!)).then(
      (found) => found,
      (error: NodeJS.ErrnoException) => (error.code === 'ENOENT' ? null : undefined),
    );
    if (next === null) return 'missing';
    if (next?.isFile()) return below.length === 1 ? 'file' : 'missing';
    // A folder or a link there: the open that failed looked elsewhere, or something changed; say nothing.
    return undefined;
  } finally {
    await handle.close();
  }
}

/** `<descriptors>/<fd>` and the path the kernel reports for it. */
async function descriptorPath(
  handle: FileHandle,
  deps: OpenedFolderDeps,
): Promise<{ path: string; real: string }> {
  const path = `${deps.descriptors}/${handle.fd}`;
  try {
    return { path, real: await readlink(path) };
  } catch (error) {
    throw new DescriptorPathsUnavailableError(
      `the agent cannot read the path of an open folder at ${path} (${(error as NodeJS.ErrnoException).code ?? 'an I/O error'}); a load for a caller it knows needs Linux with /proc mounted`,
    );
  }
}

/**
 * Whether `caller` holds `bits` on the folder `handle` holds (fstat), found by the kernel at `real`, and search on
 * every folder of that path.
 */
async function callerReachesOpenedFolder(
  handle: FileHandle,
  real: string,
  caller: CallerIdentity,
  deps: OpenedFolderDeps,
  bits: number,
): Promise<boolean> {
  const folder = await handle.stat();
  if (!folder.isDirectory() || !callerHolds(folder, caller, bits)) return false;
  // Linux adds " (deleted)" to the path of a removed folder: there is no path the caller could take to it.
  if (!isAbsolute(real) || real.endsWith(' (deleted)')) return false;
  const parts = real.split(sep).filter(Boolean);
  const ancestors = [sep, ...parts.slice(0, -1).map((_, i) => sep + parts.slice(0, i + 1).join(sep))];
  for (const path of ancestors) {
    const ancestor = await deps.stat(path).catch(() => undefined);
    if (!ancestor?.isDirectory() || !callerHolds(ancestor, caller, SEARCH)) return false;
  }
  // The ancestors were read by name: the path must still lead to the folder held, or they were someone else's.
  const again = await deps.stat(real).catch(() => undefined);
  return again !== undefined && again.dev === folder.dev && again.ino === folder.ino;
}

/**
 * Whether `caller` could read everything below the folder at `root` (a descriptor's path): each folder read and
 * searched, each file read. Links are not followed (the package reader refuses them), nor are special files read.
 * Looked at before the package reader opens the files (by name, below the held folder): whoever may write the
 * folder could swap a file in between, but only for one it may put there (docs/security.md says what is left).
 */
async function callerCanReadTree(root: string, caller: CallerIdentity): Promise<boolean> {
  const entries = await readdir(root, { withFileTypes: true }).catch(() => undefined);
  if (!entries) return false;
  for (const entry of entries) {
    const path = join(root, entry.name);
    const found = await lstat(path).catch(() => undefined);
    if (!found) return false;
    if (found.isDirectory()) {
      if (!callerHolds(found, caller, READ_AND_SEARCH) || !(await callerCanReadTree(path, caller)))
        return false;
    } else if (found.isFile() && !callerHolds(found, caller, READ)) {
      return false;
    }
  }
  return true;
}
