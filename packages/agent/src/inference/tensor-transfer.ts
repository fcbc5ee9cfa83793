/**
 * How tensors cross between the agent's event loop and the inference workers: input bytes are transferred
 * (no copy) when the caller gives them up, shared when they live in a SharedArrayBuffer, copied once otherwise;
 * outputs come back as views of the buffers the worker transferred.
 */
import { DATA_TYPES, dataTypeFromOrt, type DataTypeName } from '@edgefleet/core';
import { InferenceError } from './errors.js';
import type { SegmentReference } from '../shm/segment-reference.js';
import type { WireInput, WireSegmentOutput, WireTensor } from './protocol.js';

/** A tensor handed to the pool: little-endian, row-major bytes. */
export interface PoolTensor {
  name: string;
  dataType: DataTypeName;
  shape: number[];
  data: Uint8Array;
  /**
   * An input: where `data` lies in System V shared memory (checked by the event loop); a worker maps the segment
   * and reads the bytes there rather than get a copy. The inline path reads `data`.
   */
  segment?: SegmentReference;
  /** An output the worker wrote into the segment the run named for it (RunOptions.outputSegments): `data` is empty. */
  writtenToSegment?: boolean;
}

/**
 * How input bytes reached the workers: transferred without a copy; shared (a SharedArrayBuffer, copied once
 * inside the worker, off the event loop); copied once on this thread (`copies` counts those tensors); in System V
 * shared memory the worker maps itself (`segment`: not sent; copied only inside the worker, and only when
 * misaligned or on a big-endian host, see ort-tensors.ts).
 */
export interface InputByteCounts {
  transferred: number;
  shared: number;
  copied: number;
  copies: number;
  segment: number;
}

export interface PreparedInputs {
  wire: WireInput[];
  /** Buffers to transfer with the message. */
  transfer: ArrayBuffer[];
}

/**
 * The pool's tensors as wire tensors. With `transferOwned`, a tensor whose bytes fill their whole ArrayBuffer
 * is transferred (the caller's buffer is detached once posted). A tensor that is a view into `ownedBuffer` (a
 * buffer the caller gives up in full, e.g. a gRPC message of its own) travels inside it: the buffer is
 * transferred once, however many tensors lie in it. Any other view (into a buffer someone else may hold, such as
 * Node's Buffer pool) is copied once, so that transferring cannot detach someone else's bytes.
 */
export function prepareInputs(
  inputs: readonly PoolTensor[],
  transferOwned: boolean,
  counts: InputByteCounts,
  ownedBuffer?: ArrayBuffer,
): PreparedInputs {
  const transfer: ArrayBuffer[] = [];
  const wire = inputs.map((input): WireInput => {
    const { data } = input;
    const name = input.name;
    const type = DATA_TYPES[input.dataType].ort;
    const dims = input.shape;
    const byteLength = data.byteLength;
    if (input.segment) {
      counts.segment += byteLength;
      return { name, type, dims, segment: input.segment };
    }
    if (data.buffer instanceof SharedArrayBuffer) {
      counts.shared += byteLength;
      return { name, type, dims, byteLength, buffer: data.buffer, byteOffset: data.byteOffset };
    }
    const buffer = data.buffer as ArrayBuffer;
    if (buffer === ownedBuffer && buffer.byteLength > 0) {
      if (!transfer.includes(buffer)) transfer.push(buffer);
      counts.transferred += byteLength;
      return { name, type, dims, byteLength, buffer, byteOffset: data.byteOffset };
    }
    const whole = data.byteOffset === 0 && byteLength === buffer.byteLength;
    if (transferOwned && whole && !transfer.includes(buffer) && buffer.byteLength > 0) {
      transfer.push(buffer);
      counts.transferred += byteLength;
      return { name, type, dims, byteLength, buffer, byteOffset: 0 };
    }
    const copy = new Uint8Array(byteLength);
    copy.set(data);
    transfer.push(copy.buffer);
    counts.copied += byteLength;
    counts.copies++;
    return { name, type, dims, byteLength, buffer: copy.buffer, byteOffset: 0 };
  });
  return { wire, transfer };
}

/**
 * The inputs as wire tensors for a run on this thread (the inline path): nothing crosses a thread, so nothing is
 * copied or transferred here; ONNX Runtime reads the caller's bytes where they are.
 */
export function inputsInPlace(inputs: readonly PoolTensor[]): WireTensor[] {
  return inputs.map((input) => ({
    name: input.name,
    type: DATA_TYPES[input.dataType].ort,
    dims: input.shape,
    buffer: input.data.buffer,
    byteOffset: input.data.byteOffset,
    byteLength: input.data.byteLength,
  }));
}

/**
 * Copies of wire tensors into fresh ArrayBuffers, for when a buffer cannot be transferred (an external one,
 * e.g. mapped memory). A failed postMessage detaches nothing, so the original bytes are still there to copy.
 */
export function copiedInputs(wire: readonly WireInput[], counts: InputByteCounts): PreparedInputs {
  const transfer: ArrayBuffer[] = [];
  const copies = wire.map((input) => {
    if ('segment' in input) return input;
    const copy = new Uint8Array(input.byteLength);
    copy.set(new Uint8Array(input.buffer, input.byteOffset, input.byteLength));
    counts.copied += input.byteLength;
    counts.copies++;
    transfer.push(copy.buffer);
    return { ...input, buffer: copy.buffer, byteOffset: 0 };
  });
  return { wire: copies, transfer };
}

/** A worker's (or the inline runner's) output tensor as the pool's. */
export function fromWire(tensor: WireTensor | WireSegmentOutput): PoolTensor {
  const dataType = dataTypeFromOrt(tensor.type);
  if (!dataType)
    throw new InferenceError(
      'run-failed',
      `the model returned a ${tensor.type} tensor, which SageMaker Edge cannot express`,
    );
  if ('inSegment' in tensor)
    return {
      name: tensor.name,
      dataType,
      shape: tensor.dims,
      data: new Uint8Array(0),
      writtenToSegment: true,
    };
  return {
    name: tensor.name,
    dataType,
    shape: tensor.dims,
    data: new Uint8Array(tensor.buffer, tensor.byteOffset, tensor.byteLength),
  };
}
