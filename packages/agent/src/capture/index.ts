// Capture: CaptureData / GetCaptureDataStatus as the SageMaker Edge agent, automatic capture of Predict traffic,
// Edge Manager (and optionally Model Monitor) JSON-lines records, Disk and S3 destinations, the offline spool.
export { CaptureService, type CaptureServiceOptions } from './capture-service.js';
export { startCaptureService, type RunningCapture, type StartCaptureOptions } from './start-capture.js';
export {
  CaptureSettingsSchema,
  AutoCaptureRuleSchema,
  DEFAULT_SPOOL_QUOTA_BYTES,
  DEFAULT_MAX_CAPTURE_BYTES,
  defaultMaxCaptureBytesFor,
  defaultCaptureBufferBytes,
  captureSettingsFromConfig,
  type AutoCaptureRule,
  type CaptureExtras,
  type CaptureSettings,
  type CaptureSettingsInput,
} from './settings.js';
export {
  AUXILIARY_ENCODINGS,
  captureBytes,
  decodeCaptureItem,
  encodeCaptureItem,
  type AuxiliaryEncoding,
  type CaptureItem,
  type CapturedAuxiliary,
  type CapturedTensor,
} from './capture-item.js';
export {
  MAX_CAPTURE_ID_LENGTH,
  captureItemFromRequest,
  checkCaptureId,
  tensorNameText,
  type CaptureAuxiliaryInput,
  type CaptureModelCatalog,
  type CaptureRequest,
} from './capture-request.js';
export {
  DEFAULT_DEFERRAL_POLICY,
  MemoryCaptureQueue,
  SqliteCaptureQueue,
  type CaptureQueue,
  type CaptureStatus,
  type RecoveredQueue,
  type StatusRecord,
  type StatusRetention,
} from './capture-queue.js';
export { DiskDestination, ObjectStoreDestination, type CaptureDestination } from './destinations.js';
export { CAPTURE_FOLDER, CAPTURE_FOLDER_LOCK_FILE, lockCaptureFolder } from './disk-folder-lock.js';
export {
  CaptureDiskFullError,
  DEFAULT_CAPTURE_DISK_QUOTA_BYTES,
  DEFAULT_CAPTURE_MIN_FREE_BYTES,
  DiskQuota,
  type DiskQuotaOptions,
} from './disk-quota.js';
export {
  MissingCredentialsError,
  RefusedByStoreError,
  S3ObjectStore,
  type ObjectStore,
  type S3Credentials,
  type S3ObjectStoreOptions,
} from './object-store.js';
export {
  fetchIotCredentials,
  iotCredentialProvider,
  type AwsCredentials,
  type IotCredentialsOptions,
} from './iot-credentials.js';
export {
  MODEL_MONITOR_FOLDER,
  edgeRecord,
  formatInferenceTime,
  hourlyPrefix,
  modelMonitorRecord,
  fileKindOfKey,
  renderBatch,
  RENDERED_FILE_KINDS,
  safeFileStem,
  tensorContentType,
  tensorValues,
  type RenderContext,
  type RenderedBatch,
  type RenderedFile,
  type RenderedFileKind,
} from './records.js';
export { CaptureSpool, CaptureSpoolFullError, type CaptureSpoolOptions } from './spool.js';
export { PeriodicUpload, type PeriodicUploadOptions } from './periodic-upload.js';
export { AutoCapture, modelActivityObserver, topScore } from './auto-capture.js';
export { CaptureMetrics, type CaptureLogger } from './capture-metrics.js';
