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
export { UploadSlots } from './upload-slots.js';
