/**
 * Calls deployment tests make again and again: the admin API, registering devices, and a device's report on an
 * UNDEPLOY deployment of model handle `h` (no package needed).
 */
import type { DeploymentResult } from '@edgefleet/core';
import { expect } from 'vitest';
import type { TestServer } from './server.js';

/** `admin(method, path, body?)` and `register(fleet, names)` for the server `server()` returns (set in beforeAll). */
export function adminCalls(server: () => TestServer) {
  const admin = (method: string, urlPath: string, body?: unknown) =>
    server().call(method, urlPath, { token: server().adminToken, ...(body !== undefined && { body }) });
  const register = async (fleet: string, names: string[]) =>
    expect(
      (await admin('POST', `/api/v1/fleets/${fleet}/devices`, { devices: names.map((name) => ({ name })) }))
        .status,
    ).toBe(201);
  return { admin, register };
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
