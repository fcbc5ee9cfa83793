import * as grpc from '@grpc/grpc-js';
import { AGENT_METHOD_NAMES, AgentDataType, createAgentCodec } from '@edgefleet/core';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { InferencePool } from '../../src/inference/index.js';
import { referenceBytes, scratch, startPool, startTestAgent, wireInputs, type TestAgent } from './helpers.js';

/** Codes a client mistake may get; INTERNAL or UNKNOWN would mean the agent failed on its own. */
const CLIENT_FAULT_CODES = new Set([
  grpc.status.INVALID_ARGUMENT,
  grpc.status.NOT_FOUND,
  grpc.status.ALREADY_EXISTS,
  grpc.status.FAILED_PRECONDITION,
  grpc.status.PERMISSION_DENIED,
  grpc.status.RESOURCE_EXHAUSTED,
  grpc.status.UNIMPLEMENTED,
]);

/** The loaded model: a name random input will not produce, so random UnLoadModel calls cannot remove it. */
const MODEL = 'fuzz-target-0f3c9a';

let pool: InferencePool;
let files: Awaited<ReturnType<typeof scratch>>;
let agent: TestAgent;
let raw: grpc.Client;
const codec = createAgentCodec();

beforeAll(async () => {
  files = await scratch('agent-grpc-fuzz-');
  pool = await startPool(1);
  agent = await startTestAgent({ pool, dir: files.root, maxMessageBytes: 1 << 20 });
  await agent.call('LoadModel', { url: await files.catalogue('tiny'), handle: MODEL });
  raw = new grpc.Client(agent.target, grpc.credentials.createInsecure());
});
afterAll(async () => {
  raw?.close();
  await agent?.close();
  await pool?.close();
  await files?.cleanup();
});

const identity = (b: Buffer): Buffer => b;

/** Sends bytes as they are; resolves with the status code (OK = 0) and details. */
function send(method: string, body: Buffer): Promise<{ code: number; details: string }> {
  return new Promise((resolve) => {
    raw.makeUnaryRequest(`/AWS.SageMaker.Edge.Agent/${method}`, identity, identity, body, (error) =>
      resolve(error ? { code: error.code, details: error.details } : { code: grpc.status.OK, details: '' }),
    );
  });
}

function expectClientFault(outcome: { code: number; details: string }): void {
  if (outcome.code === grpc.status.OK) return;
  expect(CLIENT_FAULT_CODES.has(outcome.code), `${grpc.status[outcome.code]}: ${outcome.details}`).toBe(true);
  expect(outcome.details.length).toBeGreaterThan(10);
}

async function expectCorrectPredict(): Promise<void> {
  const response = await agent.call('Predict', { handle: MODEL, tensors: wireInputs('tiny') });
  expect(Buffer.compare(response.tensors[0]!.byteData!, referenceBytes('tiny').get('y')!.bytes)).toBe(0);
}

const int32 = fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 });
const uint64 = fc.oneof(fc.nat({ max: 4096 }), fc.maxSafeNat());
const tensorName = fc.oneof(
  fc.constant(Buffer.from('x')),
  fc.uint8Array({ maxLength: 40 }).map((b) => Buffer.from(b)),
);
const metadata = fc.record({
  name: tensorName,
  dataType: fc.oneof(fc.constant(AgentDataType.FLOAT32), int32),
  shape: fc.oneof(fc.constant([1, 16]), fc.array(int32, { maxLength: 6 })),
});
const tensor = fc.record(
  {
    tensorMetadata: fc.option(metadata, { nil: null }),
    byteData: fc.oneof(fc.uint8Array({ maxLength: 96 }), fc.constant(new Uint8Array(64))),
    sharedMemoryHandle: fc.record({ size: uint64, offset: uint64, segmentId: uint64 }),
  },
  { requiredKeys: [] },
);
const predictRequest = fc.record(
  {
    handle: fc.oneof(fc.constant(MODEL), fc.string({ maxLength: 30 })),
    name: fc.oneof(fc.constant(MODEL), fc.string({ maxLength: 30 })),
    tensors: fc.array(tensor, { maxLength: 3 }),
  },
  { requiredKeys: [] },
);

describe('fuzzing the gRPC API', () => {
  it('answers thousands of random byte strings, sent to every method, with client-fault statuses', async () => {
    const methods = [...AGENT_METHOD_NAMES, 'NoSuchMethod'];
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...methods),
        fc.uint8Array({ maxLength: 300 }),
        async (method, bytes) => {
          expectClientFault(await send(method, Buffer.from(bytes)));
        },
      ),
      { numRuns: 2500 },
    );
    await expectCorrectPredict();
  });

  it('answers corrupted valid requests (bytes flipped, cut, appended) with client-fault statuses', async () => {
    const valid = codec.encode('PredictRequest', { handle: MODEL, tensors: wireInputs('tiny') });
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(fc.nat({ max: valid.length - 1 }), fc.integer({ min: 1, max: 255 })), {
          maxLength: 4,
        }),
        fc.nat({ max: valid.length }),
        fc.uint8Array({ maxLength: 20 }),
        async (flips, cut, tail) => {
          const body = Buffer.concat([valid.subarray(0, cut), tail]);
          for (const [at, xor] of flips) if (at < body.length) body[at]! ^= xor;
          expectClientFault(await send('Predict', body));
        },
      ),
      { numRuns: 1500 },
    );
    await expectCorrectPredict();
  });

  it('answers random field values encoded by the real codec (unknown enums, wild shapes and handles)', async () => {
    await fc.assert(
      fc.asyncProperty(predictRequest, async (request) => {
        expectClientFault(await send('Predict', codec.encode('PredictRequest', request)));
      }),
      { numRuns: 1500 },
    );
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom('LoadModel', 'UnLoadModel', 'DescribeModel'),
        fc.record({
          url: fc.string({ maxLength: 60 }),
          name: fc.string({ maxLength: 30 }),
          handle: fc.string({ maxLength: 30 }),
        }),
        async (method, request) => {
          expectClientFault(await send(method, codec.encode(`${method}Request`, request)));
        },
      ),
      { numRuns: 500 },
    );
    await expectCorrectPredict();
    expect(agent.registry.list().map((m) => m.name)).toEqual([MODEL]);
  });
});
