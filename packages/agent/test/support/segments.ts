import { identityOf, type SegmentReference, type SysvShmAddon } from '../../src/shm/index.js';

/**
 * A System V segment made as a SageMaker Edge client makes one: `size` bytes (default: room for `bytes` at
 * `offset`), `bytes` written at `offset`, detached, then `mode` set when given (clients chmod 0400). Its id is
 * added to `created`, which the test removes in its clean-up.
 */
export function makeSegment(
  addon: SysvShmAddon,
  created: number[],
  bytes: Uint8Array,
  {
    offset = 0,
    size = offset + bytes.byteLength,
    mode,
  }: { offset?: number; size?: number; mode?: number } = {},
): number {
  const { shmid } = addon.create(size);
  created.push(shmid);
  writeSegment(addon, shmid, bytes, offset);
  if (mode !== undefined) addon.setMode(shmid, mode);
  return shmid;
}

/** Writes `bytes` at `offset` into a segment, through a mapping of its own (as the segment's owner would). */
export function writeSegment(addon: SysvShmAddon, shmid: number, bytes: Uint8Array, offset = 0): void {
  const mapping = addon.attachReadWrite(shmid);
  new Uint8Array(mapping).set(bytes, offset);
  addon.detach(mapping);
}

/** A place in a segment as the event loop hands it on after its checks: where the bytes lie, and which segment. */
export function segmentReference(
  addon: SysvShmAddon,
  shmid: number,
  offset: number,
  byteLength: number,
): SegmentReference {
  return { segmentId: shmid, offset, byteLength, identity: identityOf(addon.stat(shmid)) };
}

/** Whether a System V segment with this id still exists (IPC_STAT answers for it). */
export function segmentExists(addon: SysvShmAddon, shmid: number): boolean {
  try {
    addon.stat(shmid);
    return true;
  } catch {
    return false;
  }
}

/**
 * A copy of `length` bytes at `offset` in a System V segment, read through a mapping of its own; the copy owns its
 * ArrayBuffer (`.buffer` is exactly these bytes).
 */
export function segmentBytes(addon: SysvShmAddon, shmid: number, offset: number, length: number): Buffer {
  const mapping = addon.attachReadWrite(shmid);
  try {
    return Buffer.from(new Uint8Array(mapping, offset, length).slice().buffer);
  } finally {
    addon.detach(mapping);
  }
}
