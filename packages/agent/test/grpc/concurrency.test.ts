import * as grpc from '@grpc/grpc-js';
import { TEST_MODELS, slowModelInput, slowModelReference, type TestModelTensors } from '@edgefleet/core';
import { describe, expect, it } from 'vitest';
import type { InferencePool } from '../../src/inference/index.js';
import {
  bytesOf,
  referenceBytes,
  useAgentTestBed,
  wireInputs,
  type Scratch,
  type TestAgent,
} from './helpers.js';

let pool: InferencePool;
let files: Scratch;
let agent: TestAgent;
let tinyPackage: string;

useAgentTestBed({
  prefix: 'agent-grpc-concurrency-',
  workers: 2,
  agent: () => ({ registry: { instancesPerModel: 2 } }),
  async ready(bed) {
    ({ files, pool, agent } = bed);
    tinyPackage = await files.catalogue('tiny');
    await agent.call('LoadModel', { url: tinyPackage, handle: 'tiny' });
  },
});

/** tiny's sample input shifted by `k`, so that every request has its own answer. */
function tinyInputs(k: number): TestModelTensors {
  const x = TEST_MODELS.tiny.sampleInputs().x!;
  return { x: { ...x, data: (x.data as Float32Array).map((v) => v + k) } };
}

describe('concurrent calls', () => {
  it('answers 8 concurrent predicts, each with its own correct result', async () => {
    const results = await Promise.all(
      Array.from({ length: 8 }, (_, k) =>
        agent
          .call('Predict', { handle: 'tiny', tensors: wireInputs('tiny', tinyInputs(k)) })
          .then((r) => ({ k, r })),
      ),
    );
    for (const { k, r } of results) {
      expect(
        Buffer.compare(r.tensors[0]!.byteData!, referenceBytes('tiny', tinyInputs(k)).get('y')!.bytes),
      ).toBe(0);
    }
  });

  it('runs predicts side by side on the model’s instances (the adapter does not serialise them)', async () => {
    await agent.call('LoadModel', { url: await files.catalogue('slow'), handle: 'slow' });
    const input = slowModelInput();
    const request = { handle: 'slow', tensors: wireInputs('slow', { x: input }) };
    const calls = [agent.call('Predict', request), agent.call('Predict', request)];
    let mostRunning = 0;
    let settled = false;
    void Promise.allSettled(calls).then(() => (settled = true));
    while (!settled) {
      const slow = pool.stats().models.find((m) => m.key.startsWith('slow#'));
      mostRunning = Math.max(mostRunning, slow?.running ?? 0);
      await new Promise((resolve) => setImmediate(resolve));
    }
    const expected = Buffer.from(bytesOf(slowModelReference(input).data));
    for (const response of await Promise.all(calls)) {
      expect(Buffer.compare(response.tensors[0]!.byteData!, expected)).toBe(0);
    }
    expect(mostRunning).toBe(2);
    await agent.call('UnLoadModel', { handle: 'slow' });
  });

  it('predicts racing an unload get their result or NOT_FOUND, never anything else; the agent keeps serving', async () => {
    await agent.call('LoadModel', { url: tinyPackage, handle: 'racy' });
    const expected = referenceBytes('tiny').get('y')!.bytes;
    const outcomes: Array<'ok' | 'not-found'> = [];
    const predict = () =>
      agent.call('Predict', { handle: 'racy', tensors: wireInputs('tiny') }).then(
        (response) => {
          expect(Buffer.compare(response.tensors[0]!.byteData!, expected)).toBe(0);
          outcomes.push('ok');
        },
        (error: grpc.ServiceError) => {
          expect(error.code, error.details).toBe(grpc.status.NOT_FOUND);
          expect(error.details).toMatch(/"racy"/);
          outcomes.push('not-found');
        },
      );
    const before = Array.from({ length: 24 }, predict);
    const unload = agent.call('UnLoadModel', { handle: 'racy' });
    const after = Array.from({ length: 24 }, predict);
    await Promise.all([...before, unload, ...after]);
    expect(outcomes).toHaveLength(48);
    expect(outcomes).toContain('not-found');
    await agent.call('LoadModel', { url: tinyPackage, handle: 'racy' });
    await predict();
    expect(outcomes.at(-1)).toBe('ok');
    await agent.call('UnLoadModel', { handle: 'racy' });
  });

  it('concurrent loads of one name: one loads, the others get ALREADY_EXISTS', async () => {
    const attempts = await Promise.allSettled(
      Array.from({ length: 4 }, () => agent.call('LoadModel', { url: tinyPackage, handle: 'once' })),
    );
    expect(attempts.filter((a) => a.status === 'fulfilled')).toHaveLength(1);
    for (const attempt of attempts) {
      if (attempt.status === 'rejected')
        expect((attempt.reason as grpc.ServiceError).code).toBe(grpc.status.ALREADY_EXISTS);
    }
    await agent.call('UnLoadModel', { handle: 'once' });
  });
});
