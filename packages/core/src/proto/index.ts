// The SageMaker Edge agent gRPC contract (package AWS.SageMaker.Edge): proto text, message shapes, codec and the
// grpc-js service definition.
export { AGENT_PROTO_SOURCE } from './agent-proto.js';
export * from './agent-messages.js';
export { AGENT_PROTO_PACKAGE, AgentMessageDecodeError, createAgentCodec } from './agent-codec.js';
export type { AgentCodec } from './agent-codec.js';
export { AGENT_METHOD_NAMES, AGENT_SERVICE_NAME, createAgentServiceDefinition } from './agent-service.js';
export type {
  AgentClient,
  AgentMethodDefinition,
  AgentRequest,
  AgentResponse,
  AgentServiceDefinition,
  AgentServiceHandlers,
  AgentUnaryClientMethod,
} from './agent-service.js';
export { connectAgent } from './agent-client.js';
export { defaultRestSocketPath } from './agent-sockets.js';
export type { AgentConnection } from './agent-client.js';
