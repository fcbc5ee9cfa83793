import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ORT_TELEMETRY_VARIABLE } from '../../src/inference/index.js';
import { agentClient } from '../capture/helpers.js';
import { wireInputs } from '../grpc/helpers.js';
import { scratch } from '../support/model-packages.js';
import { buildAgent, listening, spawnAgent, type AgentProcess } from './process-helpers.js';

// onnxruntime-node 1.30's telemetry (see src/inference/ort-telemetry.ts) stays off in a real agent: no record of
// the models in the home folder's cache, no .ses, no mat-debug log, after loading a model and running it on the
// workers and inline. An operator who sets the variable keeps their choice, which also shows that the test sees
// the files when ONNX Runtime writes them.

let work: Awaited<ReturnType<typeof scratch>>;
let tiny: string;
const running: AgentProcess[] = [];

beforeAll(async () => {
  buildAgent();
  work = await scratch('edgefleet-ort-telemetry-');
  tiny = await work.catalogue('tiny');
}, 180_000);
afterAll(async () => {
  for (const agent of running) agent.child.kill('SIGKILL');
  await work.cleanup();
});

/** Runs an agent with its own home, cache and temporary folders; resolves every path created in them. */
async function filesAfterRunning(name: string, telemetrySetting: string | undefined): Promise<string[]> {
  const root = join(work.root, name);
  const home = join(root, 'home');
  const cache = join(root, 'cache');
  const temporary = join(root, 'tmp');
  for (const folder of [home, cache, temporary]) await mkdir(folder, { recursive: true });
  const env: NodeJS.ProcessEnv = { ...process.env, HOME: home, XDG_CACHE_HOME: cache, TMPDIR: temporary };
  delete env[ORT_TELEMETRY_VARIABLE];
  if (telemetrySetting !== undefined) env[ORT_TELEMETRY_VARIABLE] = telemetrySetting;
  const socket = join(root, 'agent.sock');
  const config = join(root, 'agent.json');
  await writeFile(
    config,
    JSON.stringify({
      sagemaker_edge_core_device_name: 'device-1',
      sagemaker_edge_core_device_fleet_name: 'fleet-a',
      edgefleet_inference_workers: 1,
      edgefleet_rest_socket_path: 'none',
    }),
  );
  const agent = spawnAgent(['-a', socket, '-c', config], root, { env });
  running.push(agent);
  await agent.waitFor(listening, 'listening');
  const client = agentClient(`unix://${socket}`);
  try {
    await client.call('LoadModel', { url: tiny, handle: 'tiny' });
    // Enough runs for the tiny model to be measured on the worker and then run inline on the event loop.
    for (let i = 0; i < 40; i++)
      await client.call('Predict', { handle: 'tiny', tensors: wireInputs('tiny') });
  } finally {
    client.close();
  }
  agent.child.kill('SIGTERM');
  await agent.exited;
  const entries = await Promise.all(
    [home, cache, temporary].map(async (folder) =>
      (await readdir(folder, { recursive: true })).map((entry) => join(folder, entry)),
    ),
  );
  return entries.flat();
}

describe("ONNX Runtime's telemetry", () => {
  it('is off: the agent leaves nothing of it in the home, cache or temporary folders', async () => {
    expect(await filesAfterRunning('default', undefined)).toEqual([]);
  });

  it("is the operator's choice when they set ORT_DISABLE_TELEMETRY themselves", async () => {
    const files = await filesAfterRunning('operator-on', '0');
    expect(files.some((path) => path.endsWith(join('Microsoft', 'DeveloperTools', '.onnxruntime')))).toBe(
      true,
    );
    expect(files.some((path) => /mat-debug-\d+\.log$/.test(path))).toBe(true);
  });
});
