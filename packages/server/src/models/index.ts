export {
  defaultWorkDir,
  ModelStore,
  type ModelRecord,
  type ModelSourceKind,
  type ModelStoreOptions,
  type ModelTensors,
  type ModelVersionRecord,
} from './model-store.js';
export {
  modelSchema,
  modelVersionSchema,
  modelVersionView,
  modelRoutes,
  UPLOAD_CONTENT_TYPES,
} from './routes.js';
export { spoolUpload, type SpooledUpload } from './upload.js';
