/**
 * A real agent process with deployments on, pointed at the fake device API of support.ts, for the tests that
 * SIGKILL it mid-update: its config, start and kill, its REST status, and its own record of an update (read
 * from its database, read-only, as it writes it).
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { join } from 'node:path';
import SqliteDatabase from 'better-sqlite3';
import { listening, spawnAgent, type AgentProcess } from '../daemon/process-helpers.js';
import type { FakeDeviceApi } from './support.js';

export interface AgentStatus {
  models: Array<{ name: string; version: string; signatureVerified: boolean; path?: string }>;
  deployments: {
    enabled: boolean;
    models?: Array<{
      handle: string;
      deployment: string;
      state: string;
      version: string;
      reason: string | null;
      loaded: boolean;
      notLoadedReason: string | null;
      loadFailure?: string | null;
      unloadedByApplicationAt: string | null;
    }>;
  };
}

/** GET /edgefleet/v1/status on the agent's REST socket. */
export function getStatus(socket: string): Promise<AgentStatus> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath: socket, path: '/edgefleet/v1/status', timeout: 5000 }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (chunk: string) => (body += chunk));
      res.on('end', () =>
        res.statusCode === 200 ? resolve(JSON.parse(body) as AgentStatus) : reject(new Error(body)),
      );
    });
    req.on('error', reject);
    req.end();
  });
}

/** A handle's row in deployment_models, as the agent last committed it. */
export interface RecordedUpdate {
  deployment_name: string;
  state: string;
  restarts: number;
}

export interface DeviceAgent {
  dir: string;
  dataRoot: string;
  restSocket: string;
  /** The update lock's path (edgefleet_deployment_update_lock_path). */
  updateLock: string;
  /** The running process (after start). */
  readonly process: AgentProcess | undefined;
  /** Starts the agent (-f: a killed one's socket is stale) and waits until it listens. */
  start(): Promise<AgentProcess>;
  /** SIGKILLs the agent and waits until it is gone. */
  kill(): Promise<void>;
  /** The agent's record of `handle`'s update, or undefined before its first. */
  recorded(handle: string): RecordedUpdate | undefined;
  /** Adds or overrides config keys, for the next start. */
  configure(keys: Record<string, unknown>): Promise<void>;
}

/**
 * An agent in `dir` (made here) whose config enables deployments against `api`, trusts the packages signed for
 * `trustDir` and requires signatures, polls and beats every second, with a 1 s health window; `keys` adds or
 * overrides config keys.
 */
export async function deviceAgent(
  dir: string,
  api: FakeDeviceApi,
  trustDir: string,
  keys: Record<string, unknown> = {},
): Promise<DeviceAgent> {
  await mkdir(dir, { recursive: true });
  const file = (name: string, text: string) => writeFile(join(dir, name), text).then(() => join(dir, name));
  const socket = join(dir, 'agent.sock');
  const restSocket = join(dir, 'rest.sock');
  const dataRoot = join(dir, 'data');
  const updateLock = join(dir, 'updates.lock');
  const settings: Record<string, unknown> = {
    sagemaker_edge_core_device_name: 'device-1',
    sagemaker_edge_core_device_fleet_name: 'fleet-1',
    sagemaker_edge_provider_provider: 'Aws',
    sagemaker_edge_core_endpoint_override: api.endpoint,
    sagemaker_edge_provider_aws_cert_file: await file('device.pem', api.tls.certPem),
    sagemaker_edge_provider_aws_cert_pk_file: await file('device.key', api.tls.keyPem),
    sagemaker_edge_provider_aws_ca_cert_file: await file('ca.pem', api.tls.caPem!),
    sagemaker_edge_core_root_certs_path: trustDir,
    sagemaker_edge_local_data_root_path: dataRoot,
    sagemaker_edge_deployment_lib_path: '/usr/lib/deployment.so',
    edgefleet_deployment_poll_interval_seconds: 1,
    edgefleet_deployment_health_window_seconds: 1,
    edgefleet_deployment_update_lock_path: updateLock,
    edgefleet_heartbeat_interval_seconds: 1,
    edgefleet_rest_socket_path: restSocket,
    edgefleet_inference_workers: 1,
    edgefleet_require_signatures: true,
    ...keys,
  };
  const config = await file('agent.json', JSON.stringify(settings));
  let agent: AgentProcess | undefined;
  return {
    dir,
    dataRoot,
    restSocket,
    updateLock,
    get process() {
      return agent;
    },
    async start() {
      agent = spawnAgent(['-a', socket, '-c', config, '-f'], dir);
      await agent.waitFor(listening, 'listening');
      return agent;
    },
    async kill() {
      if (!agent || agent.child.exitCode !== null || agent.child.signalCode !== null) return;
      agent.child.kill('SIGKILL');
      await agent.exited;
    },
    async configure(more) {
      await file('agent.json', JSON.stringify(Object.assign(settings, more)));
    },
    recorded(handle) {
      const db = new SqliteDatabase(join(dataRoot, 'agent.db'), { readonly: true, fileMustExist: true });
      try {
        return db
          .prepare('SELECT deployment_name, state, restarts FROM deployment_models WHERE handle = ?')
          .get(handle) as RecordedUpdate | undefined;
      } finally {
        db.close();
      }
    },
  };
}
