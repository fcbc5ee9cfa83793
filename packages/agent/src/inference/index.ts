export { InferencePool } from './pool.js';
export type {
  InferencePoolOptions,
  ModelSessionInfo,
  PoolEvent,
  PoolStats,
  PoolTensor,
  RunOptions,
  RunResult,
} from './pool.js';
export { InferenceError, type InferenceFailureKind } from './errors.js';
export type { ModelBytes, OutputSegment, WireTensorInfo } from './protocol.js';
export {
  DEFAULT_ORT_SESSION_CONFIG,
  EXECUTION_PROVIDER_NAMES,
  ExecutionProviderConfigSchema,
  OrtSessionConfigSchema,
  TensorRtOptionsSchema,
  toOrtSessionOptions,
  type ExecutionProviderConfig,
  type ExecutionProviderName,
  type OrtSessionConfig,
  type TensorRtOptions,
} from './session-options.js';
