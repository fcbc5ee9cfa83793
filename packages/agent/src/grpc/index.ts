// The SageMaker Edge agent gRPC API (`AWS.SageMaker.Edge.Agent` on a Unix socket): a thin adapter over ModelRegistry.
export {
  createAgentServiceHandlers,
  createRawRequestServiceDefinition,
  type AgentServiceOptions,
  type CallTracker,
  type RawRequestServiceDefinition,
} from './agent-service.js';
export {
  DEFAULT_GRPC_RECEIVE_TIMEOUT_MS,
  grpcServerOptions,
  startGrpcServer,
  type GrpcServerOptions,
  type RunningGrpcServer,
} from './grpc-server.js';
export { GrpcStatusError, grpcFailure, toGrpcFailure, type GrpcFailure } from './grpc-errors.js';
export {
  fromWireAuxiliary,
  fromWireCaptureRequest,
  fromWireTensor,
  toWireMetadata,
  toWireModel,
  toWireOutput,
  type SegmentSource,
} from './wire-tensors.js';
export { SocketPeers, type CallPeer, type PeerCredentialsReader } from './socket-peers.js';
