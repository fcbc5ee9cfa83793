import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  AgentDataType,
  AgentEncoding,
  type CaptureDataRequest,
  type MessageInit,
  type PredictRequest,
} from '@edgefleet/core';
import { status as grpcStatus } from '@grpc/grpc-js';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  startCaptureService,
  type CaptureSettingsInput,
  type RunningCapture,
} from '../../src/capture/index.js';
import { startGrpcServer, type RunningGrpcServer } from '../../src/grpc/index.js';
import { DEFAULT_ORT_SESSION_CONFIG, InferencePool } from '../../src/inference/index.js';
import { ModelRegistry } from '../../src/models/index.js';
import { SharedMemoryReader, loadSysvShmAddon } from '../../src/shm/index.js';
import {
  agentClient,
  captureRequest,
  diskRecords,
  modelPackage,
  readDataRef,
  testSettings,
} from './helpers.js';
import { callError } from '../grpc/helpers.js';
import { makeSegment, writeSegment } from '../support/segments.js';

// CaptureData with data in shared memory, through the gRPC door (whose decoder, the one Predict uses, reads the
// segments) over a real Unix socket.
const addon = loadSysvShmAddon();
const segments: number[] = [];
let root: string;
let pool: InferencePool;
let registry: ModelRegistry;

/** A capture service behind a gRPC server; `sharedMemory` null: an agent without the addon. */
async function startAgent(
  name: string,
  sharedMemory: SharedMemoryReader | null,
  batchSize = 1,
  overrides: Partial<CaptureSettingsInput> = {},
) {
  const settings = testSettings(join(root, name), { batchSize, base64EmbedLimit: 16, ...overrides });
  const capture: RunningCapture = await startCaptureService({ settings, models: registry });
  const server: RunningGrpcServer = await startGrpcServer({
    registry,
    sharedMemory,
    logger: pino({ level: 'silent' }),
    socketPath: join(root, `${name}.sock`),
    maxMessageBytes: 16 * 1024 * 1024,
    capture: capture.service,
  });
  const client = agentClient(server.address);
  return {
    settings,
    capture: capture.service,
    send: (request: CaptureDataRequest) =>
      client.call('CaptureData', request as MessageInit<CaptureDataRequest>),
    predict: (request: MessageInit<PredictRequest>) => client.call('Predict', request),
    async close() {
      client.close();
      await server.close(1000);
      await capture.close();
      sharedMemory?.close();
    },
  };
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'edgefleet-capture-shm-'));
  pool = await InferencePool.start({ workers: 1, session: DEFAULT_ORT_SESSION_CONFIG });
  registry = new ModelRegistry({ pool, trust: null, cwd: root });
  await registry.load({ url: await modelPackage(root, 'tiny'), name: 'camera' });
});
afterAll(async () => {
  for (const shmid of segments) addon.remove(shmid);
  await registry?.close();
  await pool?.close();
  await rm(root, { recursive: true, force: true });
});

/** What a SageMaker Edge client does: create a segment, write the bytes, detach, chmod 0400. */
function clientSegment(bytes: Uint8Array, offset = 0): number {
  return makeSegment(addon, segments, bytes, { offset, mode: 0o400 });
}

describe('capture from System V shared memory', () => {
  it('reads tensors (size derived from the shape) and auxiliary data (size given) out of segments, copying them', async () => {
    const agent = await startAgent('read', new SharedMemoryReader({ addon }));
    const tensor = new Float32Array(64).map((_, i) => i / 2);
    const tensorSegment = clientSegment(new Uint8Array(tensor.buffer), 128);
    const jpeg = Buffer.alloc(3000, 0xd8);
    const auxSegment = clientSegment(jpeg);
    await agent.send(
      captureRequest('from-shm', {
        modelHandle: 'camera',
        inputTensors: [
          {
            tensorMetadata: { name: Buffer.from('pixels'), dataType: AgentDataType.FLOAT32, shape: [1, 64] },
            sharedMemoryHandle: { size: 0, offset: 128, segmentId: tensorSegment },
            data: 'sharedMemoryHandle',
          },
        ],
        inputs: [
          {
            name: 'jpg',
            encoding: AgentEncoding.NONE,
            sharedMemoryHandle: { size: 3000, offset: 0, segmentId: auxSegment },
            data: 'sharedMemoryHandle',
          },
        ],
      }),
    );
    // The client may remove its segments as soon as CaptureData returns.
    addon.remove(tensorSegment);
    addon.remove(auxSegment);
    segments.length = 0;
    await agent.capture.flush();
    const { record } = (await diskRecords(agent.settings.diskPath))[0]!;
    expect(
      (await readDataRef(record.deviceFleetInputs[0]['data-ref'])).equals(Buffer.from(tensor.buffer)),
    ).toBe(true);
    expect((await readDataRef(record.deviceFleetAuxiliaryInputs[0]['data-ref'])).equals(jpeg)).toBe(true);
    expect(record.deviceFleetInputs[0].observedContentType).toBe('Tensor[FLOAT32; 1, 64]');
    await agent.close();
  });

  it('keeps the bytes sent though the client overwrites its segments as soon as CaptureData returns (a copy, not a view)', async () => {
    const agent = await startAgent('overwritten', new SharedMemoryReader({ addon }), 10, {
      pushPeriodSeconds: 3600,
    });
    const tensor = new Float32Array(64).map((_, i) => i + 0.25);
    const jpeg = Buffer.alloc(3000, 0xd8);
    // 0600: the client keeps writing its own segments, to reuse them for its next frame.
    const tensorSegment = makeSegment(addon, segments, new Uint8Array(tensor.buffer), { mode: 0o600 });
    const auxSegment = makeSegment(addon, segments, jpeg, { mode: 0o600 });
    await agent.send(
      captureRequest('reused-segments', {
        modelHandle: 'camera',
        inputTensors: [
          {
            tensorMetadata: { name: Buffer.from('pixels'), dataType: AgentDataType.FLOAT32, shape: [1, 64] },
            sharedMemoryHandle: { size: 0, offset: 0, segmentId: tensorSegment },
            data: 'sharedMemoryHandle',
          },
        ],
        inputs: [
          {
            name: 'jpg',
            encoding: AgentEncoding.NONE,
            sharedMemoryHandle: { size: 3000, offset: 0, segmentId: auxSegment },
            data: 'sharedMemoryHandle',
          },
        ],
      }),
    );
    // The next frame, written into the same segments before the capture is written out.
    writeSegment(addon, tensorSegment, new Uint8Array(256).fill(0xff));
    writeSegment(addon, auxSegment, Buffer.alloc(3000, 0x11));
    expect(agent.capture.held).toBe(1);
    await agent.capture.flush();
    const { record } = (await diskRecords(agent.settings.diskPath))[0]!;
    expect(
      (await readDataRef(record.deviceFleetInputs[0]['data-ref'])).equals(Buffer.from(tensor.buffer)),
    ).toBe(true);
    expect((await readDataRef(record.deviceFleetAuxiliaryInputs[0]['data-ref'])).equals(jpeg)).toBe(true);
    await agent.close();
  });

  it('an automatic capture of Predict keeps the input sent from shared memory though the client overwrites it after the answer', async () => {
    const agent = await startAgent('auto-overwritten', new SharedMemoryReader({ addon }), 10, {
      pushPeriodSeconds: 3600,
      autoCapture: [{ model: 'camera', sampleRate: 1 }],
    });
    const x = new Float32Array(16).map((_, i) => i - 3.5);
    const segment = makeSegment(addon, segments, new Uint8Array(x.buffer), { mode: 0o600 });
    const answer = await agent.predict({
      handle: 'camera',
      tensors: [
        {
          tensorMetadata: { name: Buffer.from('x'), dataType: AgentDataType.FLOAT32, shape: [1, 16] },
          sharedMemoryHandle: { size: 0, offset: 0, segmentId: segment },
          data: 'sharedMemoryHandle',
        },
      ],
    });
    writeSegment(addon, segment, new Uint8Array(64).fill(0xff));
    expect(agent.capture.held).toBe(1);
    await agent.capture.flush();
    const { record } = (await diskRecords(agent.settings.diskPath))[0]!;
    expect(record.eventMetadata.eventId).toMatch(/^auto-/);
    expect((await readDataRef(record.deviceFleetInputs[0]['data-ref'])).equals(Buffer.from(x.buffer))).toBe(
      true,
    );
    // The output (a buffer of this request alone, kept as a view) is the one answered.
    expect(
      (await readDataRef(record.deviceFleetOutputs[0]['data-ref'])).equals(
        Buffer.from(answer.tensors[0]!.byteData!),
      ),
    ).toBe(true);
    await agent.close();
  });

  it('refuses a handle past the segment end (INVALID_ARGUMENT), and shared memory when the agent has no reader (FAILED_PRECONDITION), holding nothing', async () => {
    const withReader = await startAgent('past-end', new SharedMemoryReader({ addon }));
    const withoutReader = await startAgent('no-reader', null);
    const small = clientSegment(new Uint8Array(16));
    const request = captureRequest('past-end', {
      modelHandle: 'camera',
      inputTensors: [
        {
          tensorMetadata: { name: Buffer.from('x'), dataType: AgentDataType.FLOAT32, shape: [8] },
          sharedMemoryHandle: { size: 0, offset: 0, segmentId: small },
          data: 'sharedMemoryHandle',
        },
      ],
    });
    const refused = await callError(withReader.send(request));
    expect(refused.code).toBe(grpcStatus.INVALID_ARGUMENT);
    expect(refused.details).toMatch(
      /capture "past-end": input tensor #1 "x": .*runs past the end of shared memory segment/,
    );
    const unavailable = await callError(withoutReader.send(request));
    expect(unavailable.code).toBe(grpcStatus.FAILED_PRECONDITION);
    expect(unavailable.details).toMatch(/send the tensor as byte_data instead/);
    expect(withReader.capture.held + withoutReader.capture.held).toBe(0);
    await withReader.close();
    await withoutReader.close();
  });

  it('refuses a capture larger than maxCaptureBytes however its bytes arrive (a segment larger than the cap), and holds captures to a byte budget', async () => {
    const agent = await startAgent('capped', new SharedMemoryReader({ addon }), 10, {
      maxCaptureBytes: 64 * 1024,
      bufferBytes: 100 * 1024,
      pushPeriodSeconds: 3600,
    });
    // One segment of 1 MiB named whole as auxiliary data: the message is tiny, the capture is not.
    const big = clientSegment(new Uint8Array(1024 * 1024));
    const aux = (segmentId: number, size: number) => ({
      name: 'jpg',
      encoding: AgentEncoding.NONE,
      sharedMemoryHandle: { size, offset: 0, segmentId },
      data: 'sharedMemoryHandle' as const,
    });
    const refused = await callError(
      agent.send(captureRequest('too-big', { modelHandle: 'camera', inputs: [aux(big, 1024 * 1024)] })),
    );
    expect(refused.code).toBe(grpcStatus.RESOURCE_EXHAUSTED);
    expect(refused.details).toMatch(
      /capture "too-big" holds 10487\d\d bytes of tensors and auxiliary data .* at most 65536 bytes at once \(edgefleet_capture_max_bytes, by default the larger of -m and 64 MiB\); nothing was captured/,
    );
    expect(agent.capture.held).toBe(0);

    // 60 KiB fits; a second 60 KiB would pass the 100 KiB buffer while the first is held: RESOURCE_EXHAUSTED.
    await agent.send(captureRequest('first', { modelHandle: 'camera', inputs: [aux(big, 60 * 1024)] }));
    const full = await callError(
      agent.send(captureRequest('second', { modelHandle: 'camera', inputs: [aux(big, 60 * 1024)] })),
    );
    expect(full.code).toBe(grpcStatus.RESOURCE_EXHAUSTED);
    expect(full.details).toMatch(
      /the capture buffer is full \(6\d{4} bytes of captures waiting .* 6\d{4} more would pass its 102400 bytes, edgefleet_capture_buffer_bytes\); retry later/,
    );
    expect(agent.capture.held).toBe(1);
    // Once the first is written, the budget is free again.
    await agent.capture.flush();
    await agent.send(captureRequest('second', { modelHandle: 'camera', inputs: [aux(big, 60 * 1024)] }));
    await agent.capture.flush();
    expect(
      (await diskRecords(agent.settings.diskPath)).map((r) => r.record.eventMetadata.eventId).sort(),
    ).toEqual(['first', 'second']);
    await agent.close();
  });
});
