export {
  AGENT_ERROR_CODES,
  AgentError,
  GRPC_STATUS,
  HTTP_STATUS,
  isAgentError,
  type AgentErrorCode,
} from './agent-error.js';
export {
  MAX_CALLER_LOADS_AT_ONCE,
  ModelRegistry,
  checkModelName,
  type LoadRequest,
  type ModelRegistryOptions,
  type PredictEvent,
  type PredictListener,
  type PredictObserver,
  type RegistryObserver,
  type PredictOptions,
  type PredictOutput,
  type PredictResult,
} from './model-registry.js';
export {
  MODEL_VERSION_STATES,
  type ModelDescription,
  type ModelVersionState,
  type RegistryLogger,
  type SignatureStatus,
  type StagedVersionDescription,
} from './model-description.js';
export { type LoadHooks } from './model-loader.js';
export { matchPredictInputs, warmUpInputs, type PredictTensor } from './predict-inputs.js';
export { showTensorName, tensorNameBytes } from './tensor-names.js';
export {
  CallerCheckLimitError,
  DescriptorPathsUnavailableError,
  MAX_CHECKED_DEPTH,
  MAX_CHECKED_ENTRIES,
  agentSideFailure,
  callerCanReadFolder,
  callerHolds,
  fileSystemFolderAccess,
  openFolderForCaller,
  type CallerAccessDeps,
  type CallerFolder,
  type CallerFolderResult,
  type CallerIdentity,
  type FileModeOf,
  type OpenedFolderDeps,
} from './caller-access.js';
