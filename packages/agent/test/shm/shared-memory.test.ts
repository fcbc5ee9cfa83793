import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { SharedMemoryError, SharedMemoryReader } from '../../src/shm/shared-memory.js';
import type { SharedMemoryErrorCode } from '../../src/shm/shared-memory.js';
import { loadSysvShmAddon } from '../../src/shm/sysv-shm-addon.js';
import { segmentExists } from '../support/segments.js';

const addon = loadSysvShmAddon();
const created: number[] = [];
const readers: SharedMemoryReader[] = [];
const self = {
  pid: process.pid,
  uid: process.getuid!(),
  gid: process.getgid!(),
  groups: process.getgroups!(),
};

function newReader(maxCachedSegments?: number, clock?: () => number): SharedMemoryReader {
  const reader = new SharedMemoryReader({
    addon,
    ...(maxCachedSegments === undefined ? {} : { maxCachedSegments }),
    ...(clock && { now: clock }),
  });
  readers.push(reader);
  return reader;
}

/** What a SageMaker Edge client does: create a segment, write the tensor, detach, chmod 0400. */
function clientSegment(size: number, write?: (bytes: Uint8Array) => void): number {
  const { shmid } = addon.create(size);
  created.push(shmid);
  const mapping = addon.attachReadWrite(shmid);
  write?.(new Uint8Array(mapping));
  addon.detach(mapping);
  addon.setMode(shmid, 0o400);
  return shmid;
}

const exists = (shmid: number): boolean => segmentExists(addon, shmid);

afterEach(() => {
  for (const reader of readers.splice(0)) reader.close();
  for (const shmid of created.splice(0)) {
    try {
      addon.remove(shmid);
    } catch {
      // removed by the test itself
    }
  }
});

function expectError(read: () => unknown, code: SharedMemoryErrorCode, message?: RegExp): void {
  let thrown: unknown;
  try {
    read();
  } catch (error) {
    thrown = error;
  }
  expect(thrown).toBeInstanceOf(SharedMemoryError);
  expect((thrown as SharedMemoryError).code).toBe(code);
  if (message) expect((thrown as SharedMemoryError).message).toMatch(message);
}

const tensor = new Float32Array([0.5, -1.25, 3, 1e-3, 42, -0]);

describe('SharedMemoryReader', () => {
  it('reads a Float32 tensor a client left in a 0400 segment, with size 0 (derived) and with explicit size', () => {
    const shmid = clientSegment(4096, (bytes) => bytes.set(new Uint8Array(tensor.buffer), 64));
    const reader = newReader();

    const derived = reader.readTensorFromSegment(
      { segmentId: shmid, offset: 64, size: 0 },
      tensor.byteLength,
      self,
    );
    expect(derived.data.length).toBe(tensor.byteLength);
    expect(new Float32Array(derived.data.buffer, derived.data.byteOffset, tensor.length)).toEqual(tensor);

    const explicit = reader.readTensorFromSegment(
      { segmentId: shmid, offset: 64, size: tensor.byteLength },
      tensor.byteLength,
      self,
    );
    expect(explicit.data.equals(derived.data)).toBe(true);
    // Both views come from one cached read-only mapping.
    expect(explicit.data.buffer).toBe(derived.data.buffer);
    expect(addon.stat(shmid).attachCount).toBe(1);
    derived.release();
    explicit.release();
  });

  it('reads a tensor that ends exactly at the end of the segment, and an empty tensor at the very end', () => {
    const shmid = clientSegment(100, (bytes) => bytes.fill(9, 76));
    const reader = newReader();
    const lease = reader.readTensorFromSegment({ segmentId: shmid, offset: 76, size: 0 }, 24, self);
    expect([...lease.data]).toEqual(new Array(24).fill(9));
    const empty = reader.readTensorFromSegment({ segmentId: shmid, offset: 100, size: 0 }, 0, self);
    expect(empty.data.length).toBe(0);
    lease.release();
    empty.release();
  });

  it('rejects a tensor running past the end of the segment, saying the sizes involved', () => {
    const shmid = clientSegment(1000);
    const reader = newReader();
    expectError(
      () => reader.readTensorFromSegment({ segmentId: shmid, offset: 0, size: 0 }, 1001, self),
      'OUT_OF_BOUNDS',
      /1001 bytes at offset 0 runs past the end of shared memory segment \d+ \(1000 bytes\)/,
    );
    expectError(
      () => reader.readTensorFromSegment({ segmentId: shmid, offset: 997, size: 4 }, 4, self),
      'OUT_OF_BOUNDS',
    );
    expectError(
      () => reader.readTensorFromSegment({ segmentId: shmid, offset: 1001, size: 0 }, 0, self),
      'OUT_OF_BOUNDS',
    );
    expectError(
      () =>
        reader.readTensorFromSegment({ segmentId: shmid, offset: Number.MAX_SAFE_INTEGER, size: 0 }, 8, self),
      'OUT_OF_BOUNDS',
    );
  });

  it('rejects a size that disagrees with the tensor’s shape and type', () => {
    const shmid = clientSegment(1000);
    expectError(
      () => newReader().readTensorFromSegment({ segmentId: shmid, offset: 0, size: 16 }, 24, self),
      'SIZE_MISMATCH',
      /size is 16 bytes but the tensor's shape and type make 24/,
    );
  });

  it('rejects handles that are not valid numbers', () => {
    const reader = newReader();
    expectError(
      () => reader.readTensorFromSegment({ segmentId: 2 ** 40, offset: 0, size: 0 }, 4, self),
      'INVALID_HANDLE',
      /shmid/,
    );
    expectError(
      () => reader.readTensorFromSegment({ segmentId: -1, offset: 0, size: 0 }, 4, self),
      'INVALID_HANDLE',
    );
    expectError(
      () => reader.readTensorFromSegment({ segmentId: 1, offset: 2 ** 64, size: 0 }, 4, self),
      'INVALID_HANDLE',
      /offset/,
    );
    expectError(
      () => reader.readTensorFromSegment({ segmentId: 1, offset: 0, size: 0.5 }, 4, self),
      'INVALID_HANDLE',
      /size/,
    );
    expectError(
      () => reader.readTensorFromSegment({ segmentId: 1, offset: 0, size: 0 }, -4, self),
      'INVALID_HANDLE',
    );
    expectError(
      () =>
        reader.readTensorFromSegment(
          { offset: 0, size: 0 } as unknown as { segmentId: number; offset: number; size: number },
          4,
          self,
        ),
      'INVALID_HANDLE',
      /segmentId/,
    );
  });

  it('rejects an unknown shmid', () => {
    const shmid = clientSegment(64);
    addon.remove(shmid);
    expectError(
      () => newReader().readTensorFromSegment({ segmentId: shmid, offset: 0, size: 0 }, 4, self),
      'SEGMENT_NOT_FOUND',
      new RegExp(`segment ${shmid} does not exist`),
    );
  });

  it('lets go of a cached segment the client removed, instead of keeping it alive', () => {
    const shmid = clientSegment(4096);
    const reader = newReader();
    reader.readTensorFromSegment({ segmentId: shmid, offset: 0, size: 0 }, 16, self).release();
    expect(reader.cachedSegmentCount).toBe(1);

    addon.remove(shmid); // only our cached mapping keeps it now
    expect(addon.stat(shmid).markedForRemoval).toBe(true);
    expectError(
      () => reader.readTensorFromSegment({ segmentId: shmid, offset: 0, size: 0 }, 16, self),
      'SEGMENT_NOT_FOUND',
    );
    expect(exists(shmid)).toBe(false);
    expect(reader.cachedSegmentCount).toBe(0);
  });

  it('writes outputs through one kept read-write mapping, and lets go of it when the client removes the segment', () => {
    const shmid = clientSegment(64);
    addon.setMode(shmid, 0o600);
    const reader = newReader();
    reader.writeToSegment(shmid, 0, new Uint8Array([1, 2, 3]), self);
    reader.writeToSegment(shmid, 61, new Uint8Array([7, 8, 9]), self);
    expect(reader.cachedWritableSegmentCount).toBe(1);
    const mapping = addon.attachReadWrite(shmid);
    const bytes = new Uint8Array(mapping).slice();
    addon.detach(mapping);
    expect([...bytes.subarray(0, 3)]).toEqual([1, 2, 3]);
    expect([...bytes.subarray(61)]).toEqual([7, 8, 9]);
    expectError(() => reader.writeToSegment(shmid, 62, new Uint8Array(3), self), 'OUT_OF_BOUNDS');

    addon.remove(shmid); // only our kept mapping holds it now
    expectError(() => reader.writeToSegment(shmid, 0, new Uint8Array(1), self), 'SEGMENT_NOT_FOUND');
    expect(exists(shmid)).toBe(false);
    expect(reader.cachedWritableSegmentCount).toBe(0);
  });

  it('sweeps idle segments that clients removed while reading others, at most once a readSweepIntervalMs', () => {
    const first = clientSegment(4096);
    const second = clientSegment(4096);
    let now = 0;
    const reader = newReader(undefined, () => now);
    reader.readTensorFromSegment({ segmentId: first, offset: 0, size: 0 }, 4, self).release();
    addon.remove(first);
    expect(exists(first)).toBe(true); // held by the reader's cache

    // Within the interval a read checks only its own segment: the removed one waits for the next sweep.
    now = 999;
    reader.readTensorFromSegment({ segmentId: second, offset: 0, size: 0 }, 4, self).release();
    expect(exists(first)).toBe(true);
    expect(reader.cachedSegmentCount).toBe(2);

    now = 1000;
    reader.readTensorFromSegment({ segmentId: second, offset: 0, size: 0 }, 4, self).release();
    expect(exists(first)).toBe(false);
    expect(reader.cachedSegmentCount).toBe(1);

    reader.readTensorFromSegment({ segmentId: second, offset: 0, size: 0 }, 4, self).release();
    addon.remove(second);
    reader.sweep();
    expect(exists(second)).toBe(false);
  });

  it('serves a segment the client already marked for removal while it is still attached, without caching it', () => {
    const { shmid } = addon.create(4096);
    created.push(shmid);
    const clientMapping = addon.attachReadWrite(shmid);
    new Uint8Array(clientMapping).fill(7, 0, 8);
    addon.remove(shmid); // the create-attach-remove pattern: the segment lives while someone is attached

    const reader = newReader();
    const lease = reader.readTensorFromSegment({ segmentId: shmid, offset: 0, size: 8 }, 8, self);
    expect([...lease.data]).toEqual(new Array(8).fill(7));
    expect(reader.cachedSegmentCount).toBe(0);
    lease.release();
    expect(lease.data.length).toBe(0);
    expect(addon.stat(shmid).attachCount).toBe(1);
    addon.detach(clientMapping);
    expect(exists(shmid)).toBe(false);
  });

  it('keeps a leased segment mapped until release, then unmaps it and empties the view', () => {
    const shmid = clientSegment(4096, (bytes) => bytes.fill(5, 0, 4));
    const reader = newReader();
    const lease = reader.readTensorFromSegment({ segmentId: shmid, offset: 0, size: 0 }, 4, self);
    addon.remove(shmid);
    reader.sweep();
    reader.close();
    expect([...lease.data]).toEqual([5, 5, 5, 5]);
    expect(exists(shmid)).toBe(true);

    lease.release();
    lease.release(); // idempotent
    expect(lease.data.length).toBe(0);
    expect(exists(shmid)).toBe(false);
    expectError(
      () => reader.readTensorFromSegment({ segmentId: shmid, offset: 0, size: 0 }, 4, self),
      'ATTACH_FAILED',
      /closed/,
    );
  });

  it('says where a lease lies and which segment it checked, and references a place to write without mapping it', () => {
    const shmid = clientSegment(4096, (bytes) => bytes.fill(9, 100, 104));
    const reader = newReader();
    const lease = reader.readTensorFromSegment({ segmentId: shmid, offset: 100, size: 4 }, 4, self);
    const stat = addon.stat(shmid);
    const identity = {
      size: 4096,
      creatorPid: process.pid,
      changeTime: stat.changeTime,
      mode: stat.mode,
      ownerUid: stat.ownerUid,
      ownerGid: stat.ownerGid,
      creatorUid: stat.creatorUid,
      creatorGid: stat.creatorGid,
    };
    expect(lease.reference).toEqual({ segmentId: shmid, offset: 100, byteLength: 4, identity });
    lease.release();

    addon.setMode(shmid, 0o600);
    const attached = addon.stat(shmid).attachCount;
    expect(reader.referenceSegment(shmid, 4000, 96, self, 'write')).toMatchObject({
      segmentId: shmid,
      offset: 4000,
      byteLength: 96,
    });
    expect(addon.stat(shmid).attachCount).toBe(attached);
    expectError(() => reader.referenceSegment(shmid, 4000, 97, self, 'write'), 'OUT_OF_BOUNDS');
    addon.setMode(shmid, 0o400);
    expectError(
      () => reader.referenceSegment(shmid, 0, 1, { ...self, uid: self.uid + 1 }, 'write'),
      'ACCESS_DENIED',
    );
  });

  it('keeps at most maxCachedSegments idle segments attached', () => {
    const segments = [clientSegment(64), clientSegment(64), clientSegment(64)];
    const reader = newReader(2);
    for (const segmentId of segments)
      reader.readTensorFromSegment({ segmentId, offset: 0, size: 0 }, 4, self).release();
    expect(reader.cachedSegmentCount).toBe(2);
    expect(segments.map((shmid) => addon.stat(shmid).attachCount)).toEqual([0, 1, 1]);

    const uncached = newReader(0);
    const lease = uncached.readTensorFromSegment({ segmentId: segments[0]!, offset: 0, size: 0 }, 4, self);
    expect(addon.stat(segments[0]!).attachCount).toBe(1);
    lease.release();
    expect(uncached.cachedSegmentCount).toBe(0);
    expect(addon.stat(segments[0]!).attachCount).toBe(0);
  });

  it('never reads past the end of a segment and throws nothing but SharedMemoryError', () => {
    const reader = newReader(4);
    const number = fc.oneof(
      fc.nat({ max: 20_000 }),
      fc.constantFrom(-1, 0.5, 2 ** 53, 2 ** 64, Number.NaN, Number.POSITIVE_INFINITY),
    );
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 20_000 }),
        number,
        number,
        number,
        (segmentSize, offset, size, expected) => {
          const segmentId = clientSegment(segmentSize, (bytes) => bytes.fill(0xab));
          try {
            const lease = reader.readTensorFromSegment({ segmentId, offset, size }, expected, self);
            expect(offset + lease.data.length).toBeLessThanOrEqual(segmentSize);
            expect(lease.data.length).toBe(expected);
            expect(size === 0 || size === expected).toBe(true);
            expect(lease.data.every((byte) => byte === 0xab)).toBe(true);
            lease.release();
          } catch (error) {
            expect(error).toBeInstanceOf(SharedMemoryError);
            const valid =
              Number.isSafeInteger(offset) && offset >= 0 && Number.isSafeInteger(expected) && expected >= 0;
            if (valid && (size === 0 || size === expected)) {
              expect((error as SharedMemoryError).code).toBe('OUT_OF_BOUNDS');
              expect(offset + expected).toBeGreaterThan(segmentSize);
            }
          } finally {
            addon.remove(segmentId);
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});
