import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AgentDataType, AgentEncoding } from '@edgefleet/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CaptureService, DiskDestination, MemoryCaptureQueue } from '../../src/capture/index.js';
import type { AgentError } from '../../src/models/index.js';
import { SharedMemoryReader, loadSysvShmAddon } from '../../src/shm/index.js';
import { captureRequest, diskRecords, readDataRef, testSettings } from './helpers.js';

const addon = loadSysvShmAddon();
const segments: number[] = [];
let root: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'edgefleet-capture-shm-'));
});
afterAll(async () => {
  for (const shmid of segments) addon.remove(shmid);
  await rm(root, { recursive: true, force: true });
});

/** What a SageMaker Edge client does: create a segment, write the bytes, detach, chmod 0400. */
function clientSegment(bytes: Uint8Array, offset = 0): number {
  const { shmid } = addon.create(offset + bytes.byteLength);
  segments.push(shmid);
  const mapping = addon.attachReadWrite(shmid);
  new Uint8Array(mapping).set(bytes, offset);
  addon.detach(mapping);
  addon.setMode(shmid, 0o400);
  return shmid;
}

const models = { describe: (name: string) => ({ name, version: '3' }) };

describe('capture from System V shared memory', () => {
  it('reads tensors (size derived from the shape) and auxiliary data (size given) out of segments, copying them', async () => {
    const settings = testSettings(root, { batchSize: 1, base64EmbedLimit: 16 });
    const reader = new SharedMemoryReader({ addon });
    const service = new CaptureService({
      settings,
      models,
      queue: new MemoryCaptureQueue(),
      destination: new DiskDestination(settings.diskPath),
      sharedMemory: reader,
    });
    await service.start();
    const tensor = new Float32Array(64).map((_, i) => i / 2);
    const tensorSegment = clientSegment(new Uint8Array(tensor.buffer), 128);
    const jpeg = Buffer.alloc(3000, 0xd8);
    const auxSegment = clientSegment(jpeg);
    await service.capture(
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
    await service.flush();
    const { record } = (await diskRecords(settings.diskPath))[0]!;
    expect(
      (await readDataRef(record.deviceFleetInputs[0]['data-ref'])).equals(Buffer.from(tensor.buffer)),
    ).toBe(true);
    expect((await readDataRef(record.deviceFleetAuxiliaryInputs[0]['data-ref'])).equals(jpeg)).toBe(true);
    expect(record.deviceFleetInputs[0].observedContentType).toBe('Tensor[FLOAT32; 1, 64]');
    await service.close();
    reader.close();
  });

  it('refuses a handle past the segment end (INVALID_ARGUMENT), and shared memory when the agent has no reader (FAILED_PRECONDITION)', async () => {
    const settings = testSettings(root);
    const reader = new SharedMemoryReader({ addon });
    const withReader = new CaptureService({
      settings,
      models,
      queue: new MemoryCaptureQueue(),
      destination: new DiskDestination(settings.diskPath),
      sharedMemory: reader,
    });
    const withoutReader = new CaptureService({
      settings,
      models,
      queue: new MemoryCaptureQueue(),
      destination: new DiskDestination(settings.diskPath),
    });
    await withReader.start();
    await withoutReader.start();
    const small = clientSegment(new Uint8Array(16));
    const request = captureRequest('past-end', {
      inputTensors: [
        {
          tensorMetadata: { name: Buffer.from('x'), dataType: AgentDataType.FLOAT32, shape: [8] },
          sharedMemoryHandle: { size: 0, offset: 0, segmentId: small },
          data: 'sharedMemoryHandle',
        },
      ],
    });
    const refused = await withReader.capture(request).catch((e: unknown) => e as AgentError);
    expect(refused).toMatchObject({
      code: 'INVALID_ARGUMENT',
      message: expect.stringMatching(/runs past the end of shared memory segment/),
    });
    const unavailable = await withoutReader.capture(request).catch((e: unknown) => e as AgentError);
    expect(unavailable).toMatchObject({
      code: 'FAILED_PRECONDITION',
      message: expect.stringMatching(/send byte_data instead/),
    });
    await withReader.close();
    await withoutReader.close();
    reader.close();
  });
});
