// Predict's input tensors are views into the gRPC request message. A message with memory of its own (4 KiB or
// more) is handed to the worker whole, without a copy; a small one lives in Node's shared Buffer pool and must be
// copied, or transferring it would detach other requests' bytes.
import { TEST_MODELS } from '@edgefleet/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { InferencePool } from '../../src/inference/index.js';
import { referenceBytes, scratch, startPool, startTestAgent, wireInputs, type TestAgent } from './helpers.js';

const first = <T>(map: Map<string, T>): T => [...map.values()][0]!;

let pool: InferencePool;
let files: Awaited<ReturnType<typeof scratch>>;
let agent: TestAgent;

beforeAll(async () => {
  files = await scratch('agent-grpc-memory-');
  pool = await startPool(1);
  agent = await startTestAgent({ pool, dir: files.root });
  for (const model of ['tiny', 'image-identity', 'mlp'] as const) {
    await agent.call('LoadModel', { url: await files.catalogue(model), handle: model });
  }
});
afterAll(async () => {
  await agent?.close();
  await pool?.close();
  await files?.cleanup();
});

describe('Predict input memory', () => {
  it('transfers a large request message to the worker instead of copying its tensor, and answers correctly', async () => {
    const inputs = TEST_MODELS['image-identity'].sampleInputs();
    const bytes = inputs.image!.data.byteLength;
    for (let i = 0; i < 3; i++) {
      const before = pool.stats().inputBytes;
      const response = await agent.call('Predict', {
        handle: 'image-identity',
        tensors: wireInputs('image-identity', inputs),
      });
      const after = pool.stats().inputBytes;
      expect(
        response.tensors?.[0]?.byteData?.equals(first(referenceBytes('image-identity', inputs)).bytes),
      ).toBe(true);
      expect([after.copies - before.copies, after.transferred - before.transferred]).toEqual([0, bytes]);
    }
  });

  it('answers many large messages sent at once on one connection exactly as it answers each alone', async () => {
    // 16 KiB and more a message: each arrives in several HTTP/2 frames, and with 12 in flight several messages
    // share the socket's reads; each message's own memory goes to a worker, none may take another's bytes along.
    const cases = Array.from({ length: 12 }, (_, i) => {
      const rows = 1024 + 64 * i;
      const features = Float32Array.from({ length: rows * 4 }, (_, j) => ((i * 7 + j) % 60) / 10);
      return { features: { dataType: 'FLOAT32' as const, shape: [rows, 4], data: features } };
    });
    const predict = (inputs: (typeof cases)[number]) =>
      agent.call('Predict', { handle: 'mlp', tensors: wireInputs('mlp', inputs) });
    const alone: (Buffer | undefined)[] = [];
    for (const inputs of cases) alone.push((await predict(inputs)).tensors?.[0]?.byteData);
    const before = pool.stats().inputBytes;
    const together = await Promise.all(cases.map(predict));
    const after = pool.stats().inputBytes;
    together.forEach((response, i) => {
      const expected = alone[i];
      expect(expected?.byteLength).toBe(cases[i]!.features.shape[0]! * 3 * 4);
      expect(response.tensors?.[0]?.byteData?.equals(expected!)).toBe(true);
    });
    expect(after.copies - before.copies).toBe(0);
  });

  it('copies the tensors of a small message (Node shares its memory) and leaves concurrent requests intact', async () => {
    const cases = Array.from({ length: 24 }, (_, i) => {
      const x = Float32Array.from({ length: 16 }, (_, j) => i * 100 + j);
      return { inputs: { x: { dataType: 'FLOAT32' as const, shape: [1, 16], data: x } } };
    });
    const before = pool.stats().inputBytes;
    const responses = await Promise.all(
      cases.map(({ inputs }) =>
        agent.call('Predict', { handle: 'tiny', tensors: wireInputs('tiny', inputs) }),
      ),
    );
    const after = pool.stats().inputBytes;
    responses.forEach((response, i) => {
      expect(
        response.tensors?.[0]?.byteData?.equals(first(referenceBytes('tiny', cases[i]!.inputs)).bytes),
      ).toBe(true);
    });
    expect(after.copies - before.copies).toBe(cases.length);
    expect(after.transferred - before.transferred).toBe(0);
  });
});
