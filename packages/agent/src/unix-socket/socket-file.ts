import { chmod, lstat, mkdtemp, rename, rm, unlink } from 'node:fs/promises';
import { connect } from 'node:net';
import { dirname, join } from 'node:path';

/**
 * The agent's one way of serving on a Unix socket file, for the gRPC socket and the REST socket alike: check
 * the path (stale sockets, live ones, other files), bind with the socket's mode in force from its first
 * moment, and remove only the file this process created.
 */

/** How long a connection attempt to an existing socket may take before we call its owner alive. */
const PROBE_TIMEOUT_MS = 2000;

/** Longest Unix socket path the kernel takes (sun_path is 108 bytes with its terminating zero). */
const MAX_SOCKET_PATH_BYTES = 107;

/** A socket path that cannot be served; the message says why and what to do. */
export class SocketPathError extends Error {
  override readonly name = 'SocketPathError';
}

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

export interface SocketPathOptions {
  /** Remove a socket file no process answers on (one left by a process that died); otherwise it is refused. */
  removeStale: boolean;
  /** How the operator chooses this path, for messages: `-a`, `edgefleet_rest_socket_path`. */
  option: string;
  /** How the operator asks for stale sockets to be removed, for messages (`-f`); absent: not possible. */
  removeStaleOption?: string;
}

/**
 * Makes sure a socket may be bound at `path`. Nothing there: fine. A socket no process answers on: removed
 * with `removeStale`, else refused. A live socket or any other kind of file: refused (never removed). Throws
 * SocketPathError saying what to do.
 */
export async function prepareSocketPath(
  path: string,
  options: SocketPathOptions,
): Promise<{ removedStale: boolean }> {
  const { option } = options;
  const existing = await lstat(path).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined;
    throw new SocketPathError(
      `cannot check the socket path ${path}: ${error.code ?? error.message}; expected a path the agent may create a socket at`,
    );
  });
  if (existing === undefined) return { removedStale: false };
  if (!existing.isSocket()) {
    const force = options.removeStaleOption ? `, even with ${options.removeStaleOption}` : '';
    throw new SocketPathError(
      `${path} exists and is not a socket (${describeKind(existing)}); the agent will not remove it${force}: remove it yourself or choose another ${option} path`,
    );
  }
  if (await socketAnswers(path)) {
    throw new SocketPathError(
      `a process is already serving on ${path} (another agent?); stop it, or choose another ${option} path`,
    );
  }
  if (!options.removeStale) {
    const force = options.removeStaleOption
      ? `start with ${options.removeStaleOption} to remove it, or `
      : '';
    throw new SocketPathError(
      `the socket file ${path} already exists, and no process answers on it (left by an agent that stopped); ${force}remove it yourself`,
    );
  }
  await unlink(path).catch((error: NodeJS.ErrnoException) => {
    if (error.code !== 'ENOENT') {
      throw new SocketPathError(`cannot remove the stale socket ${path}: ${error.code ?? error.message}`);
    }
  });
  return { removedStale: true };
}

/**
 * Binds a socket at `path` (which prepareSocketPath has cleared) with permission bits `mode` from its first
 * moment: `bind` serves on a path inside a fresh private folder next to `path`, the socket is given its mode,
 * then renamed into place. Where the private path would be too long for a socket, it binds in place and sets
 * the mode right after (until then the umask's mode: with the usual 022, others cannot connect). Returns the
 * socket file's inode, for removeOwnSocketFile.
 */
export async function bindUnixSocket(
  path: string,
  mode: number,
  bind: (bindPath: string) => Promise<void>,
): Promise<number> {
  const failed = (error: unknown): Error =>
    new SocketPathError(`cannot listen on Unix socket ${path}: ${(error as Error).message}`, {
      cause: error,
    });
  const privateDir = await mkdtemp(join(dirname(path), '.sock-')).catch((error: unknown) => {
    throw failed(error);
  });
  const privatePath = join(privateDir, 's');
  try {
    if (Buffer.byteLength(privatePath) <= MAX_SOCKET_PATH_BYTES) {
      await bind(privatePath);
      await chmod(privatePath, mode);
      await rename(privatePath, path);
    } else {
      await bind(path);
      await chmod(path, mode);
    }
  } catch (error) {
    throw failed(error);
  } finally {
    await rm(privateDir, { recursive: true, force: true });
  }
  return (await lstat(path)).ino;
}

/** Removes the socket file if it is still the one we created (same inode): never another process's. */
export async function removeOwnSocketFile(path: string, inode: number | undefined): Promise<void> {
  if (inode === undefined) return;
  const left = await lstat(path).catch(() => undefined);
  if (left?.isSocket() && left.ino === inode) await unlink(path).catch(() => {});
}

function describeKind(stats: Awaited<ReturnType<typeof lstat>>): string {
  if (stats.isFile()) return 'a regular file';
  if (stats.isDirectory()) return 'a folder';
  if (stats.isSymbolicLink()) return 'a symbolic link';
  if (stats.isFIFO()) return 'a named pipe';
  return 'not a socket';
}
