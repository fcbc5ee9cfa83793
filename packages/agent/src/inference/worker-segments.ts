/**
 * System V segments as an inference worker maps them itself: the agent's event loop checks a caller's
 * permission and the bounds, then hands the worker a SegmentReference instead of the bytes; the worker attaches
 * the segment (read-only for inputs, read-write for outputs); ONNX Runtime reads inputs where they lie and the
 * worker writes outputs there, so no tensor is copied through the event loop.
 *
 * Checks, here being authoritative: the id still names the segment the event loop checked (its identity), and the
 * bytes lie inside the mapping. Attachments are kept for reuse (clients reuse their segments) up to a bound, and
 * let go of when their segment is removed or marked for removal (`sweep`, on the worker's timer and on every
 * attach; one already marked when attached is let go of when its run ends). While we hold a segment attached the kernel cannot give its id to another one, so a cached mapping is
 * always the segment its id names. Nothing is unmapped while a run may use it (`beginRun`/`endRun`).
 */
import { markAsUntransferable } from 'node:worker_threads';
import type { Tensor } from 'onnxruntime-node';
import { toOrtTensor, type OrtTensorConstructor } from './ort-tensors.js';
import type { OrtTensorType, WireSegmentOutput, WireSegmentTensor } from './protocol.js';
import { HOST_IS_LITTLE_ENDIAN, swapBytesInPlace } from './tensor-bytes.js';
import {
  SharedMemoryError,
  isSysvShmSystemError,
  sameSegment,
  identityOf,
  type SegmentIdentity,
  type SegmentReference,
  type SegmentStat,
  type SysvShmAddon,
} from '../shm/index.js';

export type SegmentAccess = 'read' | 'write';

export interface WorkerSegmentsOptions {
  /** Loaded on first use, so that a worker never given a segment never loads the addon. */
  addon: () => SysvShmAddon;
  /** Attachments kept for reuse, inputs and outputs together. Default 16. */
  maxCached?: number;
}

interface Attachment {
  segmentId: number;
  access: SegmentAccess;
  buffer: ArrayBuffer;
  identity: SegmentIdentity;
  /** The run that last used it: a mapping used by the current run is never unmapped before the run ends. */
  run: number;
  /** Marked for removal when attached (clients that remove a segment right after sending it): not kept. */
  removed: boolean;
}

export class WorkerSegments {
  readonly #options: WorkerSegmentsOptions;
  readonly #maxCached: number;
  /** By `${access}:${segmentId}`, least recently used first. */
  readonly #cache = new Map<string, Attachment>();
  #addon: SysvShmAddon | undefined;
  #run = 0;
  #running = false;

  constructor(options: WorkerSegmentsOptions) {
    this.#options = options;
    this.#maxCached = options.maxCached ?? 16;
    if (!Number.isInteger(this.#maxCached) || this.#maxCached < 1)
      throw new RangeError(`maxCached must be an integer ≥ 1, not ${this.#maxCached}`);
  }

  /** Mappings handed out from here on stay mapped until `endRun`. */
  beginRun(): void {
    this.#run++;
    this.#running = true;
  }

  endRun(): void {
    this.#running = false;
    this.#trim();
  }

  /**
   * The bytes `reference` names, in this thread's mapping of the segment (read-only memory for 'read': writing
   * there kills the process). `what` names the tensor in error messages.
   * @throws SharedMemoryError: SEGMENT_NOT_FOUND, SEGMENT_CHANGED, OUT_OF_BOUNDS, ACCESS_DENIED, ATTACH_FAILED.
   */
  bytes(reference: SegmentReference, access: SegmentAccess, what: string): Uint8Array {
    const { segmentId, offset, byteLength } = reference;
    const attachment = this.#attachment(reference, access, what);
    attachment.run = this.#run;
    // The authoritative check: against the mapping itself, whose length V8 enforces on every view.
    const size = attachment.buffer.byteLength;
    if (!(Number.isSafeInteger(offset) && offset >= 0 && Number.isSafeInteger(byteLength) && byteLength >= 0))
      throw new SharedMemoryError(
        'OUT_OF_BOUNDS',
        `${what}: offset ${offset} and length ${byteLength} are not byte counts`,
        segmentId,
      );
    if (offset > size || byteLength > size - offset)
      throw new SharedMemoryError(
        'OUT_OF_BOUNDS',
        `${what}: ${byteLength} bytes at offset ${offset} run past the end of shared memory segment ${segmentId} (${size} bytes); expected offset + length ≤ ${size}`,
        segmentId,
      );
    return new Uint8Array(attachment.buffer, offset, byteLength);
  }

  /** Unmaps attachments whose segment is gone, marked for removal, or beyond the bound (none the run uses). */
  sweep(): void {
    if (this.#addon === undefined) return;
    for (const [key, attachment] of [...this.#cache]) {
      if (this.#inUse(attachment)) continue;
      let stale: boolean;
      try {
        stale = this.#addon.stat(attachment.segmentId).markedForRemoval;
      } catch {
        stale = true;
      }
      if (stale) this.#drop(key, attachment);
    }
    this.#trim();
  }

  get cachedCount(): number {
    return this.#cache.size;
  }

  close(): void {
    for (const [key, attachment] of [...this.#cache]) this.#drop(key, attachment);
  }

  #attachment(reference: SegmentReference, access: SegmentAccess, what: string): Attachment {
    const { segmentId } = reference;
    const key = `${access}:${segmentId}`;
    const cached = this.#cache.get(key);
    if (cached !== undefined) {
      this.#cache.delete(key);
      this.#cache.set(key, cached);
      if (sameSegment(cached.identity, reference.identity)) return cached;
      // We hold it, so the id names the same segment; only an IPC_SET since we attached changes its identity.
      const now = this.#stat(segmentId, what);
      if (now === undefined) throw notFound(segmentId, what);
      if (!sameSegment(identityOf(now), reference.identity)) throw changed(segmentId, what);
      cached.identity = reference.identity;
      return cached;
    }
    const addon = this.#loadAddon();
    this.sweep();
    let buffer: ArrayBuffer;
    try {
      buffer = access === 'read' ? addon.attachReadOnly(segmentId) : addon.attachReadWrite(segmentId);
    } catch (error) {
      throw fromSystemError(error, segmentId, what, access);
    }
    // Transferring it back to the event loop would hand over memory we unmap later.
    markAsUntransferable(buffer);
    let stat: SegmentStat | undefined;
    try {
      stat = this.#stat(segmentId, what);
    } catch (error) {
      detachQuietly(addon, buffer);
      throw error;
    }
    if (stat === undefined || !sameSegment(identityOf(stat), reference.identity)) {
      detachQuietly(addon, buffer);
      throw stat === undefined ? notFound(segmentId, what) : changed(segmentId, what);
    }
    const attachment: Attachment = {
      segmentId,
      access,
      buffer,
      identity: reference.identity,
      run: this.#run,
      removed: stat.markedForRemoval,
    };
    this.#cache.set(key, attachment);
    return attachment;
  }

  /** The segment's status; undefined when the id names no segment (any more). */
  #stat(segmentId: number, what: string): SegmentStat | undefined {
    try {
      return this.#loadAddon().stat(segmentId);
    } catch (error) {
      if (isSysvShmSystemError(error) && (error.code === 'EINVAL' || error.code === 'EIDRM'))
        return undefined;
      throw fromSystemError(error, segmentId, what, 'read');
    }
  }

  #trim(): void {
    for (const [key, attachment] of [...this.#cache])
      if (attachment.removed && !this.#inUse(attachment)) this.#drop(key, attachment);
    for (const [key, attachment] of [...this.#cache]) {
      if (this.#cache.size <= this.#maxCached) break;
      if (!this.#inUse(attachment)) this.#drop(key, attachment);
    }
  }

  #inUse(attachment: Attachment): boolean {
    return this.#running && attachment.run === this.#run;
  }

  #drop(key: string, attachment: Attachment): void {
    this.#cache.delete(key);
    if (this.#addon) detachQuietly(this.#addon, attachment.buffer);
  }

  #loadAddon(): SysvShmAddon {
    this.#addon ??= this.#options.addon();
    return this.#addon;
  }
}

function detachQuietly(addon: SysvShmAddon, buffer: ArrayBuffer): void {
  try {
    addon.detach(buffer);
  } catch {
    // Already detached.
  }
}

function notFound(segmentId: number, what: string): SharedMemoryError {
  return new SharedMemoryError(
    'SEGMENT_NOT_FOUND',
    `${what}: shared memory segment ${segmentId} no longer exists (removed after the agent checked it); expected the segment to stay until the response`,
    segmentId,
  );
}

function changed(segmentId: number, what: string): SharedMemoryError {
  return new SharedMemoryError(
    'SEGMENT_CHANGED',
    `${what}: shared memory segment ${segmentId} is not the segment the agent checked (it was removed and its id reused, or its permissions were changed meanwhile); expected the segment to stay as it was until the response`,
    segmentId,
  );
}

function fromSystemError(
  error: unknown,
  segmentId: number,
  what: string,
  access: SegmentAccess,
): SharedMemoryError {
  const code = isSysvShmSystemError(error) ? error.code : undefined;
  const detail = error instanceof Error ? error.message : String(error);
  if (code === 'EINVAL' || code === 'EIDRM') return notFound(segmentId, what);
  if (code === 'EACCES' || code === 'EPERM')
    return new SharedMemoryError(
      'ACCESS_DENIED',
      `${what}: the agent may not attach shared memory segment ${segmentId} ${access === 'read' ? 'read-only' : 'read-write'} (${detail})`,
      segmentId,
      { cause: error },
    );
  return new SharedMemoryError(
    'ATTACH_FAILED',
    `${what}: cannot attach shared memory segment ${segmentId}: ${detail}`,
    segmentId,
    { cause: error },
  );
}

/** An input tensor over the bytes in this thread's mapping of its segment: ONNX Runtime reads them in place. */
export function segmentInputTensor(
  input: WireSegmentTensor,
  segments: WorkerSegments,
  OrtTensor: OrtTensorConstructor,
): Tensor {
  const bytes = segments.bytes(input.segment, 'read', `input tensor ${JSON.stringify(input.name)}`);
  return toOrtTensor(
    {
      name: input.name,
      type: input.type,
      dims: input.dims,
      buffer: bytes.buffer as ArrayBuffer,
      byteOffset: bytes.byteOffset,
      byteLength: bytes.byteLength,
    },
    OrtTensor,
  );
}

/**
 * Writes an output tensor into the room its caller gave it in a segment (one copy, on this thread: onnxruntime-node
 * 1.30 copies even a pre-allocated output into a new buffer, see docs/benchmarks.md); only its type and shape go
 * back. A tensor larger than the room is an error, and nothing is written.
 */
export function writeOutputToSegment(
  name: string,
  tensor: Tensor,
  room: SegmentReference,
  segments: WorkerSegments,
): WireSegmentOutput {
  const data = tensor.data as ArrayBufferView & { BYTES_PER_ELEMENT?: number };
  const what = `output ${JSON.stringify(name)}`;
  if (!ArrayBuffer.isView(data))
    throw new Error(`${what} is a ${tensor.type} tensor, which cannot be written into shared memory`);
  if (data.byteLength > room.byteLength)
    throw new SharedMemoryError(
      'OUT_OF_BOUNDS',
      `${what} is ${data.byteLength} bytes, but shared_memory_byte_size gives it ${room.byteLength}; expected room for the whole tensor`,
      room.segmentId,
    );
  const target = segments.bytes({ ...room, byteLength: data.byteLength }, 'write', what);
  target.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  if (!HOST_IS_LITTLE_ENDIAN) swapBytesInPlace(target, data.BYTES_PER_ELEMENT ?? 1);
  return {
    name,
    type: tensor.type as OrtTensorType,
    dims: [...tensor.dims],
    byteLength: data.byteLength,
    inSegment: true,
  };
}
