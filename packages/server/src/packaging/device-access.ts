/**
 * Which packages a device may download: only one deployed, or deployable, to its own fleet, so a device
 * cannot fetch another fleet's models. A package reaches a fleet through a deployment plan: the
 * DeploymentService (server/src/deployments/) implements this interface from its plans.
 */
export interface DevicePackageAccess {
  /** True when the packaging job's package is deployed, or deployable, to devices of this fleet. */
  isDeployable(jobName: string, fleetName: string): Promise<boolean>;
}
