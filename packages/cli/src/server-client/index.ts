// A typed client of the EdgeFleet server's operator API, and how CLI commands connect to it.
export {
  ConnectionConfigError,
  defaultProfilesFile,
  profilesFileSchema,
  resolveConnection,
  type ConnectionFlags,
  type ProfilesFile,
  type ResolveContext,
  type ServerConnection,
} from './connection.js';
export {
  ServerApiError,
  ServerClient,
  ServerResponseError,
  ServerUnreachableError,
  uploadContentType,
  type CreateFleetInput,
  type DeviceInput,
  type DeviceListFilter,
  type MetricsFilter,
  type TransferProgress,
  type UpdateDeviceInput,
  type UpdateFleetInput,
} from './server-client.js';
export type * from './schemas.js';
// cli-support.ts holds what the commands share on top of the client: all of it is public.
export * from './cli-support.js';
