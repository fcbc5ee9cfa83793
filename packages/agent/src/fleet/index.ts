// The fleet client: registration checks and heartbeats to the control plane over mutual TLS (docs/fleet.md).
export {
  DEFAULT_HEARTBEAT_INTERVAL_SECONDS,
  defaultTiming,
  readDeviceTls,
  whyDisabled as fleetDisabledReason,
  startFleetClient,
  type DeploymentResultSource,
  type FleetClient,
  type FleetClientOptions,
  type FleetClientState,
  type FleetClientStatus,
  type FleetLogger,
  type FleetTiming,
} from './fleet-client.js';
export { CurrentTls, currentDeviceApi } from './current-tls.js';
export { AGENT_RUNS_FILE, AgentRunsLedger, type AgentRuns } from './agent-runs.js';
export {
  CertificateRenewal,
  DEFAULT_RENEW_AFTER_FRACTION,
  renewalDueAt,
  type CertificateFiles,
  type CertificateRenewalOptions,
  type RenewalResult,
} from './certificate-renewal.js';
export {
  DeviceApiClient,
  DeviceApiError,
  deviceHttpsAgent,
  type DeviceApiFailure,
  type DeviceTlsIdentity,
} from './device-api.js';
export {
  HeartbeatComposer,
  nodeProcessProbe,
  type ActivitySource,
  type AgentHeartbeat,
  type ComposedHeartbeat,
  type EdgeMetric,
  type HeartbeatModel,
  type HeartbeatComposerOptions,
  type ModelSource,
  type ProcessProbe,
  type StorageProbe,
  type TelemetryReading,
} from './telemetry.js';
export {
  REQUEST_DURATION_METRIC,
  histogramDelta,
  histogramQuantile,
  readLatencyHistograms,
  type HistogramReading,
} from './latency.js';
// The heartbeat's contract is core's, shared with the server.
export {
  MAX_MODELS_PER_HEARTBEAT,
  sendHeartbeatRequestSchema,
  type SendHeartbeatRequest,
} from '@edgefleet/core';
