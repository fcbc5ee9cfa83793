import { constants } from 'node:fs';
import { lstat, open, readlink, realpath, stat, type FileHandle } from 'node:fs/promises';
import { dirname, isAbsolute, join, sep } from 'node:path';
import {
  DEFAULT_ARCHIVE_LIMITS,
  MANIFEST_FILE,
  PackageFileError,
  descriptorLookupWorks,
  listFiles,
  openFolderByDescriptors,
  type ListingLimits,
  type PackageFileCheck,
  type PackageFolderCheck,
} from '@edgefleet/core';

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
 * (openFolderForCaller), so that the agent, which opens packages with its own rights, tells a caller nothing of
 * folders it could not look into.
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
  /** For the package reader: refuses a file (its fstat) the caller may not read, whatever was checked by name. */
  readonly fileCheck: PackageFileCheck;
  /** For verification's listing: its rights on each folder (fstat) and the bounds (see callerListingOptions). */
  readonly listing: { folderCheck: PackageFolderCheck; limits: ListingLimits };
  close(): Promise<void>;
}

/**
 * What openFolderForCaller found: the folder, opened and checked; 'missing' or 'file' where the caller could see
 * that itself (found by the one walk down from `/` through folders it may search, no link followed); 'refused'
 * for everything else, which the caller is told nothing about.
 */
export type CallerFolderResult =
  { kind: 'opened'; folder: CallerFolder } | { kind: 'missing' } | { kind: 'file' } | { kind: 'refused' };

/** The agent cannot hold a folder open and look inside it (no /proc/self/fd), so cannot check it for a caller. */
export class DescriptorPathsUnavailableError extends Error {
  override readonly name = 'DescriptorPathsUnavailableError';
}

/**
 * A package folder too large or too deep to check for a caller: more entries than a package archive may hold
 * (core's DEFAULT_ARCHIVE_LIMITS.maxEntries), or folders nested deeper than MAX_CHECKED_DEPTH; its message says which.
 */
export class CallerCheckLimitError extends Error {
  override readonly name = 'CallerCheckLimitError';
}

/** Most entries (files and folders, the whole tree) checked for a caller: no deployed package holds more. */
export const MAX_CHECKED_ENTRIES = DEFAULT_ARCHIVE_LIMITS.maxEntries;
/** Deepest folder checked for a caller (the package folder is depth 0); a model package needs a few levels. */
export const MAX_CHECKED_DEPTH = 32;

/**
 * Errors of an open that say the agent ran short (descriptors, memory) or its disk failed, not that the caller
 * lacks a right: thrown as they are, for the registry to answer RESOURCE_EXHAUSTED / UNAVAILABLE and log.
 */
const AGENT_FAILURES = new Set(['EMFILE', 'ENFILE', 'ENOMEM', 'EIO']);

/**
 * The error inside `error` (itself or a cause) whose errno code is one of AGENT_FAILURES: an errno error, or
 * core's PackageFileError, which keeps the code of the open that failed; else undefined.
 */
export function agentSideFailure(error: unknown): NodeJS.ErrnoException | undefined {
  for (let e = error; e instanceof Error; e = e.cause) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== undefined && AGENT_FAILURES.has(code)) return e as NodeJS.ErrnoException;
  }
  return undefined;
}

/**
 * Opens the package folder `dir` (absolute) for `caller` and decides on what it holds whether the caller could
 * read it itself. First one walk down from `/`, each component looked up in the folder held before it (core's
 * openFolderByDescriptors) with no link followed, each folder on the way searchable by the caller: what it finds
 * ('missing', 'file') is what the caller could see itself, and nothing it finds depends on where a link leads.
 * Where a component is a link (a caller may name `models/current`), the folder is opened by name, following
 * links, and judged on that descriptor alone (its real path, as the kernel reports it, searchable all the way
 * and still leading to it); if that open fails, the answer is 'refused', never why. Then the folder itself
 * (fstat: read and search), manifest.json, and everything below (bounded, see callerCanReadTree). Resolves
 * with the folder held, to load through its `path` so that what is loaded is what was checked, or closes it.
 * Rejects with DescriptorPathsUnavailableError where this system does not show descriptors' paths,
 * CallerCheckLimitError for a tree too large to check, and an errno error (agentSideFailure) where the agent ran
 * out of descriptors or memory or hit an I/O error.
 */
export async function openFolderForCaller(
  dir: string,
  caller: CallerIdentity,
  deps: OpenedFolderDeps = fileSystemFolderAccess,
): Promise<CallerFolderResult> {
  const root = await deps.openFolder(sep);
  let handle: FileHandle;
  let path: string;
  try {
    if (!(await descriptorLookupWorks(root, deps.descriptors)))
      throw new DescriptorPathsUnavailableError(
        `the agent cannot look inside an open folder through ${deps.descriptors}/${root.fd}; a load for a caller it knows needs Linux with /proc mounted`,
      );
    const components = dir.split(sep).filter(Boolean);
    if (components.length === 0) return { kind: 'refused' };
    try {
      handle = await openFolderByDescriptors(root, components, {
        descriptors: deps.descriptors,
        visit: async (folder) => {
          if (!callerHolds(await folder.stat(), caller, SEARCH)) throw new NotSearchable();
        },
      });
      path = `${deps.descriptors}/${handle.fd}`;
    } catch (error) {
      if (error instanceof NotSearchable) return { kind: 'refused' };
      const failure = agentSideFailure(error);
      if (failure) throw failure;
      if (!(error instanceof PackageFileError)) return { kind: 'refused' };
      if (error.problem === 'missing') return { kind: 'missing' };
      if (error.problem === 'not-regular') return { kind: 'file' };
      if (error.problem !== 'symlink') return { kind: 'refused' };
      const linked = await openThroughLinks(dir, caller, deps);
      if (!linked) return { kind: 'refused' };
      ({ handle, path } = linked);
    }
  } finally {
    await root.close();
  }
  try {
    if (
      callerHolds(await handle.stat(), caller, READ_AND_SEARCH) &&
      (await callerCanReadContents(path, caller))
    ) {
      const { folderCheck, fileCheck, limits } = callerListingOptions(caller);
      return {
        kind: 'opened',
        folder: {
          path,
          fileCheck,
          listing: { folderCheck, limits },
          close: () => handle.close(),
        },
      };
    }
  } catch (error) {
    await handle.close();
    throw error;
  }
  await handle.close();
  return { kind: 'refused' };
}

/** Thrown by the walk's visit: a folder on the way the caller may not search. */
class NotSearchable extends Error {}

/**
 * `dir` opened by name, links followed, where the walk down met a link: the folder held and its descriptor path,
 * where the caller may search every folder of the path the kernel reports for it (which must still lead to it);
 * undefined (nothing held) where it may not, or the open failed (why is not said: the failure may have been met
 * wherever a link led).
 */
async function openThroughLinks(
  dir: string,
  caller: CallerIdentity,
  deps: OpenedFolderDeps,
): Promise<{ handle: FileHandle; path: string } | undefined> {
  let handle: FileHandle;
  try {
    handle = await deps.openFolder(dir);
  } catch (error) {
    const failure = agentSideFailure(error);
    if (failure) throw failure;
    return undefined;
  }
  try {
    const { path, real } = await descriptorPath(handle, deps);
    if (await callerReachesOpenedFolder(handle, real, caller, deps)) return { handle, path };
  } catch (error) {
    await handle.close();
    throw error;
  }
  await handle.close();
  return undefined;
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
 * Whether `caller` may search every folder of `real`, the path the kernel reports for the folder `handle` holds,
 * and that path, looked at again afterwards, still leads to that folder.
 */
async function callerReachesOpenedFolder(
  handle: FileHandle,
  real: string,
  caller: CallerIdentity,
  deps: OpenedFolderDeps,
): Promise<boolean> {
  // Linux adds " (deleted)" to the path of a removed folder. No path leads there, so the dev/ino check below
  // refuses it as well; this says so without stat'ing a name that is not the folder's.
  if (!isAbsolute(real) || real.endsWith(' (deleted)')) return false;
  const folder = await handle.stat();
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
 * Whether `caller` could read what the package reader will read below the folder at `root` (a descriptor's
 * path, whose own rights were checked): manifest.json first. Without one the reader stops there ("has no
 * manifest.json", which the caller can see itself), and nothing more is looked at; so does a manifest.json that is
 * a link or no regular file (the reader refuses it). A manifest the caller may not read refuses; else the whole
 * tree is checked (callerCanReadTree).
 */
async function callerCanReadContents(root: string, caller: CallerIdentity): Promise<boolean> {
  const manifest = await lstat(join(root, MANIFEST_FILE)).catch(() => undefined);
  if (!manifest?.isFile()) return true;
  if (!callerHolds(manifest, caller, READ)) return false;
  return callerCanReadTree(root, caller);
}

/**
 * Whether `caller` could read everything below the folder at `root` (a descriptor's path): each folder read and
 * searched, each file read. It is core's listing (listFiles), which holds each folder open and opens each
 * subfolder inside it with no link followed, so a folder swapped for a link is never looked into; the checks run
 * on each folder's fstat and each file's lstat. Bounded: MAX_CHECKED_ENTRIES entries and MAX_CHECKED_DEPTH levels
 * (CallerCheckLimitError past them), so a caller's huge folder costs the agent no more than the largest package.
 * Special files and links make no refusal here (the package reader refuses them itself). An error that is the
 * agent's own trouble (agentSideFailure) is thrown; any other refuses. Whoever may write a folder of the package
 * could still move a file in after this check: each file is checked again as it is read (CallerFolder.fileCheck)
 * and each folder as verification lists it (CallerFolder.folderCheck); docs/security.md says what is left.
 */
async function callerCanReadTree(root: string, caller: CallerIdentity): Promise<boolean> {
  try {
    await listFiles(root, [], { ...callerListingOptions(caller), skipUnsupported: true });
    return true;
  } catch (error) {
    if (error instanceof PackageFileError && error.problem === 'too-large')
      throw new CallerCheckLimitError(
        error.message.replace(/^the package's /, 'its ').replace(/^the package /, 'it '),
      );
    if (agentSideFailure(error)) throw error;
    return false;
  }
}

/** What core's listing is given for `caller`: its rights checked on each folder and file, and the bounds. */
export function callerListingOptions(caller: CallerIdentity): {
  folderCheck: PackageFolderCheck;
  fileCheck: PackageFileCheck;
  limits: ListingLimits;
} {
  return {
    folderCheck: (folder) =>
      callerHolds(folder, caller, READ_AND_SEARCH)
        ? undefined
        : `your user (uid ${caller.uid}) may not list it`,
    fileCheck: (file) =>
      callerHolds(file, caller, READ) ? undefined : `your user (uid ${caller.uid}) may not read it`,
    limits: { maxEntries: MAX_CHECKED_ENTRIES, maxDepth: MAX_CHECKED_DEPTH },
  };
}
