/**
 * The real control plane for the CLI's and the agent's tests: `edgefleet-server` run from its build (packages/server/dist) as a child
 * process, on fixed loopback ports so that a restarted server is found where devices were told it is.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll } from 'vitest';
import { watchAgentProcess, type AgentProcess } from './agent-process.js';

export type { AgentLogLine, AgentProcess } from './agent-process.js';

export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const SERVER_MAIN = join(REPO_ROOT, 'packages/server/dist/main.js');
export const AGENT_MAIN = join(REPO_ROOT, 'packages/agent/dist/main.js');
export const CLI_MAIN = join(REPO_ROOT, 'packages/cli/dist/main.js');

export function requireBuilt(...files: string[]): void {
  for (const file of files)
    if (!existsSync(file))
      throw new Error(
        `${file} is missing: build first (npx tsc -b packages/server packages/agent packages/cli)`,
      );
}

/** The argv of `edgefleet device enroll` against `plane` with an enrollment token, writing `configFile`. */
export function deviceEnrollArgs(
  plane: Pick<ControlPlane, 'operatorUrl'>,
  token: string,
  configFile: string,
  ...extra: string[]
): string[] {
  return [
    'device',
    'enroll',
    '--server',
    plane.operatorUrl,
    '--token',
    token,
    '--config',
    configFile,
    ...extra,
  ];
}

/** `edgefleet device enroll …` by the built CLI (packages/cli/dist) as a child process, as a device's installer runs it. */
export async function enrollWithCliProcess(
  plane: Pick<ControlPlane, 'operatorUrl'>,
  token: string,
  configFile: string,
  ...extra: string[]
): Promise<void> {
  requireBuilt(CLI_MAIN);
  await promisify(execFile)(process.execPath, [
    CLI_MAIN,
    ...deviceEnrollArgs(plane, token, configFile, ...extra),
  ]);
}

/** A port free right now on 127.0.0.1. */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

function run(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [SERVER_MAIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

export interface ControlPlane {
  dataDir: string;
  operatorUrl: string;
  deviceEndpoint: string;
  adminToken: string;
  /** Starts the server process (again); resolves once it listens. */
  start(): Promise<void>;
  /** SIGTERM, then waits for the exit; resolves with the exit code. */
  stop(): Promise<number | null>;
  readonly running: boolean;
}

/** Initialises a data dir (first admin token) and starts `edgefleet-server serve` on it. */
export async function startControlPlane(
  options: {
    heartbeatIntervalSeconds?: number;
    /** More server settings (file form), e.g. `{ console: { eventStreamMaxSeconds: 2 } }`. */
    config?: Record<string, unknown>;
  } = {},
): Promise<ControlPlane> {
  requireBuilt(SERVER_MAIN);
  const dataDir = await mkdtemp(join(tmpdir(), 'ef-cp-'));
  const configFile = join(dataDir, 'server.json');
  /** Picks two free ports and writes the config with them (again, when another process took one meanwhile). */
  const choosePorts = async () => {
    const [operatorPort, devicePort] = [await freePort(), await freePort()];
    const ports = {
      operatorUrl: `http://127.0.0.1:${operatorPort}`,
      deviceEndpoint: `https://127.0.0.1:${devicePort}`,
    };
    await writeFile(
      configFile,
      JSON.stringify({
        dataDir,
        listen: `127.0.0.1:${operatorPort}`,
        deviceListen: `127.0.0.1:${devicePort}`,
        deviceEndpoint: ports.deviceEndpoint,
        logLevel: 'info',
        heartbeat: { intervalSeconds: options.heartbeatIntervalSeconds ?? 30 },
        ...options.config,
      }),
    );
    return ports;
  };
  const { operatorUrl, deviceEndpoint } = await choosePorts();
  const init = await run(['init', '--config', configFile]);
  if (init.code !== 0) {
    await rm(dataDir, { recursive: true, force: true });
    throw new Error(`edgefleet-server init failed: ${init.stderr}`);
  }
  const adminToken = init.stdout.trim();

  let child: ChildProcess | undefined;
  let exited: Promise<number | null> = Promise.resolve(null);
  const plane: ControlPlane = {
    dataDir,
    operatorUrl,
    deviceEndpoint,
    adminToken,
    get running() {
      return child !== undefined && child.exitCode === null && child.signalCode === null;
    },
    start: () =>
      new Promise<void>((resolve, reject) => {
        const proc = spawn(process.execPath, [SERVER_MAIN, 'serve', '--config', configFile], {
          stdio: ['ignore', 'pipe', 'pipe'],
        });
        child = proc;
        exited = new Promise((done) => proc.once('exit', (code) => done(code)));
        let buffered = '';
        let stderr = '';
        proc.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
        proc.stdout.on('data', (chunk: Buffer) => {
          buffered += chunk.toString();
          const lines = buffered.split('\n');
          buffered = lines.pop() ?? '';
          if (lines.some((line) => line.includes('"edgefleet-server started"'))) resolve();
        });
        proc.once('exit', (code) =>
          reject(new Error(`edgefleet-server exited (${code}) before listening: ${stderr}`)),
        );
      }),
    stop: async () => {
      if (plane.running) child?.kill('SIGTERM');
      return exited;
    },
  };
  try {
    // A free port can be taken by a parallel test between freePort and the server's listen: choose again.
    for (let attempt = 1; ; attempt++) {
      try {
        await plane.start();
        break;
      } catch (error) {
        if (attempt >= 3 || !String((error as Error).message).includes('EADDRINUSE')) throw error;
        Object.assign(plane, await choosePorts());
      }
    }
  } catch (error) {
    await rm(dataDir, { recursive: true, force: true }); // the caller gets no plane to remove
    throw error;
  }
  return plane;
}

/** Runs the real agent (`packages/agent/dist/main.js -a <socket> -c <config> [extra]`) and collects its JSON log. */
export function startAgentProcess(
  socket: string,
  configFile: string,
  cwd: string,
  extraArgs: string[] = [],
): AgentProcess {
  requireBuilt(AGENT_MAIN);
  return watchAgentProcess(
    spawn(process.execPath, [AGENT_MAIN, '-a', socket, '-c', configFile, ...extraArgs], {
      cwd,
      stdio: ['ignore', 'pipe', 'pipe'],
    }),
  );
}

/**
 * Polls `check` until it returns a value (not undefined); fails with `what`, and the last error seen, after
 * `timeoutMs`. The e2e tests wait on real processes (heartbeats, deployments), so the default is generous.
 */
export async function until<T>(
  check: () => Promise<T | undefined> | T | undefined,
  what: string,
  timeoutMs = 60_000,
  pollMs = 150,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value !== undefined) return value;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline)
      throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
    await new Promise((resolve) => setTimeout(resolve, pollMs));
  }
}

/** Stops the control plane (when it started) and removes its data folder and `folders` (those made). */
export async function removeControlPlane(
  plane: ControlPlane | undefined,
  ...folders: (string | undefined)[]
): Promise<void> {
  await plane?.stop();
  for (const folder of [plane?.dataDir, ...folders])
    if (folder) await rm(folder, { recursive: true, force: true });
}

/** What an end-to-end test file runs on: a control plane (1 s heartbeats) and a scratch folder for its devices. */
export interface E2eFleet {
  /** The control plane; set once the file's tests run. */
  readonly plane: ControlPlane;
  /** The scratch folder; set once the file's tests run. */
  readonly work: string;
  /** startAgentProcess, the agent to be stopped (if still running) after the file's tests. */
  startAgent(...args: Parameters<typeof startAgentProcess>): AgentProcess;
}

/**
 * Starts an E2eFleet before the file's tests; after them stops the agents still running (SIGTERM, then waits),
 * the control plane, and removes their folders.
 */
export function useE2eFleet(prefix: string): E2eFleet {
  let plane: ControlPlane | undefined;
  let work: string | undefined;
  const agents: AgentProcess[] = [];
  beforeAll(async () => {
    requireBuilt(AGENT_MAIN, CLI_MAIN);
    plane = await startControlPlane({ heartbeatIntervalSeconds: 1 });
    work = await mkdtemp(join(tmpdir(), prefix));
  });
  afterAll(async () => {
    try {
      // An agent that does not stop on SIGTERM within 10 s is killed: a hung one must not keep the rest around.
      await Promise.all(
        agents.map(async (agent) => {
          if (agent.child.exitCode !== null || agent.child.signalCode !== null) return;
          agent.child.kill('SIGTERM');
          const timer = setTimeout(() => agent.child.kill('SIGKILL'), 10_000);
          await agent.exited;
          clearTimeout(timer);
        }),
      );
    } finally {
      await removeControlPlane(plane, work);
    }
  });
  return {
    get plane() {
      if (!plane) throw new Error('the e2e control plane starts in beforeAll');
      return plane;
    },
    get work() {
      if (work === undefined) throw new Error('the e2e folder is made in beforeAll');
      return work;
    },
    startAgent(...args) {
      const agent = startAgentProcess(...args);
      agents.push(agent);
      return agent;
    },
  };
}
