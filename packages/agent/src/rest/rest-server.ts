import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { chmod, lstat, unlink } from 'node:fs/promises';
import { connect, type AddressInfo, type ListenOptions } from 'node:net';
import { buildRestApp, type RestAppOptions } from './rest-app.js';

export interface RestServerOptions extends RestAppOptions {
  /** Unix domain socket to serve on (the default front door on a device). */
  unixSocketPath?: string;
  /** TCP address to serve on as well (or instead); use a loopback host unless the device's network is trusted. */
  tcp?: { host: string; port: number };
  /** Permission bits of the socket file: owner and group may connect. Default 0o660. */
  socketMode?: number;
  /** How long close() lets requests in flight finish before it cuts their connections. Default 10 s. */
  closeTimeoutMs?: number;
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

/** Idle keep-alive connections stay open this long: local clients reuse them across bursts of requests. */
const KEEP_ALIVE_TIMEOUT_MS = 30_000;

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

/**
 * Listens on a Unix socket path. A socket file left by a process that is gone is replaced; a live one, or a
 * file that is not a socket, is an error that says so. Returns the socket file's inode, so that close removes
 * only the file it created.
 */
async function listenUnix(server: Server, path: string, mode: number): Promise<number> {
  try {
    await listen(server, { path });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EADDRINUSE') {
      throw new Error(`cannot listen on Unix socket ${path}: ${(error as Error).message}`, { cause: error });
    }
    const existing = await lstat(path).catch(() => undefined);
    if (existing && !existing.isSocket()) {
      throw new Error(
        `cannot listen on Unix socket ${path}: a file that is not a socket is there; remove it or choose another path`,
      );
    }
    if (await socketAnswers(path)) {
      throw new Error(
        `cannot listen on Unix socket ${path}: another process is serving on it; stop it or choose another path`,
      );
    }
    await unlink(path).catch(() => {});
    await listen(server, { path });
  }
  await chmod(path, mode);
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
    server.keepAliveTimeout = KEEP_ALIVE_TIMEOUT_MS;
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
