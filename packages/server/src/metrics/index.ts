export {
  DEFAULT_FLEET_STATE_READ_TIMEOUT_MS,
  DEFAULT_FLEET_STATE_TTL_MS,
  FleetStateReader,
  FleetStateReadTimeoutError,
  readFailureLog,
  registerFleetStateGauges,
  type FleetState,
} from './fleet-state.js';
export { metricsRoutes, PROMETHEUS_CONTENT_TYPE } from './routes.js';
export { HTTP_DURATION_BUCKETS, ServerMetrics, UNMATCHED_ROUTE, type Listener } from './server-metrics.js';
