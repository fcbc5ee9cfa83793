import { Server, ServerCredentials, type ChannelOptions } from '@grpc/grpc-js';
import { createAgentCodec, type AgentCodec } from '@edgefleet/core';
import type { Logger } from 'pino';
import type { CaptureService } from '../capture/index.js';
import type { ModelRegistry } from '../models/index.js';
import type { SharedMemoryReader } from '../shm/index.js';
import { createAgentServiceHandlers, createRawRequestServiceDefinition } from './agent-service.js';

export interface GrpcServerOptions {
  registry: ModelRegistry;
  sharedMemory: SharedMemoryReader | null;
  logger: Logger;
  /** Absolute path of the Unix socket to bind; the caller has made sure nothing is there. */
  socketPath: string;
  /** `-m`: the largest message received or sent, in bytes. */
  maxMessageBytes: number;
  codec?: AgentCodec;
  /** Serves CaptureData / GetCaptureDataStatus; absent: UNIMPLEMENTED. */
  capture?: Pick<CaptureService, 'capture' | 'status'>;
}

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
 * grpc-js settings: `-m` both ways, and no other limit a large tensor could trip over. Channelz stays on although
 * the agent serves no channelz: grpc-js 1.14's forceShutdown finds the connections to cut only through its
 * channelz records, so with `grpc.enable_channelz: 0` a shutdown would wait for every call in flight, unbounded.
 */
export function grpcServerOptions(maxMessageBytes: number): ChannelOptions {
  return {
    'grpc.max_receive_message_length': maxMessageBytes,
    'grpc.max_send_message_length': maxMessageBytes,
    ...GRPC_CONNECTION_LIMITS,
  };
}

/**
 * Connection limits of the gRPC socket (docs/security.md#limits): a connection without calls (one that never
 * even sent the HTTP/2 preface included) is closed after 5 minutes, and peers that stop answering pings are
 * dropped. Clients reconnect on their next call. grpc-js 1.14 has no option capping the number of connections;
 * the socket file's mode (owner and group only) limits who can open them.
 */
export const GRPC_CONNECTION_LIMITS = {
  'grpc.max_connection_idle_ms': 5 * 60_000,
  'grpc.keepalive_time_ms': 2 * 60_000,
  'grpc.keepalive_timeout_ms': 20_000,
  'grpc.max_concurrent_streams': 1000,
} as const satisfies ChannelOptions;

/** Serves `AWS.SageMaker.Edge.Agent` on `unix://<socketPath>`. */
export async function startGrpcServer(options: GrpcServerOptions): Promise<RunningGrpcServer> {
  const codec = options.codec ?? createAgentCodec();
  const server = new Server(grpcServerOptions(options.maxMessageBytes));
  const { handlers, tracker } = createAgentServiceHandlers({
    registry: options.registry,
    sharedMemory: options.sharedMemory,
    codec,
    logger: options.logger,
    maxMessageBytes: options.maxMessageBytes,
    ...(options.capture && { capture: options.capture }),
  });
  server.addService(createRawRequestServiceDefinition(codec), handlers);
  const address = `unix://${options.socketPath}`;
  await new Promise<void>((resolve, reject) => {
    server.bindAsync(address, ServerCredentials.createInsecure(), (error) => {
      if (error) reject(new Error(`cannot listen on ${address}: ${error.message}`, { cause: error }));
      else resolve();
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
        const timer = setTimeout(() => {
          forced = true;
          server.forceShutdown();
        }, graceMs);
        server.tryShutdown(() => {
          clearTimeout(timer);
          resolve({ forced });
        });
      });
      return closing;
    },
  };
}
