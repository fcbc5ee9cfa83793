// The agent's local database (DbEnable / sagemaker_edge_local_data_root_path): SQLite in WAL mode, versioned
// migrations, and small repositories over it.
export {
  AGENT_DATABASE_FILE,
  AgentDatabase,
  agentDatabasePath,
  SALVAGEABLE_TABLES,
  type OpenAgentDatabaseOptions,
  type SalvageableTable,
} from './agent-database.js';
export {
  acquireAgentFolderLock,
  DATA_ROOT_FOLDER,
  DATA_ROOT_LOCK_FILE,
  DataRootLock,
  FolderInUseError,
  FolderLock,
  FolderLockError,
  lockHolderPid,
  lockHolder,
  type DataRootLockOptions,
  type FolderLockOptions,
  type LockedFolderKind,
  type NestedFolder,
} from './data-root-lock.js';
export { openAgentDatabase, type DatabaseRecovery, type OpenedAgentDatabase } from './database-recovery.js';
export {
  LATEST_SCHEMA_VERSION,
  MIGRATIONS,
  migrate,
  NewerAgentDatabaseError,
  type Migration,
} from './migrations.js';
export {
  capturePayloadFolder,
  DamagedPayloadError,
  DEFAULT_INLINE_PAYLOAD_LIMIT_BYTES,
  NODE_PAYLOAD_FILE_SYSTEM,
  UnsafePayloadFolderError,
  type PayloadFileSystem,
} from './capture-payload-files.js';
export {
  CaptureQueueRepository,
  type BatchedCaptureRow,
  type CaptureReadTries,
  type CaptureStatusRow,
  type DiscardedCapture,
  type QueuedCaptureRow,
  type StoredCaptureRow,
  type StoredCaptureStatus,
} from './capture-queue-repository.js';
export {
  DeploymentsRepository,
  type DeploymentModelRow,
  type DeploymentOutcome,
  type DeploymentOutcomeRow,
} from './deployments-repository.js';
export { LoadedModelsRepository, type LoadedModelRow } from './loaded-models-repository.js';
export { ModelCountersRepository, type ModelCounters } from './model-counters-repository.js';
export {
  MemoryUploadLedger,
  UploadLedgerRepository,
  type LedgerFile,
  type UploadLedger,
} from './upload-ledger-repository.js';
export { ModelActivity, type ModelActivityLogger, type ModelActivityOptions } from './model-activity.js';
export { isStorageFull, storageFullWords } from './storage-full.js';
export { LoadFailures, MAX_LOAD_FAILURES, type LoadFailure } from './load-failures.js';
export {
  recordLoadedModels,
  restoreLoadedModels,
  type RestorableRegistry,
  type RestoreLogger,
} from './loaded-models.js';
