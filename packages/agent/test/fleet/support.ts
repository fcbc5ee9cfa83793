/**
 * A real control plane with an enrolled device, for fleet-client tests: edgefleet-server from its build, the
 * operator API over HTTP, and enrollment by the real `edgefleet device enroll` (packages/cli/dist).
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino, type Logger } from 'pino';
import { parseAgentConfig, type AgentConfig } from '../../src/config/index.js';
import type { FleetTiming } from '../../src/fleet/index.js';
import {
  CLI_MAIN,
  enrollWithCliProcess,
  removeControlPlane,
  requireBuilt,
  startControlPlane,
  type ControlPlane,
  until as pollUntil,
} from '../../../../test/support/control-plane.js';

export { removeControlPlane, startControlPlane, type ControlPlane };

/** Fast cadence for tests: heartbeats every 200 ms, retries from 50 ms up to 400 ms. */
export const FAST_TIMING: Partial<FleetTiming> = {
  heartbeatIntervalMs: 200,
  initialBackoffMs: 50,
  maxBackoffMs: 400,
  requestTimeoutMs: 5000,
};

/** One call to the operator API as admin; throws on an unexpected status. */
export async function operator(
  plane: ControlPlane,
  method: string,
  path: string,
  body?: unknown,
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- tests read answers field by field
): Promise<any> {
  const response = await fetch(`${plane.operatorUrl}${path}`, {
    method,
    headers: {
      authorization: `Bearer ${plane.adminToken}`,
      ...(body !== undefined && { 'content-type': 'application/json' }),
    },
    ...(body !== undefined && { body: JSON.stringify(body) }),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${path}: HTTP ${response.status} ${text}`);
  return text === '' ? undefined : JSON.parse(text);
}

/** Registers `device` in `fleet` (creating the fleet when needed) and enrolls it into `<dir>/agent.json`. */
export async function enrollDevice(
  plane: ControlPlane,
  fleet: string,
  device: string,
  dir: string,
): Promise<string> {
  requireBuilt(CLI_MAIN);
  const fleets = await operator(plane, 'GET', `/api/v1/fleets?nameContains=${fleet}`);
  if (!fleets.fleets.some((f: { name: string }) => f.name === fleet))
    await operator(plane, 'POST', '/api/v1/fleets', {
      name: fleet,
      outputConfig: { s3OutputLocation: `s3://b/${fleet}` },
    });
  const existing = await fetch(`${plane.operatorUrl}/api/v1/devices/${device}`, {
    headers: { authorization: `Bearer ${plane.adminToken}` },
  });
  if (existing.status === 404)
    await operator(plane, 'POST', `/api/v1/fleets/${fleet}/devices`, { devices: [{ name: device }] });
  return reenroll(plane, device, dir);
}

/** A new enrollment token and `edgefleet device enroll` with it (new key and certificate, same files). */
export async function reenroll(plane: ControlPlane, device: string, dir: string): Promise<string> {
  const { token } = await operator(plane, 'POST', `/api/v1/devices/${device}/enrollment-tokens`, {});
  const config = join(dir, 'agent.json');
  await enrollWithCliProcess(plane, token, config);
  return config;
}

/** The agent's config from the enrolled file plus `extra` keys, as the agent would read it. */
export async function agentConfig(
  file: string,
  dir: string,
  extra: Record<string, unknown> = {},
): Promise<AgentConfig> {
  const json = { ...JSON.parse(await readFile(file, 'utf8')), ...extra };
  await writeFile(file, JSON.stringify(json, null, 2));
  return parseAgentConfig(json, { cwd: dir, cpuCount: 2, grpcSocketPath: join(dir, 'agent.sock') }).config;
}

/** Polls `check` until it returns a value (not undefined); fails with `what` after `timeoutMs`. */
export const until = <T>(
  check: () => Promise<T | undefined> | T | undefined,
  what: string,
  timeoutMs = 20_000,
): Promise<T> => pollUntil(check, what, timeoutMs, 100);

/** A pino logger at debug level whose JSON lines the test reads back (`lines`, in order). */
export function captureLogger(): {
  logger: Logger;
  lines: Array<{ msg: string; event?: string; level: number; serial?: string }>;
} {
  const lines: Array<{ msg: string; event?: string; level: number; serial?: string }> = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split('\n')) if (line) lines.push(JSON.parse(line));
      done();
    },
  });
  return { logger: pino({ level: 'debug' }, stream), lines };
}
