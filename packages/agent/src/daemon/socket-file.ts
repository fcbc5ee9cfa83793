import { chmod, lstat, unlink } from 'node:fs/promises';
import { connect } from 'node:net';
import { EXIT_CODES, StartupError } from './exit-codes.js';

/** How long a connection attempt to an existing socket may take before we call its owner alive. */
const PROBE_TIMEOUT_MS = 2000;

/** Whether a process accepts connections on the Unix socket at `path` (a hung connect counts as alive). */
export function socketAnswers(path: string, timeoutMs = PROBE_TIMEOUT_MS): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ path });
    const done = (alive: boolean): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve(alive);
    };
    const timer = setTimeout(() => done(true), timeoutMs);
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

/**
 * Makes sure the agent may bind `path` (spec §1, `-f`). Nothing there: fine. Something there without -f: refused.
 * With -f: only a socket is removed, and only when no process answers on it (a stale socket of an agent that
 * died); a live socket or any other kind of file is refused. Throws StartupError (exit 3) saying what to do.
 */
export async function prepareSocketPath(
  path: string,
  removeStale: boolean,
): Promise<{ removedStale: boolean }> {
  const existing = await lstat(path).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined;
    throw new StartupError(
      EXIT_CODES.SOCKET_UNAVAILABLE,
      `cannot check the socket path ${path}: ${error.code ?? error.message}; expected a path the agent may create a socket at`,
    );
  });
  if (existing === undefined) return { removedStale: false };
  if (!existing.isSocket()) {
    throw new StartupError(
      EXIT_CODES.SOCKET_UNAVAILABLE,
      `${path} exists and is not a socket (${describeKind(existing)}); the agent will not remove it, even with -f: remove it yourself or choose another -a path`,
    );
  }
  if (await socketAnswers(path)) {
    throw new StartupError(
      EXIT_CODES.SOCKET_UNAVAILABLE,
      `a process is already serving on ${path} (another agent?); stop it, or choose another -a path`,
    );
  }
  if (!removeStale) {
    throw new StartupError(
      EXIT_CODES.SOCKET_UNAVAILABLE,
      `the socket file ${path} already exists, and no process answers on it (left by an agent that stopped); start with -f to remove it, or remove it yourself`,
    );
  }
  await unlink(path).catch((error: NodeJS.ErrnoException) => {
    if (error.code !== 'ENOENT') {
      throw new StartupError(
        EXIT_CODES.SOCKET_UNAVAILABLE,
        `cannot remove the stale socket ${path}: ${error.code ?? error.message}`,
      );
    }
  });
  return { removedStale: true };
}

/** Gives the socket file its mode (after bind: the kernel creates it from the umask) and returns its inode. */
export async function restrictSocketFile(path: string, mode: number): Promise<number> {
  await chmod(path, mode);
  return (await lstat(path)).ino;
}

/** Removes the socket file if it is still the one we created (same inode): never another agent's. */
export async function removeOwnSocketFile(path: string, inode: number | undefined): Promise<void> {
  if (inode === undefined) return;
  const left = await lstat(path).catch(() => undefined);
  if (left?.isSocket() && left.ino === inode) await unlink(path).catch(() => {});
}

/** Runs `bind` with a umask that leaves the new socket file 0600 until it is chmod-ed (main thread only). */
export async function withPrivateUmask<T>(bind: () => Promise<T>): Promise<T> {
  let previous: number | undefined;
  try {
    previous = process.umask(0o177);
  } catch {
    // Worker threads cannot change the umask; the chmod right after bind still applies.
  }
  try {
    return await bind();
  } finally {
    if (previous !== undefined) process.umask(previous);
  }
}

function describeKind(stats: Awaited<ReturnType<typeof lstat>>): string {
  if (stats.isFile()) return 'a regular file';
  if (stats.isDirectory()) return 'a folder';
  if (stats.isSymbolicLink()) return 'a symbolic link';
  if (stats.isFIFO()) return 'a named pipe';
  return 'not a socket';
}
