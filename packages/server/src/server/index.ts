export { initServer, type InitResult } from './init.js';
export { createLogger } from './logger.js';
export {
  DATABASE_DAMAGED_EXIT_CODE,
  DATABASE_GIVEN_UP_EXIT_CODE,
  databaseGivenUpExitCode,
  openDeviceCa,
  openPackageSigning,
  openStores,
  startServer,
  type DatabaseGivenUp,
  type ServerHandle,
  type ServerServices,
  type StartServerOptions,
} from './start-server.js';
export { DEVICE_LISTENER_LIMITS, OPERATOR_LISTENER_LIMITS } from './listener-limits.js';
export { BlobStoreMismatchError } from './blob-store-binding.js';
export { schemaVersion, serverVersion } from './version.js';
export {
  databaseNowMs,
  recentServers,
  captureHolderMayWrite,
  refuseMigratingUnderRunningServers,
  registerServer,
  SERVER_SEEN_RECENT_MS,
  SERVER_SEEN_REFRESH_MS,
  ServersRunningError,
  processHostId,
  type RunningServer,
  type ServerRegistration,
} from './server-registry.js';
