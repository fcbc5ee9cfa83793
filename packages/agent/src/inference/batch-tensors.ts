/**
 * Dynamic batching's bytes, in the worker: the requests' tensors joined along the batch dimension into one, and a
 * joined output split back into each request's slice. Row-major: along axis k a tensor is `outer` blocks (the
 * product of the dimensions before k), each holding its size along k times `inner` bytes (the product of the
 * dimensions after k, times the element size); joining lays the requests' blocks side by side, block by block.
 */
import type { WireTensor } from './protocol.js';

/** A tensor's bytes and shape, before it is handed to ONNX Runtime or sent back. */
export interface ShapedBytes {
  dims: number[];
  bytes: Uint8Array;
}

function product(dims: readonly number[], from: number, to: number): number {
  let p = 1;
  for (let i = from; i < to; i++) p *= dims[i]!;
  return p;
}

function bytesOf(tensor: WireTensor): Uint8Array {
  return new Uint8Array(tensor.buffer, tensor.byteOffset, tensor.byteLength);
}

/**
 * The tensors joined along `axis` (they have the same type, of `elementSize` bytes, and the same dimensions but
 * along it, their bytes filling them: their join keys in batching.ts saw to that). The result is always a fresh
 * buffer.
 */
export function joinAlong(tensors: readonly WireTensor[], axis: number, elementSize: number): ShapedBytes {
  const first = tensors[0]!;
  const dims = [...first.dims];
  dims[axis] = tensors.reduce((sum, t) => sum + t.dims[axis]!, 0);
  const outer = product(dims, 0, axis);
  const inner = product(dims, axis + 1, dims.length) * elementSize;
  const bytes = new Uint8Array(product(dims, 0, dims.length) * elementSize);
  const sources = tensors.map(bytesOf);
  let at = 0;
  for (let block = 0; block < outer; block++) {
    for (let r = 0; r < tensors.length; r++) {
      const width = tensors[r]!.dims[axis]! * inner;
      bytes.set(sources[r]!.subarray(block * width, (block + 1) * width), at);
      at += width;
    }
  }
  return { dims, bytes };
}

/**
 * A joined output split along `axis` into slices of `counts` (the requests' sizes along it, in order; their sum is
 * the output's size there). Each slice is a fresh buffer of its own, to be transferred to the event loop.
 */
export function splitAlong(
  joined: ShapedBytes,
  axis: number,
  counts: readonly number[],
  elementSize: number,
): ShapedBytes[] {
  const { dims } = joined;
  const outer = product(dims, 0, axis);
  const inner = product(dims, axis + 1, dims.length) * elementSize;
  const total = dims[axis]! * inner;
  let offset = 0;
  return counts.map((count) => {
    const width = count * inner;
    const bytes = new Uint8Array(outer * width);
    for (let block = 0; block < outer; block++) {
      const from = block * total + offset;
      bytes.set(joined.bytes.subarray(from, from + width), block * width);
    }
    offset += width;
    const sliceDims = [...dims];
    sliceDims[axis] = count;
    return { dims: sliceDims, bytes };
  });
}
