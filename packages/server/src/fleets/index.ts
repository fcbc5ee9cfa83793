export {
  createFleetSchema,
  fleetSchema,
  outputConfigInputSchema,
  updateFleetSchema,
  type CreateFleetInput,
  type FleetView,
  type UpdateFleetInput,
} from './fleet-schemas.js';
export { FleetStore, type FleetRecord } from './fleet-store.js';
export { fleetView, fleetRoutes } from './routes.js';
export {
  clearOutputOutage,
  markOutputOutage,
  OUTAGE_LAST_FAILURE_RESOLUTION_MS,
  outageNeedsRecording,
  type FleetOutputOutage,
} from './output-outage.js';
