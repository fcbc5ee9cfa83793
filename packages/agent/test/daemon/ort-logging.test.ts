import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { OnnxModelBuilder, createModelPackage } from '@edgefleet/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { agentClient } from '../capture/helpers.js';
import { buildAgent, listening, spawnAgent, writeAgentConfig, type AgentProcess } from './process-helpers.js';

// Issue 13 item 9: ONNX Runtime's own (ANSI-coloured) log lines landed on the agent's stderr between its JSON
// log lines. They now follow sagemaker_edge_log_verbose: off, none; on, ONNX Runtime's warnings.

let root: string;
let modelPackage: string;
const running: AgentProcess[] = [];

beforeAll(async () => {
  buildAgent();
  root = await mkdtemp(join(tmpdir(), 'edgefleet-ort-logging-'));
  // An unused initializer: ONNX Runtime warns about it at every load ("Removing initializer …").
  const model = new OnnxModelBuilder({ graphName: 'g' })
    .input('x', 'FLOAT32', [1, 2])
    .initializer('unused_weight', 'FLOAT32', [2], new Float32Array([1, 2]))
    .node('Identity', ['x'], ['y'])
    .output('y', 'FLOAT32', [1, 2])
    .build();
  await mkdir(join(root, 'src'));
  await writeFile(join(root, 'src', 'model.onnx'), model);
  modelPackage = (
    await createModelPackage({
      modelPath: join(root, 'src', 'model.onnx'),
      name: 'noisy',
      version: '1.0',
      outDir: join(root, 'pkg'),
    })
  ).dir;
}, 180_000);
afterAll(async () => {
  for (const agent of running) agent.child.kill('SIGKILL');
  await rm(root, { recursive: true, force: true });
});

async function loadWith(verbose: boolean): Promise<string> {
  const socket = join(root, `agent-${verbose}.sock`);
  const config = join(root, `agent-${verbose}.json`);
  await writeAgentConfig(config, {
    sagemaker_edge_log_verbose: verbose,
    edgefleet_inference_workers: 1,
    edgefleet_rest_socket_path: 'none',
  });
  const agent = spawnAgent(['-a', socket, '-c', config], root);
  running.push(agent);
  await agent.waitFor(listening, 'listening');
  const client = agentClient(`unix://${socket}`);
  await client.call('LoadModel', { url: modelPackage, handle: 'noisy' });
  client.close();
  agent.child.kill('SIGTERM');
  await agent.exited;
  return agent.stderr();
}

describe("ONNX Runtime's own log lines", () => {
  it('stay off stderr unless sagemaker_edge_log_verbose is on', async () => {
    expect(await loadWith(false)).not.toMatch(/onnxruntime/);
    // The same load with verbose logging shows ONNX Runtime's warning: the check above can see one.
    expect(await loadWith(true)).toMatch(/W:onnxruntime.*Removing initializer 'unused_weight'/);
  });
});
