import * as grpc from '@grpc/grpc-js';
import { AgentDataType, TEST_MODELS } from '@edgefleet/core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { InferencePool } from '../../src/inference/index.js';
import { loadSysvShmAddon } from '../../src/shm/index.js';
import { waitUntil } from '../support/wait-until.js';
import {
  bytesOf,
  callError,
  referenceBytes,
  scratch,
  startPool,
  startTestAgent,
  type TestAgent,
} from './helpers.js';
import { makeSegment } from '../support/segments.js';

const addon = loadSysvShmAddon();
const created: number[] = [];

/** What a SageMaker Edge client does: create a segment, write the tensor at `offset`, detach, chmod 0400. */
function clientSegment(bytes: Uint8Array, offset = 0, size = offset + bytes.length): number {
  return makeSegment(addon, created, bytes, { offset, size, mode: 0o400 });
}

let pool: InferencePool;
let files: Awaited<ReturnType<typeof scratch>>;
let agent: TestAgent;
const image = TEST_MODELS['image-identity'].sampleInputs().image!;
const imageBytes = bytesOf(image.data);
const imageMetadata = { name: Buffer.from('image'), dataType: AgentDataType.FLOAT32, shape: image.shape };

beforeAll(async () => {
  files = await scratch('agent-grpc-shm-');
  pool = await startPool(1);
  agent = await startTestAgent({ pool, dir: files.root });
  await agent.call('LoadModel', { url: await files.catalogue('image-identity'), handle: 'image' });
  await agent.call('LoadModel', { url: await files.catalogue('tiny'), handle: 'tiny' });
});
afterEach(() => {
  for (const shmid of created.splice(0)) {
    try {
      addon.remove(shmid);
    } catch {
      // already removed by the test
    }
  }
});
afterAll(async () => {
  await agent?.close();
  await pool?.close();
  await files?.cleanup();
});

describe('Predict with inputs in System V shared memory', () => {
  it('reads a 600 KB tensor from a read-only (0400) segment, size 0 = derived from shape × element size', async () => {
    const shmid = clientSegment(imageBytes);
    expect(addon.stat(shmid).mode & 0o777).toBe(0o400);
    const before = pool.stats().inputBytes;
    const response = await agent.call('Predict', {
      handle: 'image',
      tensors: [
        { tensorMetadata: imageMetadata, sharedMemoryHandle: { segmentId: shmid, offset: 0, size: 0 } },
      ],
    });
    const [out] = response.tensors;
    expect(out?.data).toBe('byteData');
    expect(out?.tensorMetadata?.shape).toEqual([1, 3, 224, 224]);
    expect(Buffer.compare(out!.byteData!, referenceBytes('image-identity').get('image_out')!.bytes)).toBe(0);
    // The worker mapped the segment itself: the bytes were neither copied on the event loop nor sent to it.
    const after = pool.stats().inputBytes;
    expect(after.segment - before.segment).toBe(imageBytes.length);
    expect(after.copies).toBe(before.copies);
    expect(after.copied).toBe(before.copied);
  });

  it('reads at an offset, with an explicit size, and again from the same segment (reused by clients)', async () => {
    const x = bytesOf(TEST_MODELS.tiny.sampleInputs().x!.data);
    const shmid = clientSegment(x, 4096, 8192);
    const expected = referenceBytes('tiny').get('y')!.bytes;
    for (const size of [64, 0, 64]) {
      const response = await agent.call('Predict', {
        handle: 'tiny',
        tensors: [
          {
            tensorMetadata: { name: Buffer.from('x'), dataType: AgentDataType.FLOAT32, shape: [1, 16] },
            sharedMemoryHandle: { segmentId: shmid, offset: 4096, size },
          },
        ],
      });
      expect(Buffer.compare(response.tensors[0]!.byteData!, expected)).toBe(0);
    }
  });

  it('answers INVALID_ARGUMENT when the segment changed between the check and the worker, and keeps serving', async () => {
    await agent.call('LoadModel', { url: await files.catalogue('slow'), handle: 'slow' });
    try {
      const x = bytesOf(TEST_MODELS.tiny.sampleInputs().x!.data);
      // The chmod below most likely falls in the same second as the client's (ctime has whole seconds): the
      // changed mode itself must show.
      const shmid = clientSegment(x);
      const slowX = TEST_MODELS.slow.sampleInputs().x!;
      const slowMetadata = { name: Buffer.from('x'), dataType: AgentDataType.FLOAT32, shape: slowX.shape };
      const slowCall = () =>
        agent.call('Predict', {
          handle: 'slow',
          tensors: [{ tensorMetadata: slowMetadata, byteData: bytesOf(slowX.data) }],
        });
      const tinyCall = () =>
        agent.call('Predict', {
          handle: 'tiny',
          tensors: [
            {
              tensorMetadata: { name: Buffer.from('x'), dataType: AgentDataType.FLOAT32, shape: [1, 16] },
              sharedMemoryHandle: { segmentId: shmid, offset: 0, size: 0 },
            },
          ],
        });
      // The one worker is busy with two slow runs, so the checked request waits in the queue meanwhile.
      const busy = Promise.all([slowCall(), slowCall()]);
      await waitUntil(
        () => pool.stats().models.some((m) => m.key.startsWith('slow') && m.running + m.queued === 2),
        'the two slow runs to reach the worker',
      );
      const pending = callError(tinyCall());
      await waitUntil(
        () => pool.stats().models.some((m) => m.key.startsWith('tiny') && m.queued === 1),
        'the tiny request to wait in the queue',
      );
      addon.setMode(shmid, 0o440); // IPC_SET: no longer the segment as the agent checked it
      await busy;
      const error = await pending;
      expect(error.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(error.details).toMatch(
        /input tensor "x": shared memory segment \d+ is not the segment the agent checked \(it was removed and its id reused, or its permissions were changed meanwhile\)/,
      );
      const again = await tinyCall();
      expect(Buffer.compare(again.tensors[0]!.byteData!, referenceBytes('tiny').get('y')!.bytes)).toBe(0);
    } finally {
      await agent.call('UnLoadModel', { handle: 'slow' });
    }
  });

  it('answers each bad handle with a status and details saying what was expected', async () => {
    const small = clientSegment(new Uint8Array(100));
    const { shmid: gone } = addon.create(64);
    addon.remove(gone);
    const tiny = { name: Buffer.from('x'), dataType: AgentDataType.FLOAT32, shape: [1, 16] };
    const cases: Array<[string, object, number, RegExp]> = [
      [
        'past the end',
        { tensorMetadata: tiny, sharedMemoryHandle: { segmentId: small, offset: 40, size: 0 } },
        grpc.status.INVALID_ARGUMENT,
        /64 bytes at offset 40 runs past the end of shared memory segment \d+ \(100 bytes\)/,
      ],
      [
        'size differs',
        { tensorMetadata: tiny, sharedMemoryHandle: { segmentId: small, offset: 0, size: 32 } },
        grpc.status.INVALID_ARGUMENT,
        /size is 32 bytes but the tensor's shape and type make 64 \(set size to 64, or to 0/,
      ],
      [
        'no such segment',
        { tensorMetadata: tiny, sharedMemoryHandle: { segmentId: gone, offset: 0, size: 0 } },
        grpc.status.INVALID_ARGUMENT,
        /segment \d+ does not exist/,
      ],
      [
        'dynamic dimension',
        {
          tensorMetadata: { ...tiny, shape: [-1, 16] },
          sharedMemoryHandle: { segmentId: small, offset: 0, size: 0 },
        },
        grpc.status.INVALID_ARGUMENT,
        /shape \[-1, 16\]; a tensor in shared memory needs its real shape/,
      ],
      [
        'shape the model does not take',
        {
          tensorMetadata: { ...tiny, shape: [1, 20] },
          sharedMemoryHandle: { segmentId: small, offset: 0, size: 0 },
        },
        grpc.status.INVALID_ARGUMENT,
        /shape \[1, 20\] does not fit the model/,
      ],
    ];
    for (const [what, tensor, code, details] of cases) {
      const error = await callError(agent.call('Predict', { handle: 'tiny', tensors: [tensor] }));
      expect(error.code, what).toBe(code);
      expect(error.details, what).toMatch(details);
    }
  });

  // Root (CAP_IPC_OWNER) reads any segment whatever its mode.
  it.skipIf(process.getuid?.() === 0)(
    'PERMISSION_DENIED for a segment the agent may not read (mode 0000)',
    async () => {
      const shmid = clientSegment(new Uint8Array(64));
      addon.setMode(shmid, 0o000);
      const error = await callError(
        agent.call('Predict', {
          handle: 'tiny',
          tensors: [
            {
              tensorMetadata: { name: Buffer.from('x'), dataType: AgentDataType.FLOAT32, shape: [1, 16] },
              sharedMemoryHandle: { segmentId: shmid, offset: 0, size: 0 },
            },
          ],
        }),
      );
      expect(error.code).toBe(grpc.status.PERMISSION_DENIED);
      expect(error.details).toMatch(/may not read shared memory segment/);
    },
  );

  it('FAILED_PRECONDITION when the agent runs without the shared memory addon', async () => {
    const noShm = await startTestAgent({
      pool,
      dir: files.root,
      socketName: 'no-shm.sock',
      sharedMemory: null,
    });
    try {
      await noShm.call('LoadModel', { url: await files.catalogue('tiny', 'tiny2'), handle: 'tiny' });
      const error = await callError(
        noShm.call('Predict', {
          handle: 'tiny',
          tensors: [
            {
              tensorMetadata: { name: Buffer.from('x'), dataType: AgentDataType.FLOAT32, shape: [1, 16] },
              sharedMemoryHandle: { segmentId: 1, offset: 0, size: 0 },
            },
          ],
        }),
      );
      expect(error.code).toBe(grpc.status.FAILED_PRECONDITION);
      expect(error.details).toMatch(
        /cannot read System V shared memory .*send the tensor as byte_data instead/,
      );
    } finally {
      await noShm.close();
    }
  });
});
