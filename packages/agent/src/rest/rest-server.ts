import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, ListenOptions, Socket } from 'node:net';
import {
  applyListenerLimits,
  ConnectionRefusalLog,
  fitConnectionCaps,
  openFileLimit,
  type ListenerLimits,
  type RefusalClock,
} from '@edgefleet/core';
import type { PeerCredentials } from '../shm/index.js';
import { bindUnixSocket, prepareSocketPath, removeOwnSocketFile } from '../unix-socket/index.js';
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
  /** The process's open file limit, which the connection caps must fit in; default: read from the system. */
  openFileLimit?: number;
  /** The clock of the log of refused connections (one line a minute per listener); default: the system's. */
  refusalClock?: RefusalClock;
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

/**
 * Serves the KServe v2 REST API (see buildRestApp) on a Unix socket and/or TCP. Both listeners share one
 * Fastify instance; HTTP keep-alive is on.
 */
export async function startRestServer(options: RestServerOptions): Promise<RestServer> {
  const { unixSocketPath, tcp } = options;
  if (unixSocketPath === undefined && tcp === undefined) {
    throw new Error('startRestServer needs somewhere to listen: give unixSocketPath, tcp, or both');
  }
  // The listeners' caps together take at most half the open file limit: the gRPC socket, the database,
  // capture files and ONNX Runtime need the rest, whatever a flood on the REST doors does.
  const listeners = (unixSocketPath === undefined ? 0 : 1) + (tcp === undefined ? 0 : 1);
  const wanted = { ...REST_LISTENER_LIMITS, ...options.limits };
  const fileLimit = options.openFileLimit ?? openFileLimit();
  const fitted = fitConnectionCaps(Array<ListenerLimits>(listeners).fill(wanted), fileLimit, 0.5);
  const limits = fitted.caps[0] ?? wanted;
  if (fitted.scaled) {
    options.logger.warn(
      { openFileLimit: fileLimit, maxConnections: limits.maxConnections },
      `the open file limit (${fileLimit}) is low: each REST listener takes at most ${limits.maxConnections} connections`,
    );
  }
  let closing = false;
  const servers: Server[] = [];
  // Responses not yet sent: when closing begins, each is marked to end its connection, so close() need not wait
  // out keep-alive on connections that were busy at that moment.
  const pending = new Set<ServerResponse>();
  const endConnectionAfter = (res: ServerResponse) => {
    if (!res.headersSent) res.shouldKeepAlive = false;
  };
  const refusalLogs: ConnectionRefusalLog[] = [];
  const makeServer = (
    handler: (req: IncomingMessage, res: ServerResponse) => void,
    listener: 'rest-unix' | 'rest-tcp',
  ): Server => {
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
    // Connections the caps refuse are logged (one line a minute) and counted, so that a flood shows as one.
    const refusals = new ConnectionRefusalLog({
      listener,
      // A Unix socket's peers have no address: only its total cap applies.
      caps: listener === 'rest-unix' ? { maxConnections: limits.maxConnections } : limits,
      logger: options.logger,
      ...(options.refusalClock && { clock: options.refusalClock }),
      count: (refusal) =>
        refusal.idleClosed === true
          ? options.metrics.connectionEvicted(listener, refusal.refusedBy)
          : options.metrics.connectionRefused(listener, refusal.refusedBy),
    });
    refusalLogs.push(refusals);
    applyListenerLimits(server, limits, refusals.refused);
    servers.push(server);
    return server;
  };
  // Connections accepted on the TCP listener: management routes are refused there (RestAppOptions.tcpManagement).
  const tcpSockets = new WeakSet<Socket>();
  let fastifyHandler: ((req: IncomingMessage, res: ServerResponse) => void) | undefined;
  // The credentials of each connection on the Unix socket (SO_PEERCRED), for system shared memory; TCP
  // connections have none and get no shared memory.
  const peers = new WeakMap<Socket, PeerCredentials>();
  const app = buildRestApp(options, {
    serverFactory: (handler) => {
      fastifyHandler = handler;
      return makeServer(handler, unixSocketPath === undefined ? 'rest-tcp' : 'rest-unix');
    },
    closing: () => closing,
    peerOf: (socket) => peers.get(socket) ?? null,
    isTcp: (socket) => tcpSockets.has(socket),
  });
  const reader = options.sharedMemory;
  if (unixSocketPath !== undefined && reader) {
    app.server.on('connection', (socket: Socket) => {
      // Unknown credentials: this connection gets no shared memory.
      const credentials = reader.peerCredentialsOf(socket);
      if (credentials !== null) peers.set(socket, credentials);
    });
  }
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
    refusalLogs.forEach((log) => log.close());
    if (unixSocketPath !== undefined) await removeOwnSocketFile(unixSocketPath, socketInode);
    await app.close();
  };

  try {
    if (unixSocketPath !== undefined) {
      // A socket file left by a process that is gone is replaced; a live one, or another file, is an error.
      await prepareSocketPath(unixSocketPath, { removeStale: true, option: 'edgefleet_rest_socket_path' });
      socketInode = await bindUnixSocket(unixSocketPath, options.socketMode ?? 0o660, (path) =>
        listen(app.server, { path }),
      );
      addresses.push(`unix:${unixSocketPath}`);
    }
    if (tcp !== undefined) {
      const server = unixSocketPath === undefined ? app.server : makeServer(fastifyHandler!, 'rest-tcp');
      server.on('connection', (socket: Socket) => tcpSockets.add(socket));
      await listen(server, { host: tcp.host, port: tcp.port }).catch((error: Error) => {
        throw new Error(`cannot listen on TCP ${tcp.host}:${tcp.port}: ${error.message}`, { cause: error });
      });
      const address = server.address() as AddressInfo;
      const host = address.address.includes(':') ? `[${address.address}]` : address.address;
      addresses.push(`http://${host}:${address.port}`);
      if (options.tcpManagement) {
        options.logger.warn(
          { address: `${host}:${address.port}`, option: 'edgefleet_rest_tcp_management' },
          `edgefleet_rest_tcp_management is true: everyone who can reach ${host}:${address.port} can load and unload models and read the agent status (TCP tells nothing of who is calling, so loads over TCP are not checked against the caller's rights: a model loads from any folder the agent can read)`,
        );
      }
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
