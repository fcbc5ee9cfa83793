/**
 * Which packages a device may download: only one deployed, or deployable, to its own fleet, so a device
 * cannot fetch another fleet's models. A package reaches a fleet through a deployment plan
 * (server/src/deployments/, to come), which will implement this interface from its plans; until then no
 * package is deployed anywhere and every device download is refused.
 */
export interface DevicePackageAccess {
  /** True when the packaging job's package is deployed, or deployable, to devices of this fleet. */
  isDeployable(jobName: string, fleetName: string): Promise<boolean>;
}

/** The rule while no deployment plans exist: nothing is deployable. */
export const noDeploymentPlans: DevicePackageAccess = {
  isDeployable: () => Promise.resolve(false),
};
