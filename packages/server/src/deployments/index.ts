export * from './deployment-schemas.js';
export { DeploymentService, type DeploymentServiceOptions } from './deployment-service.js';
export { stopDeregisteredDeviceTargets } from './deregistered-device.js';
export { classifyResult, type ReportedResult, type ResultOutcome } from './device-results.js';
export { selectDevices, selectsNewcomer } from './device-selection.js';
export { deploymentDeviceRoutes, deploymentResultRequestSchema, deploymentRoutes } from './routes.js';
export { startDeploymentSweeper, startPlanRetentionSweeper } from './sweeper.js';
export { PLANS_PER_RETENTION_SWEEP, type ExpiredPlan } from './plan-retention.js';
export { planListQuery, type PlanListQuery } from './plan-view.js';
