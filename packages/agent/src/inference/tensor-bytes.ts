import { endianness } from 'node:os';
import type { OrtTensorType } from './protocol.js';

type TypedArrayConstructor =
  | Uint8ArrayConstructor
  | Int16ArrayConstructor
  | Int32ArrayConstructor
  | BigInt64ArrayConstructor
  | Uint16ArrayConstructor
  | Float32ArrayConstructor
  | Float64ArrayConstructor;

/** The typed array onnxruntime-node takes for each tensor type (float16 travels as its raw 16-bit words). */
export const TYPED_ARRAY_FOR: Record<OrtTensorType, TypedArrayConstructor> = {
  uint8: Uint8Array,
  int16: Int16Array,
  int32: Int32Array,
  int64: BigInt64Array,
  float16: Uint16Array,
  float32: Float32Array,
  float64: Float64Array,
};

export const HOST_IS_LITTLE_ENDIAN = endianness() === 'LE';

/**
 * Reverses each element's bytes in place: the wire format is little-endian, so on a big-endian host tensor
 * bytes are swapped on the way in and on the way out. A no-op for one-byte elements.
 */
export function swapBytesInPlace(bytes: Uint8Array, elementSize: number): void {
  if (elementSize === 1) return;
  for (let i = 0; i + elementSize <= bytes.length; i += elementSize) {
    for (let a = i, b = i + elementSize - 1; a < b; a++, b--) {
      const t = bytes[a]!;
      bytes[a] = bytes[b]!;
      bytes[b] = t;
    }
  }
}
