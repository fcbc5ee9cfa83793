import { realpath, stat } from 'node:fs/promises';
import { dirname, sep } from 'node:path';

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
 * agent cannot tell counts as not readable. LoadModel asks this before opening a package for a caller, so that
 * the agent, which opens packages with its own rights, tells a caller nothing of folders it could not look into.
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
