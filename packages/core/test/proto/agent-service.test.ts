import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  AGENT_METHOD_NAMES,
  AGENT_SERVICE_NAME,
  createAgentServiceDefinition,
} from '../../src/proto/agent-service.js';
import type { AgentClient, AgentServiceHandlers } from '../../src/proto/agent-service.js';
import { AgentCaptureDataStatus, AgentDataType } from '../../src/proto/agent-messages.js';
import type { AgentMethodName } from '../../src/proto/agent-messages.js';

const definition = createAgentServiceDefinition();
const metadata = { name: Buffer.from([0x69, 0x6e, 0xff]), dataType: AgentDataType.FLOAT32, shape: [1, 4] };
const model = {
  url: '/models/m',
  handle: 'm',
  inputTensorMetadatas: [metadata],
  outputTensorMetadatas: [metadata],
};

/** A trivial implementation: echoes what it was sent, so the test sees both directions of every method. */
const calls: AgentMethodName[] = [];
let lastCapture: unknown;
const handlers: AgentServiceHandlers = {
  Predict(call, callback) {
    calls.push('Predict');
    // Sends the request's tensors back doubled, so byte_data went through decode and encode.
    const tensors = call.request.tensors.map((t) => ({
      tensorMetadata: t.tensorMetadata,
      byteData: Buffer.concat([t.byteData ?? Buffer.alloc(0), t.byteData ?? Buffer.alloc(0)]),
    }));
    callback(null, { tensors });
  },
  LoadModel(call, callback) {
    calls.push('LoadModel');
    if (call.request.handle === 'loaded') {
      callback({ code: grpc.status.ALREADY_EXISTS, details: 'model "loaded" is already loaded' });
      return;
    }
    callback(null, { model: { ...model, url: call.request.url, handle: call.request.handle } });
  },
  UnLoadModel(call, callback) {
    calls.push('UnLoadModel');
    callback(null, {});
  },
  ListModels(_call, callback) {
    calls.push('ListModels');
    callback(null, { models: [model, { ...model, handle: 'n' }] });
  },
  DescribeModel(call, callback) {
    calls.push('DescribeModel');
    callback(null, { model: { ...model, handle: call.request.handle || call.request.name } });
  },
  CaptureData(call, callback) {
    calls.push('CaptureData');
    lastCapture = call.request;
    callback(null, {});
  },
  GetCaptureDataStatus(call, callback) {
    calls.push('GetCaptureDataStatus');
    callback(null, {
      status:
        call.request.captureId === 'c1' ? AgentCaptureDataStatus.SUCCESS : AgentCaptureDataStatus.NOT_FOUND,
    });
  },
};

let directory: string;
let server: grpc.Server;
let target: string;
let client: AgentClient;

beforeAll(async () => {
  directory = await mkdtemp(join(tmpdir(), 'ef-agent-grpc-'));
  target = `unix://${join(directory, 'agent.sock')}`;
  server = new grpc.Server();
  server.addService(definition, handlers);
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(target, grpc.ServerCredentials.createInsecure(), (error) =>
      error ? reject(error) : resolve(),
    ),
  );
  const Client = grpc.makeGenericClientConstructor(definition, AGENT_SERVICE_NAME);
  client = new Client(target, grpc.credentials.createInsecure()) as unknown as AgentClient;
});

afterAll(async () => {
  client?.close();
  await new Promise<void>((resolve) => (server ? server.tryShutdown(() => resolve()) : resolve()));
  await rm(directory, { recursive: true, force: true });
});

/** Calls a method and resolves with its response, or rejects with the grpc ServiceError. */
function call<M extends AgentMethodName>(
  method: M,
  request: Parameters<AgentClient[M]>[0],
): Promise<unknown> {
  return new Promise((resolve, reject) => {
    (client[method] as (r: unknown, cb: grpc.requestCallback<unknown>) => void)(request, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

/** Sends raw bytes to a method, bypassing the codec, and returns the raw response bytes. */
function callRaw(method: AgentMethodName, body: Buffer): Promise<Buffer> {
  const raw = new grpc.Client(target, grpc.credentials.createInsecure());
  const identity = (b: Buffer): Buffer => b;
  return new Promise<Buffer>((resolve, reject) => {
    raw.makeUnaryRequest(`/${AGENT_SERVICE_NAME}/${method}`, identity, identity, body, (error, response) =>
      error ? reject(error) : resolve(response!),
    );
  }).finally(() => raw.close());
}

describe('AWS.SageMaker.Edge.Agent over a Unix socket', () => {
  it('has the seven method paths, UnLoadModel with a capital L', () => {
    expect(Object.values(definition).map((m) => m.path)).toEqual(
      AGENT_METHOD_NAMES.map((name) => `/AWS.SageMaker.Edge.Agent/${name}`),
    );
    expect(definition.UnLoadModel.path).toBe('/AWS.SageMaker.Edge.Agent/UnLoadModel');
  });

  it('serves every method through the definition, request and response both encoded and decoded', async () => {
    calls.length = 0;
    const data = Buffer.from(new Float32Array([1, 2, 3, 4]).buffer);
    const predicted = (await call('Predict', {
      handle: 'm',
      tensors: [{ tensorMetadata: metadata, byteData: data }],
    })) as { tensors: { tensorMetadata: unknown; byteData: Buffer; data: string }[] };
    expect(predicted.tensors).toEqual([
      { tensorMetadata: metadata, byteData: Buffer.concat([data, data]), data: 'byteData' },
    ]);

    expect(await call('LoadModel', { url: '../comp/model', handle: 'm2' })).toEqual({
      model: { ...model, name: '', url: '../comp/model', handle: 'm2' },
    });
    expect(await call('UnLoadModel', { handle: 'm2' })).toEqual({});
    expect(await call('ListModels', {})).toEqual({
      models: [
        { ...model, name: '' },
        { ...model, name: '', handle: 'n' },
      ],
    });
    expect(await call('DescribeModel', { name: 'legacy-name' })).toEqual({
      model: { ...model, name: '', handle: 'legacy-name' },
    });
    expect(
      await call('CaptureData', {
        captureId: 'c1',
        inferenceTimestamp: { seconds: 1_700_000_000, nanos: 5 },
      }),
    ).toEqual({});
    expect(lastCapture).toMatchObject({
      captureId: 'c1',
      inferenceTimestamp: { seconds: 1_700_000_000, nanos: 5 },
    });
    expect(await call('GetCaptureDataStatus', { captureId: 'c1' })).toEqual({
      status: AgentCaptureDataStatus.SUCCESS,
    });
    expect(calls).toEqual([...AGENT_METHOD_NAMES]);
  });

  it('passes a handler status code through to the client', async () => {
    await expect(call('LoadModel', { url: '/x', handle: 'loaded' })).rejects.toMatchObject({
      code: grpc.status.ALREADY_EXISTS,
      details: 'model "loaded" is already loaded',
    });
  });

  it('answers malformed request bytes with INTERNAL, without calling the handler, and keeps serving', async () => {
    calls.length = 0;
    // Field 2 (tensors) announces 16 bytes that never come.
    await expect(callRaw('Predict', Buffer.from([0x12, 0x10, 0x01]))).rejects.toMatchObject({
      code: grpc.status.INTERNAL,
      details: expect.stringMatching(/deserializ/i) as unknown,
    });
    // Wire type 7 does not exist.
    await expect(callRaw('ListModels', Buffer.from([0x0f]))).rejects.toMatchObject({
      code: grpc.status.INTERNAL,
    });
    // A string field that is not UTF-8.
    await expect(
      callRaw('GetCaptureDataStatus', Buffer.from([0x0a, 0x02, 0xff, 0xfe])),
    ).rejects.toMatchObject({
      code: grpc.status.INTERNAL,
    });
    expect(calls).toEqual([]);

    expect(await call('GetCaptureDataStatus', { captureId: 'other' })).toEqual({
      status: AgentCaptureDataStatus.NOT_FOUND,
    });
    // The well-formed raw path works too, so the failures above came from the bytes, not the raw client.
    const response = await callRaw('GetCaptureDataStatus', Buffer.from([0x0a, 0x02, 0x63, 0x31]));
    expect(response).toEqual(Buffer.from([0x08, 0x01]));
  });
});
