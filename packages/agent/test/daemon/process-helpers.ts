import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import type { AgentClient, TestModelName } from '@edgefleet/core';
import { afterAll, afterEach, beforeAll } from 'vitest';
import { newClient } from '../grpc/helpers.js';
import { scratch } from '../support/model-packages.js';
import {
  watchAgentProcess,
  type AgentLogLine,
  type AgentProcess,
} from '../../../../test/support/agent-process.js';

export const REPO_ROOT = fileURLToPath(new URL('../../../../', import.meta.url));
export const AGENT_MAIN = fileURLToPath(new URL('../../dist/main.js', import.meta.url));

/**
 * Builds the agent (`tsc -b packages/agent`) so the tests run the real `edgefleet-agent` binary. Type errors in
 * folders being worked on elsewhere do not stop tsc from emitting, so only a missing main.js is fatal.
 */
export function buildAgent(): void {
  spawnSync(process.execPath, [`${REPO_ROOT}node_modules/typescript/bin/tsc`, '-b', 'packages/agent'], {
    cwd: REPO_ROOT,
    stdio: 'ignore',
  });
  if (!existsSync(AGENT_MAIN)) throw new Error(`building the agent did not produce ${AGENT_MAIN}`);
}

/** A log line of the agent, and a running `node dist/main.js …` with its JSON log lines and plain stderr. */
export type { AgentLogLine as LogLine, AgentProcess } from '../../../../test/support/agent-process.js';

export interface SpawnAgentOptions {
  /** Start the agent with this open file limit (`ulimit -n`, soft and hard). */
  openFileLimit?: number;
  /** The agent's environment (this process's by default). */
  env?: NodeJS.ProcessEnv;
}

export function spawnAgent(args: string[], cwd: string, options: SpawnAgentOptions = {}): AgentProcess {
  const stdio: ['ignore', 'pipe', 'pipe'] = ['ignore', 'pipe', 'pipe'];
  const env = options.env ?? process.env;
  const child =
    options.openFileLimit === undefined
      ? spawn(process.execPath, [AGENT_MAIN, ...args], { cwd, stdio, env })
      : spawn(
          '/bin/sh',
          [
            '-c',
            `ulimit -n ${Math.trunc(options.openFileLimit)} && exec "$@"`,
            'sh',
            process.execPath,
            AGENT_MAIN,
            ...args,
          ],
          { cwd, stdio, env },
        );
  return watchAgentProcess(child);
}

export const listening = (line: AgentLogLine): boolean => line.event === 'listening';

/** Writes an agent config file for device-1 of fleet-a, with `keys` on top: what the process tests start from. */
export async function writeAgentConfig(path: string, keys: Record<string, unknown>): Promise<void> {
  await writeFile(
    path,
    JSON.stringify({
      sagemaker_edge_core_device_name: 'device-1',
      sagemaker_edge_core_device_fleet_name: 'fleet-a',
      ...keys,
    }),
  );
}

/** A test file's scratch folder with catalogue packages, and the agents and clients its tests start. */
export interface AgentScratch {
  files: Awaited<ReturnType<typeof scratch>>;
  /** A catalogue model's package folder (one of the file's `models`). */
  packageOf(model: TestModelName): string;
  /** Agents a test started: killed (SIGKILL) after each test, and waited for. */
  running: AgentProcess[];
  /** Clients a test opened: closed after each test. */
  clients: { close(): void }[];
  /** Starts `edgefleet-agent args…` in the scratch folder, killed after the test. */
  start(args: string[]): AgentProcess;
  /** A gRPC client of the agent on Unix socket `socket`, closed after the test. */
  client(socket: string): AgentClient;
}

/**
 * Builds the agent and packs `models` before the file's tests; kills its agents (waiting for them to exit) and
 * closes its clients after each test, and removes the folder after them all.
 */
export function useAgentScratch(prefix: string, models: readonly TestModelName[]): AgentScratch {
  const packages = new Map<TestModelName, string>();
  const fixture = {
    running: [],
    clients: [],
    packageOf(model: TestModelName): string {
      const folder = packages.get(model);
      if (folder === undefined) throw new Error(`${model} is not one of this file's packages`);
      return folder;
    },
    start(args: string[]): AgentProcess {
      const agent = spawnAgent(args, fixture.files.root);
      fixture.running.push(agent);
      return agent;
    },
    client(socket: string): AgentClient {
      const client = newClient(`unix://${socket}`);
      fixture.clients.push(client);
      return client;
    },
  } as unknown as AgentScratch;
  beforeAll(async () => {
    buildAgent();
    fixture.files = await scratch(prefix);
    for (const model of models) packages.set(model, await fixture.files.catalogue(model));
  }, 120_000);
  afterEach(async () => {
    for (const client of fixture.clients.splice(0)) client.close();
    const killed = fixture.running.splice(0);
    for (const agent of killed) agent.child.kill('SIGKILL');
    // Gone before the next test starts one: the kernel lets go of a data root's lock only once the process is.
    await Promise.all(killed.map((agent) => agent.exited));
  });
  afterAll(async () => {
    await fixture.files?.cleanup();
  });
  return fixture;
}
