import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
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
