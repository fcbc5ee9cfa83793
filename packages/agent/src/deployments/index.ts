// The device's update engine: deployments from the control plane, applied crash-safely (docs/deployments.md).
export {
  DEPLOYMENT_STATES,
  FINAL_STATES,
  canTransition,
  compareVersions,
  isDeploymentState,
  type DeploymentState,
} from './deployment-state.js';
export { DeploymentMetrics } from './deployment-metrics.js';
export {
  GET_DEPLOYMENTS_PATH,
  startDeploymentPoller,
  type DeploymentPoller,
  type DeploymentPollerOptions,
  type DeploymentsSource,
} from './deployment-poller.js';
export { PackageDownloadError, PackageStore, sha256File, type PackageStoreOptions } from './package-store.js';
export {
  DeploymentStorageFullError,
  UpdateEngine,
  type DeployableRegistry,
  type StorageFullStatus,
  type DeploymentModelStatus,
  type EngineLogger,
  type UpdateEngineOptions,
  type UpdateLock,
} from './update-engine.js';
export {
  DEPLOYMENT_RESULT_PATH,
  MAX_RESULTS_PER_PASS,
  ResultReporter,
  type DeploymentResultSink,
  type ResultReporterOptions,
} from './result-reporter.js';
export {
  DEPLOYMENTS_FOLDER,
  startDeployments,
  type RunningDeployments,
  type StartDeploymentsOptions,
} from './start-deployments.js';
