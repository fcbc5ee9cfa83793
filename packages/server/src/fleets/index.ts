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
export { fleetView, registerFleetRoutes } from './routes.js';
