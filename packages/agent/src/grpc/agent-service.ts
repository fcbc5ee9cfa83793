import type { ServerUnaryCall, UntypedServiceImplementation, sendUnaryData } from '@grpc/grpc-js';
import {
  AGENT_METHOD_NAMES,
  AgentCaptureDataStatus,
  AgentMessageDecodeError,
  createAgentServiceDefinition,
  type AgentCodec,
  type AgentMethodDefinition,
  type AgentMethodName,
  type AgentRequest,
  type AgentResponse,
  type MessageInit,
} from '@edgefleet/core';
import type { Logger } from 'pino';
import type { CaptureService } from '../capture/index.js';
import { AgentError, type ModelRegistry } from '../models/index.js';
import type { PeerCredentials, SegmentLease, SharedMemoryReader } from '../shm/index.js';
import { INTERNAL_CODE, UNIMPLEMENTED_CODE, grpcFailure, toGrpcFailure } from './grpc-errors.js';
import type { SocketPeers } from './socket-peers.js';
import {
  fromWireCaptureRequest,
  fromWireTensor,
  toWireModel,
  toWireOutput,
  type SegmentSource,
} from './wire-tensors.js';

export interface AgentServiceOptions {
  registry: ModelRegistry;
  /** Reads tensors clients put in System V shared memory; null when the native addon is not available. */
  sharedMemory: SharedMemoryReader | null;
  /** Each call's caller, for the shared memory permission check; absent: no caller is known (no shared memory). */
  peers?: Pick<SocketPeers, 'of'>;
  codec: AgentCodec;
  logger: Logger;
  /** `-m`: a Predict whose outputs alone exceed it is answered with a details string that says so. */
  maxMessageBytes: number;
  /** CaptureData and GetCaptureDataStatus; absent: both are answered UNIMPLEMENTED. */
  capture?: Pick<CaptureService, 'capture' | 'status'>;
}

/**
 * The service definition the server registers: the shared one, except that requests arrive as raw bytes and are
 * decoded by the handler, so a malformed message is answered INVALID_ARGUMENT with the decoder's reason
 * (grpc-js would answer INTERNAL "Error deserializing request" and hide why).
 */
export type RawRequestServiceDefinition = {
  readonly [M in AgentMethodName]: Omit<
    AgentMethodDefinition<AgentRequest<M>, AgentResponse<M>>,
    'requestDeserialize'
  > & { readonly requestDeserialize: (bytes: Buffer) => Buffer };
};

export function createRawRequestServiceDefinition(codec: AgentCodec): RawRequestServiceDefinition {
  const shared = createAgentServiceDefinition(codec);
  const raw = (bytes: Buffer): Buffer => bytes;
  return Object.fromEntries(
    AGENT_METHOD_NAMES.map((method) => [method, { ...shared[method], requestDeserialize: raw }]),
  ) as RawRequestServiceDefinition;
}

type Handler<M extends AgentMethodName> = (
  request: AgentRequest<M>,
  call: ServerUnaryCall<Buffer, unknown>,
) => MessageInit<AgentResponse<M>> | Promise<MessageInit<AgentResponse<M>>>;

/** Counts the calls being handled, for shutdown. */
export interface CallTracker {
  readonly inflight: number;
}

/**
 * The `AWS.SageMaker.Edge.Agent` handlers: a thin adapter over ModelRegistry. Every call is independent (no
 * call waits for another); every failure becomes a status with a details string; nothing a client sends can
 * throw out of a handler.
 */
export function createAgentServiceHandlers(options: AgentServiceOptions): {
  handlers: UntypedServiceImplementation;
  tracker: CallTracker;
} {
  const { registry, sharedMemory, peers, codec, logger, maxMessageBytes, capture } = options;
  let inflight = 0;
  const tracker: CallTracker = {
    get inflight() {
      return inflight;
    },
  };

  const unary = <M extends AgentMethodName>(method: M, handle: Handler<M>) => {
    const requestName = `${method}Request` as const;
    return (call: ServerUnaryCall<Buffer, unknown>, callback: sendUnaryData<unknown>): void => {
      const began = performance.now();
      inflight++;
      if (logger.isLevelEnabled('debug'))
        logger.debug({ method, event: 'call-received' }, `gRPC ${method} received`);
      const finish = (error: unknown, response?: unknown): void => {
        inflight--;
        if (error === null) callback(null, response);
        else {
          const failure = toGrpcFailure(error, method);
          if (failure.code === INTERNAL_CODE)
            logger.error({ err: error, method }, `${method} failed unexpectedly`);
          callback(failure);
        }
        if (logger.isLevelEnabled('debug')) {
          logger.debug(
            {
              method,
              ms: Math.round((performance.now() - began) * 1000) / 1000,
              ...(error !== null && { code: toGrpcFailure(error, method).code }),
            },
            `gRPC ${method}`,
          );
        }
      };
      let request: AgentRequest<M>;
      try {
        request = codec.decode(requestName, call.request) as AgentRequest<M>;
      } catch (error) {
        finish(
          error instanceof AgentMessageDecodeError
            ? new AgentError('INVALID_ARGUMENT', error.message)
            : error,
        );
        return;
      }
      try {
        const result = handle(request, call);
        if (result instanceof Promise) result.then((response) => finish(null, response), finish);
        else finish(null, result);
      } catch (error) {
        finish(error);
      }
    };
  };

  const segmentSource = (call: ServerUnaryCall<Buffer, unknown>): SegmentSource =>
    new CallSegments(sharedMemory, peers, call);

  const captureUnavailable = (method: AgentMethodName) => {
    return (_call: ServerUnaryCall<Buffer, unknown>, callback: sendUnaryData<unknown>): void => {
      callback(
        grpcFailure(
          UNIMPLEMENTED_CODE,
          `${method}: data capture is not enabled in this build of edgefleet-agent; nothing was captured. Expected: an agent built with the capture capability`,
        ),
      );
    };
  };

  const handlers = {
    Predict: unary('Predict', async (request, call) => {
      const name = modelName(request.handle, request.name, 'Predict');
      if (!registry.has(name)) registry.describe(name); // NOT_FOUND, before anything about the tensors
      const segments = segmentSource(call);
      try {
        const tensors = request.tensors.map((tensor, i) =>
          fromWireTensor(tensor, `input tensor #${i + 1}`, segments),
        );
        const ownedBuffer = messageMemory(call.request);
        const result = await registry.predict(name, tensors, ownedBuffer && { ownedBuffer });
        const outputBytes = result.outputs.reduce((n, o) => n + o.data.byteLength, 0);
        if (outputBytes > maxMessageBytes) {
          throw new AgentError(
            'RESOURCE_EXHAUSTED',
            `the response of model ${JSON.stringify(name)} holds ${outputBytes} bytes of output tensors, more than the ${maxMessageBytes}-byte message limit (-m); expected smaller inputs, or an agent started with a larger -m`,
          );
        }
        return { tensors: result.outputs.map(toWireOutput) };
      } finally {
        for (const lease of segments.leases) lease.release();
      }
    }),
    LoadModel: unary('LoadModel', async (request, call) => {
      const name = modelName(request.handle, request.name, 'LoadModel');
      if (request.url === '') {
        throw new AgentError(
          'INVALID_ARGUMENT',
          `LoadModel for ${JSON.stringify(name)} has no url; expected the folder of an extracted model package (absolute, or relative to the agent's working directory)`,
        );
      }
      // The caller's credentials, where known: the agent loads for it only what it could read itself.
      const model = await registry.load({ url: request.url, name, caller: peers?.of(call) ?? null });
      return { model: toWireModel(model) };
    }),
    UnLoadModel: unary('UnLoadModel', async (request) => {
      await registry.unload(modelName(request.handle, request.name, 'UnLoadModel'));
      return {};
    }),
    ListModels: unary('ListModels', () => ({ models: registry.list().map(toWireModel) })),
    DescribeModel: unary('DescribeModel', (request) => ({
      model: toWireModel(registry.describe(modelName(request.handle, request.name, 'DescribeModel'))),
    })),
    CaptureData: capture
      ? unary('CaptureData', async (request, call) => {
          const segments = segmentSource(call);
          try {
            const decoded = fromWireCaptureRequest(request, segments);
            // The message's own memory: the capture keeps views of its bytes instead of copying them.
            const ownedBuffer = messageMemory(call.request);
            await capture.capture(ownedBuffer ? { ...decoded, ownedBuffer } : decoded);
            return {};
          } finally {
            for (const lease of segments.leases) lease.release();
          }
        })
      : captureUnavailable('CaptureData'),
    GetCaptureDataStatus: capture
      ? unary('GetCaptureDataStatus', (request) => ({
          status: AgentCaptureDataStatus[capture.status(request.captureId).status],
        }))
      : captureUnavailable('GetCaptureDataStatus'),
  } satisfies Record<AgentMethodName, unknown>;
  return { handlers, tracker };
}

/**
 * A call's SegmentSource. The caller's credentials are looked up only when a tensor is in shared memory: most
 * calls never need them (a class, so that the lazy getter costs no per-call object shape of its own).
 */
class CallSegments implements SegmentSource {
  readonly leases: SegmentLease[] = [];
  #caller: PeerCredentials | null | undefined;

  constructor(
    readonly reader: SharedMemoryReader | null,
    private readonly peers: Pick<SocketPeers, 'of'> | undefined,
    private readonly call: ServerUnaryCall<Buffer, unknown>,
  ) {}

  get caller(): PeerCredentials | null {
    return (this.#caller ??= this.peers?.of(this.call) ?? null);
  }
}

/** `handle` wins over the deprecated `name` (spec §2); a request must carry one of them. */
function modelName(handle: string, name: string, method: AgentMethodName): string {
  const chosen = handle !== '' ? handle : name;
  if (chosen === '') {
    throw new AgentError(
      'INVALID_ARGUMENT',
      `${method} names no model; expected the model's name in handle (or in the deprecated name field)`,
    );
  }
  return chosen;
}

/** grpc-js's length prefix before each message (compressed flag and length). */
const GRPC_MESSAGE_PREFIX_BYTES = 5;

/**
 * The request message's own memory, when it has some: grpc-js assembles each message with Buffer.concat (prefix
 * and body), and Node gives a Buffer of half its pool size or more an ArrayBuffer of its own; smaller ones are
 * slices of the shared pool. Predict's input tensors are views into the message, so handing its own memory to the
 * worker moves them all without a copy; nothing reads the request after the prediction. Nothing writes it either,
 * so capture (CaptureData, and automatic capture of Predict) keeps views of its bytes instead of copies. Anything that does not
 * look exactly like that (a pool slice, another layout) is left alone and copied as before. This depends on how
 * grpc-js 1.14.7 frames messages (stream-decoder.js, server-interceptors.js), which is why that version is pinned
 * exactly; request-memory.test.ts fails if a new version stops matching it.
 */
function messageMemory(request: Buffer): ArrayBuffer | undefined {
  const memory = request.buffer;
  return memory instanceof ArrayBuffer &&
    memory.byteLength >= Buffer.poolSize >>> 1 &&
    request.byteOffset === GRPC_MESSAGE_PREFIX_BYTES &&
    request.byteOffset + request.byteLength === memory.byteLength
    ? memory
    : undefined;
}
