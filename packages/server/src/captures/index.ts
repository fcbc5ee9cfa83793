export {
  CaptureIngest,
  MIN_OBJECT_CHARGE_BYTES,
  type CaptureFile,
  type CaptureFileStream,
  type CaptureLimits,
  type CaptureWriter,
  type StoredCaptureFile,
} from './capture-ingest.js';
export { FleetOutputs, parseOutputLocation, type FleetOutputTarget } from './fleet-output.js';
export {
  agentSettingsSchema,
  captureFileBodySchema,
  captureDeviceRoutes,
  rawCaptureFileQuerySchema,
  storedCaptureFileSchema,
} from './routes.js';
export { bucketsWithLocalCaptures, localCapturesLeftWarning } from './local-fleet-output-left.js';
export { UploadSlots } from './upload-slots.js';
