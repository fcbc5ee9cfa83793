export { fleetReport, type FleetReport } from './fleet-report.js';
export {
  assertActsAsItself,
  HeartbeatService,
  type DeploymentResultSink,
  type HeartbeatServiceOptions,
  type MetricsDropped,
  type StoredMetric,
} from './heartbeat-service.js';
export {
  MAX_BUCKETS_PER_SERIES,
  queryDeviceMetrics,
  type MetricSeries,
  type MetricsQuery,
} from './metrics-query.js';
export { pruneExpired, startRetentionSweeper } from './retention.js';
export { heartbeatDeviceRoutes, heartbeatOperatorRoutes, SEND_HEARTBEAT_URLS } from './routes.js';
