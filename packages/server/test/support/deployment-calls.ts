/**
 * Calls deployment tests make again and again: the admin API, registering devices, and a device's report on an
 * UNDEPLOY deployment of model handle `h` (no package needed).
 */
import type { DeploymentResult, GetDeploymentsResult } from '@edgefleet/core';
import { expect } from 'vitest';
import type { TestServer } from './server.js';

/** `admin(method, path, body?)`, `register(fleet, names)` and `createFleet(name, devices?)` for the server `server()` returns (set in beforeAll). */
export function adminCalls(server: () => TestServer) {
  const admin = (method: string, urlPath: string, body?: unknown) =>
    server().call(method, urlPath, { token: server().adminToken, ...(body !== undefined && { body }) });
  const register = async (fleet: string, names: string[]) =>
    expect(
      (await admin('POST', `/api/v1/fleets/${fleet}/devices`, { devices: names.map((name) => ({ name })) }))
        .status,
    ).toBe(201);
  /** Creates fleet `name` (output s3://c/<name>) with devices `devices`. */
  const createFleet = async (name: string, devices: string[] = []) => {
    expect(
      (await admin('POST', '/api/v1/fleets', { name, outputConfig: { s3OutputLocation: `s3://c/${name}` } }))
        .status,
    ).toBe(201);
    if (devices.length > 0) await register(name, devices);
  };
  return { admin, register, createFleet };
}

/** A device's final report on plan `plan` (model handle `h`, UNDEPLOY): all done, or failed to remove it. */
export function undeployResult(
  plan: string,
  status: 'SUCCESS' | 'FAIL',
  statusMessage?: string,
): DeploymentResult {
  return {
    DeploymentName: plan,
    DeploymentStatus: status,
    ...(statusMessage !== undefined && { DeploymentStatusMessage: statusMessage }),
    DeploymentModels: [
      status === 'SUCCESS'
        ? { ModelHandle: 'h', Status: 'SUCCESS', State: 'UNDEPLOY', DesiredState: 'UNDEPLOY' }
        : { ModelHandle: 'h', Status: 'FAIL', StatusReason: 'could not remove it' },
    ],
  };
}

/** A device's final report on every handle of an UNDEPLOY plan: all done, or failed to remove them. */
export function handlesResult(plan: string, handles: string[], status: 'SUCCESS' | 'FAIL'): DeploymentResult {
  return {
    DeploymentName: plan,
    DeploymentStatus: status,
    DeploymentModels: handles.map((handle) =>
      status === 'SUCCESS'
        ? { ModelHandle: handle, Status: 'SUCCESS', State: 'UNDEPLOY', DesiredState: 'UNDEPLOY' }
        : { ModelHandle: handle, Status: 'FAIL', StatusReason: 'could not remove it' },
    ),
  };
}

/** `plan: handle, handle` per deployment, in the answer's order. */
export function shownDeployments(answer: GetDeploymentsResult): string[] {
  return (answer.Deployments ?? []).map(
    (d) => `${d.DeploymentName}: ${(d.Definitions ?? []).map((def) => def.ModelHandle).join(', ')}`,
  );
}

/** A one-stage plan's stage: its rule, and what a device's failure does. */
export interface OneStage {
  deviceSelection:
    { subsetType: 'PERCENTAGE'; percentage: number } | { subsetType: 'SELECTION'; deviceNames: string[] };
  failureHandlingPolicy?: 'ROLLBACK_ON_FAILURE' | 'DO_NOTHING';
}

/** A device's poll and report in fleet `fleet` of the server `server()` returns, and whole one-stage rollouts. */
export function planCalls(server: () => TestServer, fleet: string) {
  const service = () => server().server.services.deployments;
  const poll = (deviceName: string) => service().deploymentsFor({ deviceName, fleetName: fleet });
  const report = (deviceName: string, result: DeploymentResult) =>
    service().recordResults([{ deviceName, fleetName: fleet, result, receivedAt: Date.now() }]);
  /** Creates and starts a one-stage UNDEPLOY plan of `handles`; each listed device polls and reports. */
  async function rollOut(
    name: string,
    handles: string[],
    outcomes: Record<string, 'SUCCESS' | 'FAIL'>,
    stage: OneStage = { deviceSelection: { subsetType: 'PERCENTAGE', percentage: 100 } },
  ): Promise<void> {
    await service().createPlan({
      name,
      fleetName: fleet,
      modelConfigs: handles.map((modelHandle) => ({ modelHandle, state: 'UNDEPLOY' as const })),
      stages: [{ name: 'all', ...stage }],
      options: { maxRetries: 0 },
    });
    await service().startStage(name, 'all');
    for (const [device, outcome] of Object.entries(outcomes)) {
      await poll(device);
      await report(device, handlesResult(name, handles, outcome));
    }
  }
  return { service, poll, report, rollOut };
}
