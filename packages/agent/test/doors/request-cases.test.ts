import { join } from 'node:path';
import { DATA_TYPES, type TestModelTensors } from '@edgefleet/core';
import type { ServiceError } from '@grpc/grpc-js';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startGrpcServer, type RunningGrpcServer } from '../../src/grpc/index.js';
import { DEFAULT_ORT_SESSION_CONFIG, InferencePool } from '../../src/inference/index.js';
import { AgentMetrics } from '../../src/metrics/index.js';
import { GRPC_STATUS, HTTP_STATUS, ModelRegistry } from '../../src/models/index.js';
import { startRestServer, type RestServer } from '../../src/rest/index.js';
import { callMethod, newClient } from '../grpc/helpers.js';
import { HttpClient, binaryBody, kserveName, splitBinaryResponse } from '../rest/helpers.js';
import { bytesOf, scratch } from '../support/model-packages.js';
import { CASE_MODELS, REQUEST_CASES, type RequestCase } from '../support/request-cases.js';

// The shared table of request cases, run against both front doors over one registry: gRPC Predict on a Unix
// socket and KServe v2 infer (binary tensor extension, so both send the same bytes) on another.
let files: Awaited<ReturnType<typeof scratch>>;
let pool: InferencePool;
let registry: ModelRegistry;
let grpcServer: RunningGrpcServer;
let grpcClient: ReturnType<typeof newClient>;
let rest: RestServer;
let http: HttpClient;

beforeAll(async () => {
  files = await scratch('agent-doors-');
  pool = await InferencePool.start({ workers: 1, session: DEFAULT_ORT_SESSION_CONFIG });
  registry = new ModelRegistry({ pool, trust: null, cwd: files.root });
  for (const model of CASE_MODELS) await registry.load({ url: await files.catalogue(model), name: model });
  grpcServer = await startGrpcServer({
    registry,
    sharedMemory: null,
    logger: pino({ level: 'silent' }),
    socketPath: join(files.root, 'grpc.sock'),
    maxMessageBytes: 16 * 1024 * 1024,
  });
  grpcClient = newClient(grpcServer.address);
  const restSocket = join(files.root, 'rest.sock');
  rest = await startRestServer({
    registry,
    metrics: new AgentMetrics({ defaultMetrics: false }),
    logger: pino({ level: 'silent' }),
    unixSocketPath: restSocket,
  });
  http = new HttpClient({ kind: 'unix', socketPath: restSocket });
});
afterAll(async () => {
  http?.close();
  await rest?.close();
  grpcClient?.close();
  await grpcServer?.close(1000);
  await registry?.close();
  await pool?.close();
  await files?.cleanup();
});

/** What a door answered: output bytes by name, or its status (gRPC or HTTP) and message. */
type Answer = { outputs: Map<string, Buffer> } | { status: number; message: string };

async function viaGrpc(testCase: RequestCase): Promise<Answer> {
  try {
    const response = await callMethod(grpcClient, 'Predict', {
      handle: testCase.model,
      tensors: testCase.inputs.map((t) => ({
        tensorMetadata: { name: Buffer.from(t.name), dataType: DATA_TYPES[t.dataType].wire, shape: t.shape },
        byteData: t.data,
      })),
    });
    return {
      outputs: new Map(
        response.tensors.map((t) => [
          Buffer.from(t.tensorMetadata!.name).toString(),
          Buffer.from(t.byteData!),
        ]),
      ),
    };
  } catch (error) {
    const { code, details } = error as ServiceError;
    return { status: code, message: details };
  }
}

async function viaRest(testCase: RequestCase): Promise<Answer> {
  const request = binaryBody(
    {
      inputs: testCase.inputs.map((t) => ({
        name: t.name,
        shape: t.shape,
        datatype: kserveName(t.dataType),
        parameters: { binary_data_size: t.data.byteLength },
      })),
      parameters: { binary_data_output: true },
    },
    testCase.inputs.map((t) => t.data),
  );
  const result = await http.request({
    method: 'POST',
    path: `/v2/models/${testCase.model}/infer`,
    ...request,
  });
  if (result.status !== 200) {
    return { status: result.status, message: (result.json() as { error: string }).error };
  }
  const { json, tail } = splitBinaryResponse(result);
  const outputs = new Map<string, Buffer>();
  let offset = 0;
  for (const output of json.outputs) {
    const size = output.parameters!.binary_data_size!;
    outputs.set(output.name, tail.subarray(offset, offset + size));
    offset += size;
  }
  return { outputs };
}

/** The answer holds exactly the reference's outputs: the same bytes, or float32 values within `tolerance`. */
function expectOutputs(answer: Answer, reference: TestModelTensors, tolerance: number): void {
  expect(answer).toHaveProperty('outputs');
  const outputs = (answer as { outputs: Map<string, Buffer> }).outputs;
  expect([...outputs.keys()].sort()).toEqual(Object.keys(reference).sort());
  for (const [name, tensor] of Object.entries(reference)) {
    const bytes = outputs.get(name)!;
    if (tolerance === 0 || tensor.dataType !== 'FLOAT32') {
      expect([name, bytes]).toEqual([name, bytesOf(tensor.data)]);
      continue;
    }
    const actual = new Float32Array(
      bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength),
    );
    const expected = tensor.data as Float32Array;
    expect(actual.length).toBe(expected.length);
    expected.forEach((value, i) => expect(Math.abs(actual[i]! - value)).toBeLessThanOrEqual(tolerance));
  }
}

const doors = [
  { door: 'gRPC Predict', send: viaGrpc, status: GRPC_STATUS },
  { door: 'REST infer', send: viaRest, status: HTTP_STATUS },
] as const;

describe.each(doors)('$door', ({ send, status }) => {
  it.each(REQUEST_CASES.map((c) => [c.name, c] as const))('%s', async (_, testCase) => {
    const answer = await send(testCase);
    if ('outputs' in testCase.expect) {
      expectOutputs(answer, testCase.expect.outputs, testCase.expect.tolerance);
    } else {
      expect(answer).toMatchObject({ status: status[testCase.expect.code] });
      expect((answer as { message: string }).message).toMatch(testCase.expect.message);
    }
  });
});
