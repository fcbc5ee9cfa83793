/**
 * System V segments as an inference worker maps them itself: the agent's event loop checks a caller's
 * permission and the bounds, then hands the worker a SegmentReference instead of the bytes; the worker attaches
 * the segment (read-only for inputs, read-write for outputs); ONNX Runtime reads inputs where they lie (unless
 * misaligned, see ort-tensors.ts) and the worker writes outputs there, so no tensor is copied through the event
 * loop.
 *
 * Checks on every use, here being authoritative: the id still names the segment the event loop checked, with the
 * permissions it checked (IPC_STAT against its identity: size, creator, ctime, mode, owner and creator ids), and
 * the bytes lie inside the mapping. Attachments are kept for reuse (clients reuse their segments) up to a bound,
 * and let go of when their segment is removed or marked for removal (`sweep`, on the worker's timer and on every
 * attach; one already marked when attached is let go of when its run ends). While we hold a segment attached the
 * kernel cannot give its id to another one, so a cached mapping is always the segment its id names. Nothing is
 * unmapped while a run may use it (`beginRun`/`endRun`).
 */
import { markAsUntransferable } from 'node:worker_threads';
import type { Tensor } from 'onnxruntime-node';
import { toOrtTensor, type OrtTensorConstructor } from './ort-tensors.js';
import type { OrtTensorType, WireSegmentOutput, WireSegmentTensor } from './protocol.js';
import { HOST_IS_LITTLE_ENDIAN, swapBytesInPlace } from './tensor-bytes.js';
import {
  SharedMemoryError,
  detachQuietly,
  identityOf,
  sameSegment,
  sharedMemoryErrorOf,
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
      // We hold it, so the id names the same segment; but an IPC_SET (chmod, chown) may have come since the event
      // loop checked it: one IPC_STAT per use (cheap next to mapping it afresh) tells.
      if (!sameSegment(identityOf(this.#stat(segmentId, what)), reference.identity))
        throw changed(segmentId, what);
      return cached;
    }
    const addon = this.#loadAddon();
    this.sweep();
    let buffer: ArrayBuffer;
    try {
      buffer = access === 'read' ? addon.attachReadOnly(segmentId) : addon.attachReadWrite(segmentId);
    } catch (error) {
      throw sharedMemoryErrorOf(error, segmentId, {
        action: `attach it ${access === 'read' ? 'read-only' : 'read-write'}`,
        access,
        what,
      });
    }
    // Transferring it back to the event loop would hand over memory we unmap later.
    markAsUntransferable(buffer);
    let stat: SegmentStat;
    try {
      stat = this.#stat(segmentId, what);
    } catch (error) {
      detachQuietly(addon, buffer);
      throw error;
    }
    if (!sameSegment(identityOf(stat), reference.identity)) {
      detachQuietly(addon, buffer);
      throw changed(segmentId, what);
    }
    const attachment: Attachment = {
      segmentId,
      access,
      buffer,
      run: this.#run,
      removed: stat.markedForRemoval,
    };
    this.#cache.set(key, attachment);
    return attachment;
  }

  /** The segment's status. @throws SharedMemoryError (SEGMENT_NOT_FOUND once it is gone). */
  #stat(segmentId: number, what: string): SegmentStat {
    try {
      return this.#loadAddon().stat(segmentId);
    } catch (error) {
      throw sharedMemoryErrorOf(error, segmentId, { action: 'read the status of', what });
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

function changed(segmentId: number, what: string): SharedMemoryError {
  return new SharedMemoryError(
    'SEGMENT_CHANGED',
    `${what}: shared memory segment ${segmentId} is not the segment the agent checked (it was removed and its id reused, or its permissions were changed meanwhile); expected the segment to stay as it was until the response`,
    segmentId,
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
