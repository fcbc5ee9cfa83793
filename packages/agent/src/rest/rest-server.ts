import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { chmod, lstat, mkdtemp, rename, rm, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { connect, type AddressInfo, type ListenOptions } from 'node:net';
import { applyListenerLimits, type ListenerLimits } from '@edgefleet/core';
import { buildRestApp, type RestAppOptions } from './rest-app.js';
import { REST_LISTENER_LIMITS } from './rest-limits.js';

export interface RestServerOptions extends RestAppOptions {
  /** Unix domain socket to serve on (the default front door on a device). */
  unixSocketPath?: string;
  /** TCP address to serve on as well (or instead); use a loopback host unless the device's network is trusted. */
  tcp?: { host: string; port: number };
  /** Permission bits of the socket file: owner and group may connect. Default 0o660. */
  socketMode?: number;
  /** How long close() lets requests in flight finish before it cuts their connections. Default 10 s. */
  closeTimeoutMs?: number;
  /** Overrides of REST_LISTENER_LIMITS (timeouts and connection caps of each listener). */
  limits?: Partial<ListenerLimits>;
}

export interface RestServer {
  /** Where it listens: `unix:<path>` and/or `http://<host>:<port>` (the port bound when 0 was asked for). */
  addresses: string[];
  /**
   * Stops listening, lets requests in flight finish (keep-alive connections are closed after their current
   * response), removes the socket file. Safe to call more than once.
   */
  close(): Promise<void>;
}

function listen(server: Server, options: ListenOptions): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (error: Error) => {
      server.removeListener('listening', onListening);
      reject(error);
    };
    const onListening = () => {
      server.removeListener('error', onError);
      resolve();
    };
    server.once('error', onError);
    server.once('listening', onListening);
    server.listen(options);
  });
}

/** Whether some process accepts connections on this Unix socket. */
function socketAnswers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ path });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** Longest Unix socket path the kernel takes (sun_path is 108 bytes with its terminating zero). */
const MAX_SOCKET_PATH_BYTES = 107;

/** Refuses a path holding a file that is not a socket, or a socket some process serves on. */
async function checkSocketPathFree(path: string): Promise<void> {
  const existing = await lstat(path).catch(() => undefined);
  if (!existing) return;
  if (!existing.isSocket()) {
    throw new Error(
      `cannot listen on Unix socket ${path}: a file that is not a socket is there; remove it or choose another path`,
    );
  }
  if (await socketAnswers(path)) {
    throw new Error(
      `cannot listen on Unix socket ${path}: another process is serving on it; stop it or choose another path`,
    );
  }
}

/**
 * Listens on a Unix socket path with the given permission bits from the first moment: it binds inside a fresh
 * private folder next to the path, sets the mode, then renames the socket into place (which also replaces a
 * socket file left by a process that is gone). A live socket, or a file that is not a socket, is an error that
 * says so. Where the private folder's path would be too long for a socket, it binds in place and sets the mode
 * right after. Returns the socket file's inode, so that close removes only the file it created.
 */
async function listenUnix(server: Server, path: string, mode: number): Promise<number> {
  await checkSocketPathFree(path);
  const failed = (error: unknown): Error =>
    new Error(`cannot listen on Unix socket ${path}: ${(error as Error).message}`, { cause: error });
  const privateDir = await mkdtemp(join(dirname(path), '.rest-')).catch((error: unknown) => {
    throw failed(error);
  });
  const privatePath = join(privateDir, 's');
  try {
    if (Buffer.byteLength(privatePath) <= MAX_SOCKET_PATH_BYTES) {
      await listen(server, { path: privatePath });
      await chmod(privatePath, mode);
      await rename(privatePath, path);
    } else {
      await unlink(path).catch(() => {});
      await listen(server, { path });
      await chmod(path, mode);
    }
  } catch (error) {
    throw failed(error);
  } finally {
    await rm(privateDir, { recursive: true, force: true });
  }
  return (await lstat(path)).ino;
}

/**
 * Serves the KServe v2 REST API (see buildRestApp) on a Unix socket and/or TCP. Both listeners share one
 * Fastify instance; HTTP keep-alive is on.
 */
export async function startRestServer(options: RestServerOptions): Promise<RestServer> {
  const { unixSocketPath, tcp } = options;
  if (unixSocketPath === undefined && tcp === undefined) {
    throw new Error('startRestServer needs somewhere to listen: give unixSocketPath, tcp, or both');
  }
  const limits = { ...REST_LISTENER_LIMITS, ...options.limits };
  let closing = false;
  const servers: Server[] = [];
  // Responses not yet sent: when closing begins, each is marked to end its connection, so close() need not wait
  // out keep-alive on connections that were busy at that moment.
  const pending = new Set<ServerResponse>();
  const endConnectionAfter = (res: ServerResponse) => {
    if (!res.headersSent) res.shouldKeepAlive = false;
  };
  const makeServer = (handler: (req: IncomingMessage, res: ServerResponse) => void): Server => {
    const server = createServer((req, res) => {
      if (closing) endConnectionAfter(res);
      else {
        pending.add(res);
        res.once('close', () => pending.delete(res));
      }
      handler(req, res);
    });
    // Idle keep-alive connections stay open a while (local clients reuse them across bursts of requests);
    // slow headers or bodies, idle connections and floods of them are cut off (see REST_LISTENER_LIMITS).
    applyListenerLimits(server, limits);
    servers.push(server);
    return server;
  };
  let fastifyHandler: ((req: IncomingMessage, res: ServerResponse) => void) | undefined;
  const app = buildRestApp(options, {
    serverFactory: (handler) => {
      fastifyHandler = handler;
      return makeServer(handler);
    },
    closing: () => closing,
  });
  await app.ready();

  const addresses: string[] = [];
  let socketInode: number | undefined;
  const closeServers = async (timeoutMs: number) => {
    const listening = servers.filter((server) => server.listening);
    const timer = setTimeout(() => listening.forEach((server) => server.closeAllConnections()), timeoutMs);
    await Promise.all(
      listening.map((server) => new Promise<void>((resolve) => server.close(() => resolve()))),
    );
    clearTimeout(timer);
    if (unixSocketPath !== undefined && socketInode !== undefined) {
      const left = await lstat(unixSocketPath).catch(() => undefined);
      if (left?.isSocket() && left.ino === socketInode) await unlink(unixSocketPath).catch(() => {});
    }
    await app.close();
  };

  try {
    if (unixSocketPath !== undefined) {
      socketInode = await listenUnix(app.server, unixSocketPath, options.socketMode ?? 0o660);
      addresses.push(`unix:${unixSocketPath}`);
    }
    if (tcp !== undefined) {
      const server = unixSocketPath === undefined ? app.server : makeServer(fastifyHandler!);
      await listen(server, { host: tcp.host, port: tcp.port }).catch((error: Error) => {
        throw new Error(`cannot listen on TCP ${tcp.host}:${tcp.port}: ${error.message}`, { cause: error });
      });
      const address = server.address() as AddressInfo;
      const host = address.address.includes(':') ? `[${address.address}]` : address.address;
      addresses.push(`http://${host}:${address.port}`);
    }
  } catch (error) {
    await closeServers(0);
    throw error;
  }
  options.logger.info({ addresses }, 'KServe v2 REST API listening');

  let closed: Promise<void> | undefined;
  return {
    addresses,
    close() {
      closing = true;
      pending.forEach(endConnectionAfter);
      closed ??= closeServers(options.closeTimeoutMs ?? 10_000);
      return closed;
    },
  };
}
