export {
  AGENT_ERROR_CODES,
  AgentError,
  GRPC_STATUS,
  HTTP_STATUS,
  isAgentError,
  type AgentErrorCode,
} from './agent-error.js';
export {
  ModelRegistry,
  checkModelName,
  type LoadRequest,
  type ModelDescription,
  type ModelRegistryOptions,
  type PredictEvent,
  type PredictListener,
  type PredictObserver,
  type RegistryObserver,
  type PredictOptions,
  type PredictOutput,
  type PredictResult,
  type RegistryLogger,
  type SignatureStatus,
  type StagedVersionDescription,
} from './model-registry.js';
export { MODEL_VERSION_STATES, type ModelVersionState } from './model-version.js';
export { matchPredictInputs, warmUpInputs, type PredictTensor } from './predict-inputs.js';
export { showTensorName, tensorNameBytes } from './tensor-names.js';
