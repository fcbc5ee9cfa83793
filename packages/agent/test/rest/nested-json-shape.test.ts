import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { MAX_TENSOR_ELEMENTS } from '@edgefleet/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HttpClient, scratch, startAgent, targetOf } from './helpers.js';

// A few bytes of JSON declaring a huge shape must not size an allocation (audit s8 finding 7): the nested arrays
// are checked against the shape first, and shapes over MAX_TENSOR_ELEMENTS are refused as gRPC refuses them.

let files: Awaited<ReturnType<typeof scratch>>;
let agent: Awaited<ReturnType<typeof startAgent>>;
let client: HttpClient;

beforeAll(async () => {
  files = await scratch('agent-rest-nested-shape-');
  agent = await startAgent({ socketPath: join(files.root, 'rest.sock') });
  client = new HttpClient(targetOf(agent.server.addresses[0]!));
  await agent.registry.load({ name: 'tiny', url: await files.catalogue('tiny') });
});

afterAll(async () => {
  client?.close();
  await agent?.stop();
  await files?.cleanup();
});

/** The most virtual memory this process has ever mapped (Linux): an allocation of GiBs shows here even untouched. */
function peakVirtualBytes(): number {
  const match = /VmPeak:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
  return Number(match![1]) * 1024;
}

function infer(shape: number[], datatype: string, data: unknown) {
  return client.postJson('/v2/models/tiny/infer', { inputs: [{ name: 'x', shape, datatype, data }] });
}

describe('nested JSON data with a declared shape far larger than the data', () => {
  it('answers 400 naming the mismatch, without allocating the declared tensor', async () => {
    const before = peakVirtualBytes();
    // 2^31 FP64 elements: 16 GiB if allocated from the declared shape (what the agent did before).
    const result = await infer([268435456, 8], 'FP64', [[1]]);
    expect(result.status).toBe(400);
    expect((result.json() as { error: string }).error).toMatch(
      /data is an array of 1 where the shape \[268435456, 8\] puts an array of 268435456 at depth 0/,
    );
    expect(peakVirtualBytes() - before).toBeLessThan(1024 ** 3);
  });

  it('answers 400 (not a 500 from a failed allocation) for a shape beyond what a typed array can hold', async () => {
    const result = await infer([2 ** 20, 2 ** 19], 'FP32', [[1]]);
    expect(result.status).toBe(400);
    expect((result.json() as { error: string }).error).toMatch(/puts an array of 1048576 at depth 0/);
  });

  it('refuses a shape of more than MAX_TENSOR_ELEMENTS elements, as gRPC does', async () => {
    const result = await infer([2 ** 21, 2 ** 20], 'FP32', [[1]]);
    expect(result.status).toBe(400);
    expect((result.json() as { error: string }).error).toContain(
      `${2 ** 41} elements; at most ${MAX_TENSOR_ELEMENTS} are accepted`,
    );
  });

  it('still serves nested data that follows the shape', async () => {
    const row = Array.from({ length: 16 }, (_, i) => i);
    const result = await infer([1, 16], 'FP32', [row]);
    expect(result.status).toBe(200);
    const outputs = (result.json() as { outputs: Array<{ data: number[] }> }).outputs;
    expect(outputs[0]!.data).toEqual(row.map((v) => v * 2 + 1));
  });
});
