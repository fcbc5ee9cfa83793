import { createServer, type Server as NetServer, type Socket } from 'node:net';
import { Server, ServerCredentials, type ChannelOptions } from '@grpc/grpc-js';
import {
  ConnectionRefusalLog,
  createAgentCodec,
  type AgentCodec,
  type ConnectionRefusal,
  type RefusalClock,
} from '@edgefleet/core';
import type { Logger } from 'pino';
import type { CaptureService } from '../capture/index.js';
import type { AgentMetrics } from '../metrics/index.js';
import type { ModelRegistry } from '../models/index.js';
import type { SharedMemoryReader } from '../shm/index.js';
import { createAgentServiceHandlers, createRawRequestServiceDefinition } from './agent-service.js';
import { SocketPeers } from './socket-peers.js';
import { handOverAfterPreface } from './preface-hand-over.js';
import { ReceiveGuard } from './receive-guard.js';
import {
  BodyBudget,
  ResponseBudget,
  defaultBodyBudgetBytes,
  defaultResponseBudgetBytes,
  slowReaderLog,
} from '../body-budget/index.js';

export interface GrpcServerOptions {
  registry: ModelRegistry;
  sharedMemory: SharedMemoryReader | null;
  logger: Logger;
  /** Absolute path of the Unix socket to bind; the caller has made sure nothing is there. */
  socketPath: string;
  /** `-m`: the largest message received or sent, in bytes. */
  maxMessageBytes: number;
  /**
   * Connections held at once (default GRPC_MAX_CONNECTIONS); a new one past it closes the oldest that has not
   * sent its preface, or is closed itself; either is logged and counted.
   */
  maxConnections?: number;
  /**
   * Counts the connections the cap refused (edgefleet_connections_refused_total{listener="grpc", cap}), those
   * closed for sending no preface in time (edgefleet_connections_closed_unserved_total{listener="grpc",
   * reason="preface-timeout"}), and
   * those closed to let a newcomer in (edgefleet_connections_evicted_total).
   */
  metrics?: Pick<AgentMetrics, 'connectionRefused' | 'connectionEvicted' | 'connectionClosedUnserved'>;
  /** The clock of the log of refused connections (one line a minute); default: the system's. */
  refusalClock?: RefusalClock;
  /**
   * A connection that has not sent the HTTP/2 connection preface (the 24-byte magic and a SETTINGS frame header)
   * this long after it was accepted is closed. Default GRPC_PREFACE_TIMEOUT_MS.
   */
  prefaceTimeoutMs?: number;
  codec?: AgentCodec;
  /** Serves CaptureData / GetCaptureDataStatus; absent: UNIMPLEMENTED. */
  capture?: Pick<CaptureService, 'capture' | 'status'>;
  /**
   * Bytes of request messages being received or held by a handler (shared with the REST door in the agent),
   * counted as they arrive; a call whose next bytes would pass it is answered RESOURCE_EXHAUSTED. Default: its
   * own, of defaultBodyBudgetBytes(maxMessageBytes).
   */
  bodyBudget?: BodyBudget;
  /**
   * Bytes of response messages waiting for clients that do not read them (shared with the REST door in the
   * agent); past it, the connection whose answers have waited longest is closed. Default: its own, of
   * defaultResponseBudgetBytes(maxMessageBytes), which logs what it closes.
   */
  responseBudget?: ResponseBudget;
  /**
   * A call whose request (its message, and the end of the client's side of the stream) is not complete this
   * long after it began is cancelled. Default 30 s.
   */
  receiveTimeoutMs?: number;
}

/**
 * How long a call's request (its message and the end of the client's side of the stream) may take to arrive, as
 * REST's whole-request timeout (rest-limits.ts).
 */
export const DEFAULT_GRPC_RECEIVE_TIMEOUT_MS = 30_000;

export interface RunningGrpcServer {
  /** The gRPC target clients use: `unix://<socketPath>`. */
  readonly address: string;
  /** Calls being handled now. */
  readonly inflight: number;
  /**
   * Stops accepting calls and connections, lets the calls in flight finish for up to `graceMs`, then cancels
   * whatever is left. Resolves once the server is closed; `forced` says whether calls had to be cancelled.
   */
  close(graceMs: number): Promise<{ forced: boolean }>;
}

/**
 * grpc-js settings: `-m` both ways, and no other limit a large tensor could trip over. Channelz is off: the agent
 * serves no channelz, and its bookkeeping cost about 5 % of the event loop's time per call. (grpc-js 1.14's
 * forceShutdown then no longer finds the connections to cut, so the agent, which accepts them itself, destroys
 * them on a forced shutdown.)
 */
export function grpcServerOptions(maxMessageBytes: number): ChannelOptions {
  return {
    'grpc.max_receive_message_length': maxMessageBytes,
    'grpc.max_send_message_length': maxMessageBytes,
    'grpc.enable_channelz': 0,
    ...GRPC_CONNECTION_LIMITS,
  };
}

/**
 * Connection limits of the gRPC socket (docs/security.md#limits): a connection without calls is closed after 5
 * minutes (one that has not even sent the HTTP/2 preface, after GRPC_PREFACE_TIMEOUT_MS), and peers that stop
 * answering pings are dropped. Clients reconnect on their next call. The socket file's mode (owner and group
 * only) limits who can open connections, and the listener (ours, not grpc-js's) holds at most
 * GRPC_MAX_CONNECTIONS, so a flood of idle connections cannot use up the descriptors the other door and the
 * models need.
 */
export const GRPC_CONNECTION_LIMITS = {
  'grpc.max_connection_idle_ms': 5 * 60_000,
  'grpc.keepalive_time_ms': 2 * 60_000,
  'grpc.keepalive_timeout_ms': 20_000,
  // Each call may buffer up to -m until its message is complete: a few dozen at once per connection is plenty for
  // real clients (who open more connections to go wider), and keeps one connection from holding hundreds.
  'grpc.max_concurrent_streams': 32,
} as const satisfies ChannelOptions;

/**
 * Connections the gRPC socket holds at once; when full, a new one closes the oldest that has not sent its
 * HTTP/2 preface yet, or is closed itself when every one has.
 */
export const GRPC_MAX_CONNECTIONS = 256;

/**
 * How long a new connection has to send the HTTP/2 connection preface, as REST's header timeout (rest-limits.ts):
 * a client sends it at once, and without this a connection that sends nothing was held for the 5-minute idle
 * limit, so that a flood of them kept every other client out for that long.
 */
export const GRPC_PREFACE_TIMEOUT_MS = 10_000;

/**
 * Serves `AWS.SageMaker.Edge.Agent` on `unix://<socketPath>`. The agent accepts the connections itself and hands
 * them to grpc-js (its connection injector), so that it knows each caller's credentials (SO_PEERCRED): shared
 * memory is read for a caller only where the caller could read the segment itself.
 */
export async function startGrpcServer(options: GrpcServerOptions): Promise<RunningGrpcServer> {
  const codec = options.codec ?? createAgentCodec();
  const guard = new ReceiveGuard({
    budget: options.bodyBudget ?? new BodyBudget(defaultBodyBudgetBytes(options.maxMessageBytes)),
    receiveTimeoutMs: options.receiveTimeoutMs ?? DEFAULT_GRPC_RECEIVE_TIMEOUT_MS,
    maxMessageBytes: options.maxMessageBytes,
    logger: options.logger,
    responseBudget:
      options.responseBudget ??
      new ResponseBudget(defaultResponseBudgetBytes(options.maxMessageBytes), {
        onSlowReaderClosed: slowReaderLog(
          options.logger,
          defaultResponseBudgetBytes(options.maxMessageBytes),
        ),
      }),
  });
  const server = new Server({
    ...grpcServerOptions(options.maxMessageBytes),
    interceptors: [guard.interceptor],
  });
  const reader = options.sharedMemory;
  const peers = new SocketPeers(reader ? (socket) => reader.peerCredentialsOf(socket) : null);
  const { handlers, tracker } = createAgentServiceHandlers({
    registry: options.registry,
    sharedMemory: options.sharedMemory,
    peers,
    codec,
    logger: options.logger,
    maxMessageBytes: options.maxMessageBytes,
    ...(options.capture && { capture: options.capture }),
  });
  server.addService(createRawRequestServiceDefinition(codec), handlers);
  const injector = server.createConnectionInjector(ServerCredentials.createInsecure());
  const address = `unix://${options.socketPath}`;
  const connections = new Set<Socket>();
  const prefaceTimeoutMs = options.prefaceTimeoutMs ?? GRPC_PREFACE_TIMEOUT_MS;
  const maxConnections = options.maxConnections ?? GRPC_MAX_CONNECTIONS;
  // Connections over the cap, and those closed for sending no preface in time, are logged (a line a minute) and
  // counted.
  const refusals = new ConnectionRefusalLog({
    listener: 'grpc',
    caps: { maxConnections },
    logger: options.logger,
    timeoutText: `sent no HTTP/2 preface within ${prefaceTimeoutMs / 1000} s`,
    ...(options.refusalClock && { clock: options.refusalClock }),
    ...(options.metrics && {
      count: (refusal: ConnectionRefusal) =>
        refusal.idleClosed === true
          ? options.metrics!.connectionEvicted('grpc', 'total')
          : options.metrics!.connectionRefused('grpc', 'total'),
    }),
  });
  // Connections within the cap, and those of them not yet handed to grpc-js (no preface yet), oldest first.
  // grpc-js's shutdown does not know the latter.
  const held = new Set<Socket>();
  const awaitingPreface = new Set<Socket>();
  const listener: NetServer = createServer((socket) => {
    connections.add(socket);
    socket.once('close', () => {
      connections.delete(socket);
      held.delete(socket);
      awaitingPreface.delete(socket);
    });
    if (held.size >= maxConnections) {
      // Full: the oldest connection that has not sent its preface makes room (a client sends it at once, so a
      // flood of silent connections cannot keep one out); when every one has, the newcomer is closed.
      const oldest = awaitingPreface.values().next();
      if (oldest.done === true) {
        socket.destroy();
        refusals.refused({ refusedBy: 'total' });
        return;
      }
      held.delete(oldest.value);
      awaitingPreface.delete(oldest.value);
      oldest.value.destroy();
      refusals.refused({ refusedBy: 'total', idleClosed: true });
    }
    held.add(socket);
    awaitingPreface.add(socket);
    peers.accepted(socket);
    handOverAfterPreface(
      socket,
      prefaceTimeoutMs,
      () => {
        awaitingPreface.delete(socket);
        injector.injectConnection(socket);
      },
      () => {
        options.metrics?.connectionClosedUnserved('grpc', 'preface-timeout');
        refusals.timedOut();
      },
    );
  });
  // Node's own cap, only a backstop (twice ours): destroy() takes a closed connection off Node's count at once,
  // so closing many in one accept batch does not make Node drop the newcomers they made room for. It reports
  // those it closes itself with 'drop'.
  listener.maxConnections = maxConnections * 2;
  listener.on('drop', () => refusals.refused({ refusedBy: 'total' }));
  await new Promise<void>((resolve, reject) => {
    listener.once('error', (error) => {
      guard.close();
      reject(new Error(`cannot listen on ${address}: ${error.message}`, { cause: error }));
    });
    listener.listen(options.socketPath, () => {
      listener.removeAllListeners('error');
      listener.on('error', (error) => options.logger.error({ err: error }, 'gRPC listener failed'));
      resolve();
    });
  });

  let closing: Promise<{ forced: boolean }> | undefined;
  return {
    address,
    get inflight() {
      return tracker.inflight;
    },
    close(graceMs) {
      closing ??= new Promise((resolve) => {
        let forced = false;
        listener.close();
        for (const socket of awaitingPreface) socket.destroy();
        const timer = setTimeout(() => {
          forced = true;
          server.forceShutdown();
          for (const socket of connections) socket.destroy();
        }, graceMs);
        server.tryShutdown(() => {
          clearTimeout(timer);
          guard.close();
          refusals.close();
          resolve({ forced });
        });
      });
      return closing;
    },
  };
}
