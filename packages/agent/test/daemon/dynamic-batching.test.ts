import { join } from 'node:path';
import { TEST_MODELS, type TestModelTensor } from '@edgefleet/core';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { agentClient, modelPackage, useAgentProcesses } from '../capture/helpers.js';
import { callError } from '../grpc/helpers.js';
import { HttpClient, binaryBody, bytesOf, type InferResponseJson } from '../rest/helpers.js';
import { listening, writeAgentConfig } from './process-helpers.js';

// A real agent process with one inference worker and edgefleet_dynamic_batching on for the catalogue's mlp model
// (features [batch, 4] → probabilities [batch, 3]), driven over REST on its Unix socket.

const agents = useAgentProcesses('edgefleet-batching-');
let mlpPackage: string;
const clients: Array<{ close(): void }> = [];

beforeAll(async () => {
  mlpPackage = await modelPackage(agents.root, 'mlp');
}, 60_000);
afterEach(() => {
  for (const client of clients.splice(0)) client.close();
});

const mlp = TEST_MODELS.mlp;

/** Request `i`'s own flower measurements: 1 to 3 rows (requests differ in size along the batch dimension too). */
function featuresOf(i: number): TestModelTensor & { data: Float32Array } {
  const rows = 1 + (i % 3);
  const data = Float32Array.from({ length: rows * 4 }, (_, k) => {
    const feature = k % 4;
    // Around the species' typical sizes, different for every request and row.
    return Math.fround([5.8, 3.0, 3.8, 1.2][feature]! + (((i * 7 + k * 3) % 23) - 11) * 0.13);
  });
  return { dataType: 'FLOAT32', shape: [rows, 4], data };
}

function expectedOf(features: TestModelTensor): Float32Array {
  return mlp.reference({ features }).probabilities!.data as Float32Array;
}

/** Request `i` over REST: even ones as JSON, odd ones with the features as binary tensor data. */
async function infer(http: HttpClient, i: number): Promise<{ features: TestModelTensor; got: number[] }> {
  const features = featuresOf(i);
  const input = { name: 'features', shape: features.shape, datatype: 'FP32' };
  const result =
    i % 2 === 0
      ? await http.postJson('/v2/models/mlp/infer', {
          id: `r${i}`,
          inputs: [{ ...input, data: Array.from(features.data) }],
        })
      : await http.request({
          method: 'POST',
          path: '/v2/models/mlp/infer',
          ...binaryBody(
            {
              id: `r${i}`,
              inputs: [{ ...input, parameters: { binary_data_size: features.data.byteLength } }],
            },
            [bytesOf(features.data)],
          ),
        });
  expect(result.status, result.text()).toBe(200);
  const response = result.json() as InferResponseJson;
  expect(response.id).toBe(`r${i}`);
  const output = response.outputs.find((o) => o.name === 'probabilities')!;
  expect(output.shape).toEqual([features.shape[0], 3]);
  return { features, got: output.data as number[] };
}

async function counter(http: HttpClient, name: string): Promise<number> {
  const text = (await http.get('/metrics')).text();
  const match = new RegExp(`^${name} (\\d+)$`, 'm').exec(text);
  if (!match) throw new Error(`/metrics has no ${name}`);
  return Number(match[1]);
}

describe('dynamic batching in the agent process (edgefleet_dynamic_batching)', () => {
  it('answers concurrent requests each with its own result, counts the joined runs, and refuses a rule for a model without a batch dimension', async () => {
    const socket = join(agents.root, 'b.sock');
    const config = join(agents.root, 'batching.json');
    await writeAgentConfig(config, {
      edgefleet_inference_workers: 1,
      // Every request goes to the worker, where waiting requests are joined (inline runs are one at a time).
      edgefleet_inline_max_run_micros: 0,
      edgefleet_dynamic_batching: [
        { model: 'mlp', maxBatchSize: 8 },
        { model: 'tiny', maxBatchSize: 4 },
      ],
      edgefleet_preload_models: [{ url: mlpPackage, name: 'mlp' }],
    });
    const agent = agents.spawn(['-a', socket, '-c', config]);
    await agent.waitFor(listening, 'that it listens');
    expect(
      agent.lines.some(
        (line) => line.model === 'mlp' && line.dimension === 'batch' && line.maxBatchSize === 8,
      ),
      'an info line saying mlp batches along "batch"',
    ).toBe(true);

    // 32 clients at once, each on its own connection, so that requests wait for the one worker together.
    const https = Array.from({ length: 32 }, () => {
      const http = new HttpClient({ kind: 'unix', socketPath: join(agents.root, 'b.rest.sock') });
      clients.push(http);
      return http;
    });
    // Joined runs need requests waiting together; rounds go on (a bounded number) until one has formed.
    let round = 0;
    for (; round < 20; round++) {
      const answers = await Promise.all(https.map((http, i) => infer(http, round * 32 + i)));
      for (const { features, got } of answers) {
        const expected = expectedOf(features);
        expect(got).toHaveLength(expected.length);
        got.forEach((value, k) => expect(Math.abs(value - expected[k]!)).toBeLessThanOrEqual(1e-5));
      }
      if ((await counter(https[0]!, 'edgefleet_inference_batched_requests_total')) > 0) break;
    }
    const requests = await counter(https[0]!, 'edgefleet_inference_batched_requests_total');
    const runs = await counter(https[0]!, 'edgefleet_inference_batched_runs_total');
    expect(requests).toBeGreaterThan(0);
    expect(runs).toBeGreaterThan(0);
    expect(requests).toBeGreaterThanOrEqual(2 * runs);
    expect(requests).toBeLessThanOrEqual((round + 1) * 32);

    // tiny's input and output are [1, 16]: no symbolic dimension to join along, so its load fails, naming it.
    const refused = await https[0]!.postJson('/v2/repository/models/tiny/load', {
      parameters: { url: agents.tiny },
    });
    expect(refused.status).toBe(400);
    const message = (refused.json() as { error: string }).error;
    expect(message).toMatch(/"tiny"/);
    expect(message).toMatch(/edgefleet_dynamic_batching/);
    expect(message).toMatch(/cannot be batched: .*dimension/);
    const grpc = agentClient(`unix://${socket}`);
    clients.push(grpc);
    const error = await callError(grpc.call('LoadModel', { url: agents.tiny, name: 'tiny' }));
    expect(error.code).toBe(9); // FAILED_PRECONDITION
    expect(error.details).toMatch(/"tiny".*cannot be batched: .*dimension/);
    // Nothing else is lost: tiny is not loaded, mlp still serves.
    const listed = await grpc.call('ListModels', {});
    expect(listed.models.map((m) => m.handle)).toEqual(['mlp']);
    const again = await infer(https[0]!, 0);
    expect(again.got).toHaveLength(expectedOf(again.features).length);
  }, 120_000);
});
