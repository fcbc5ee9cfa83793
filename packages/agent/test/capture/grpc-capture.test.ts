import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  AgentCaptureDataStatus,
  AgentDataType,
  type CaptureDataRequest,
  type MessageInit,
} from '@edgefleet/core';
import { status as grpcStatus, type ServiceError } from '@grpc/grpc-js';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startCaptureService, type RunningCapture } from '../../src/capture/index.js';
import { startGrpcServer, type RunningGrpcServer } from '../../src/grpc/index.js';
import { DEFAULT_ORT_SESSION_CONFIG, InferencePool } from '../../src/inference/index.js';
import { ModelRegistry } from '../../src/models/index.js';
import {
  agentClient,
  captureRequest,
  diskRecords,
  floatTensor,
  modelPackage,
  testSettings,
} from './helpers.js';
import { callError } from '../grpc/helpers.js';

// CaptureData and GetCaptureDataStatus through the gRPC front door, over a real Unix socket.
let root: string;
let pool: InferencePool;
let registry: ModelRegistry;
let capture: RunningCapture;
let server: RunningGrpcServer;
let client: ReturnType<typeof agentClient>;
const settings = () => testSettings(root, { bufferSize: 4, batchSize: 3, pushPeriodSeconds: 0.2 });

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'edgefleet-grpc-capture-'));
  pool = await InferencePool.start({ workers: 1, session: DEFAULT_ORT_SESSION_CONFIG });
  registry = new ModelRegistry({ pool, trust: null, cwd: root });
  await registry.load({ url: await modelPackage(root, 'tiny'), name: 'tiny' });
  capture = await startCaptureService({ settings: settings(), models: registry });
  server = await startGrpcServer({
    registry,
    sharedMemory: null,
    logger: pino({ level: 'silent' }),
    socketPath: join(root, 'agent.sock'),
    maxMessageBytes: 16 * 1024 * 1024,
    capture: capture.service,
  });
  client = agentClient(server.address);
});
afterAll(async () => {
  client?.close();
  await server?.close(1000);
  await capture?.close();
  await registry?.close();
  await pool?.close();
  await rm(root, { recursive: true, force: true });
});

const send = (request: CaptureDataRequest) =>
  client.call('CaptureData', request as MessageInit<CaptureDataRequest>);
const statusOf = async (captureId: string) =>
  (await client.call('GetCaptureDataStatus', { captureId })).status;

describe('gRPC CaptureData / GetCaptureDataStatus', () => {
  it('answers CaptureData at once, then reports IN_PROGRESS and SUCCESS', async () => {
    expect(await send(captureRequest('grpc-1'))).toEqual({});
    expect(await statusOf('grpc-1')).toBe(AgentCaptureDataStatus.IN_PROGRESS);
    const until = Date.now() + 10_000;
    while ((await statusOf('grpc-1')) !== AgentCaptureDataStatus.SUCCESS && Date.now() < until) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    expect(await statusOf('grpc-1')).toBe(AgentCaptureDataStatus.SUCCESS);
    const records = await diskRecords(settings().diskPath);
    expect(records.map((r) => r.record.eventMetadata.eventId)).toContain('grpc-1');
  });

  it('takes the deprecated model_name of older clients', async () => {
    expect(await send(captureRequest('grpc-old', { modelHandle: '', modelName: 'tiny' }))).toEqual({});
  });

  it('answers each refusal with the status code the spec names and a details string', async () => {
    const cases: [CaptureDataRequest, number, RegExp][] = [
      [captureRequest('grpc-1'), grpcStatus.ALREADY_EXISTS, /was used already/],
      [
        captureRequest('grpc-future', {
          inferenceTimestamp: { seconds: Math.floor(Date.now() / 1000) + 3600, nanos: 0 },
        }),
        grpcStatus.OUT_OF_RANGE,
        /in the future/,
      ],
      [
        captureRequest('grpc-nomodel', { modelHandle: 'resnet' }),
        grpcStatus.NOT_FOUND,
        /no model named "resnet"/,
      ],
      [captureRequest('', {}), grpcStatus.INVALID_ARGUMENT, /capture_id is empty/],
      [
        captureRequest('grpc-badtensor', {
          inputTensors: [
            {
              ...floatTensor('x', [4]),
              tensorMetadata: { name: Buffer.from('x'), dataType: AgentDataType.FLOAT32, shape: [5] },
            },
          ],
        }),
        grpcStatus.INVALID_ARGUMENT,
        /needs 20/,
      ],
    ];
    for (const [request, code, details] of cases) {
      const error = await callError(send(request));
      expect([request.captureId, error.code]).toEqual([request.captureId, code]);
      expect(error.details).toMatch(details);
    }
    const unknown = await callError(statusOf('never-sent'));
    expect(unknown.code).toBe(grpcStatus.NOT_FOUND);
    expect(unknown.details).toMatch(/no capture with capture_id "never-sent"/);
  });

  it('RESOURCE_EXHAUSTED when the buffer is full', async () => {
    await capture.service.flush();
    const results = await Promise.allSettled(
      Array.from({ length: 8 }, (_, i) => send(captureRequest(`grpc-burst-${i}`))),
    );
    const codes = results.map((r) => (r.status === 'fulfilled' ? 0 : (r.reason as ServiceError).code));
    expect(codes).toContain(grpcStatus.RESOURCE_EXHAUSTED);
    expect(codes.filter((c) => c === 0).length).toBeGreaterThanOrEqual(4);
    expect(codes.every((c) => c === 0 || c === grpcStatus.RESOURCE_EXHAUSTED)).toBe(true);
  });
});
