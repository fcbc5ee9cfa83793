import type {
  CallOptions,
  Client,
  ClientUnaryCall,
  Metadata,
  requestCallback,
  handleUnaryCall,
} from '@grpc/grpc-js';
import { createAgentCodec } from './agent-codec.js';
import type { AgentCodec } from './agent-codec.js';
import type { AgentMethodName, AgentMethods, MessageInit } from './agent-messages.js';
import { AGENT_PROTO_PACKAGE } from './agent-codec.js';

/** Fully qualified name of the service; method paths are `/AWS.SageMaker.Edge.Agent/<Method>`. */
export const AGENT_SERVICE_NAME = `${AGENT_PROTO_PACKAGE}.Agent`;

/** The seven unary methods, in the order agent.proto declares them. Note the capital L in `UnLoadModel`. */
export const AGENT_METHOD_NAMES = [
  'Predict',
  'LoadModel',
  'UnLoadModel',
  'ListModels',
  'DescribeModel',
  'CaptureData',
  'GetCaptureDataStatus',
] as const satisfies readonly AgentMethodName[];

export type AgentRequest<M extends AgentMethodName> = AgentMethods[M]['request'];
export type AgentResponse<M extends AgentMethodName> = AgentMethods[M]['response'];

/**
 * One method as grpc-js wants it (structurally a grpc-js `MethodDefinition`). Serializers accept the lenient
 * `MessageInit` shape; deserializers return the decoded shape.
 */
export interface AgentMethodDefinition<Request, Response> {
  readonly path: string;
  readonly requestStream: false;
  readonly responseStream: false;
  readonly requestSerialize: (value: MessageInit<Request>) => Buffer;
  readonly requestDeserialize: (bytes: Buffer) => Request;
  readonly responseSerialize: (value: MessageInit<Response>) => Buffer;
  readonly responseDeserialize: (bytes: Buffer) => Response;
  /** lowerCamelCase alias, as @grpc/proto-loader sets it: generic clients get e.g. `predict` besides `Predict`. */
  readonly originalName: string;
}

/**
 * The `AWS.SageMaker.Edge.Agent` service for grpc-js: pass it to `server.addService(definition, handlers)` or to
 * `grpc.makeGenericClientConstructor(definition, AGENT_SERVICE_NAME)`.
 */
export type AgentServiceDefinition = {
  readonly [M in AgentMethodName]: AgentMethodDefinition<AgentRequest<M>, AgentResponse<M>>;
};

/** Server-side handlers: each receives the decoded request and answers with a (lenient) response. */
export type AgentServiceHandlers = {
  [M in AgentMethodName]: handleUnaryCall<AgentRequest<M>, MessageInit<AgentResponse<M>>>;
};

/** One unary method of a generic client, with grpc-js's call signatures. */
export interface AgentUnaryClientMethod<Request, Response> {
  (request: Request, callback: requestCallback<Response>): ClientUnaryCall;
  (request: Request, metadata: Metadata, callback: requestCallback<Response>): ClientUnaryCall;
  (request: Request, options: Partial<CallOptions>, callback: requestCallback<Response>): ClientUnaryCall;
  (
    request: Request,
    metadata: Metadata,
    options: Partial<CallOptions>,
    callback: requestCallback<Response>,
  ): ClientUnaryCall;
}

/**
 * A client made with `makeGenericClientConstructor(createAgentServiceDefinition(), AGENT_SERVICE_NAME)`, typed:
 * `new Ctor(target, credentials) as unknown as AgentClient`.
 */
export type AgentClient = Client & {
  [M in AgentMethodName]: AgentUnaryClientMethod<MessageInit<AgentRequest<M>>, AgentResponse<M>>;
};

/**
 * Builds the service definition over a codec (a fresh one by default).
 *
 * A request that fails to decode makes the deserializer throw AgentMessageDecodeError. grpc-js catches that
 * (server-interceptors.ts, `decompressAndMaybePush`): the call ends with status INTERNAL and details
 * "Error deserializing request" (the error's own message is sent only when the environment variable
 * GRPC_NODE_DEBUG_SEND_ERROR_DETAILS is set); the handler is never called and the server keeps serving.
 * A response that fails to encode likewise ends its call with INTERNAL, not a crash.
 */
export function createAgentServiceDefinition(codec: AgentCodec = createAgentCodec()): AgentServiceDefinition {
  const method = <M extends AgentMethodName>(
    name: M,
  ): AgentMethodDefinition<AgentRequest<M>, AgentResponse<M>> => {
    const requestName = `${name}Request` as const;
    const responseName = `${name}Response` as const;
    return {
      path: `/${AGENT_SERVICE_NAME}/${name}`,
      requestStream: false,
      responseStream: false,
      requestSerialize: (value) => codec.encode(requestName, value as never),
      requestDeserialize: (bytes) => codec.decode(requestName, bytes) as AgentRequest<M>,
      responseSerialize: (value) => codec.encode(responseName, value as never),
      responseDeserialize: (bytes) => codec.decode(responseName, bytes) as AgentResponse<M>,
      originalName: name.charAt(0).toLowerCase() + name.slice(1),
    };
  };
  return {
    Predict: method('Predict'),
    LoadModel: method('LoadModel'),
    UnLoadModel: method('UnLoadModel'),
    ListModels: method('ListModels'),
    DescribeModel: method('DescribeModel'),
    CaptureData: method('CaptureData'),
    GetCaptureDataStatus: method('GetCaptureDataStatus'),
  };
}
