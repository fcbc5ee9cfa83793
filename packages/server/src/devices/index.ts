export {
  deviceCertificateSchema,
  deviceInputSchema,
  deviceListQuerySchema,
  deviceSchema,
  deviceSummarySchema,
  MAX_DEVICES_PER_REGISTRATION,
  registerDevicesSchema,
  updateDeviceSchema,
  type DeviceInput,
  type DeviceView,
  type IdentityStatus,
  type RegisterDevicesInput,
  type UpdateDeviceInput,
} from './device-schemas.js';
export {
  DeviceStore,
  toCertificate,
  type DeviceCertificateRecord,
  type DeviceIdentity,
  type DeviceListFilters,
  type DeviceModelState,
  type DeviceRecord,
  type DeviceStoreOptions,
} from './device-store.js';
export { deviceSummaryView, deviceView, deviceRoutes } from './routes.js';
export {
  deviceCountsByFleet,
  deviceFleet,
  fleetDeviceStats,
  lastDeploymentResults,
  lockDevice,
  recordDeploymentResult,
  recordHeartbeatStates,
  selectableDevices,
  type DeviceHeartbeatState,
  type SelectableDevice,
  type FleetDeviceStats,
} from './device-table.js';
