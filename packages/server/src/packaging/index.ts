export { type DevicePackageAccess } from './device-access.js';
export {
  packagingJobStatusSchema,
  PackagingJobStore,
  type PackagingJobRecord,
  type PackagingJobStatus,
} from './packaging-jobs.js';
export { artifactKeyOf, PackagingWorker, type PackagingWorkerOptions } from './packaging-worker.js';
export {
  packagingJobSchema,
  packagingJobView,
  packagingDeviceRoutes,
  packagingRoutes,
  requestedRange,
  sendPackage,
} from './routes.js';
export {
  bindSigningRoot,
  openSigningIdentity,
  type PackageSigningIdentity,
  type SigningKeyFiles,
} from './signing-keys.js';
