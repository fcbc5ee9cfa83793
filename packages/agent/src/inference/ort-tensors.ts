/**
 * Wire tensors ↔ onnxruntime-node tensors, shared by the inference workers and the inline runner (the agent's
 * event loop), so both paths build feeds and read results the same way.
 */
import type { Tensor } from 'onnxruntime-node';
import type { OrtTensorType, WireTensor } from './protocol.js';
import { HOST_IS_LITTLE_ENDIAN, TYPED_ARRAY_FOR, swapBytesInPlace } from './tensor-bytes.js';

/** onnxruntime-node's Tensor constructor, passed in so that importing this module does not load ONNX Runtime. */
export type OrtTensorConstructor = new (
  type: OrtTensorType,
  data: Tensor.DataTypeMap[OrtTensorType],
  dims: readonly number[],
) => Tensor;

/**
 * A tensor ONNX Runtime reads straight from the wire bytes: no copy, except where onnxruntime-node cannot use
 * the bytes where they are (it refuses tensors over a SharedArrayBuffer, typed arrays need aligned offsets, and a
 * big-endian host needs its own byte order); then one.
 */
export function toOrtTensor(wire: WireTensor, OrtTensor: OrtTensorConstructor): Tensor {
  const Typed = TYPED_ARRAY_FOR[wire.type];
  const size = Typed.BYTES_PER_ELEMENT;
  let buffer = wire.buffer;
  let offset = wire.byteOffset;
  if (buffer instanceof SharedArrayBuffer || offset % size !== 0 || !HOST_IS_LITTLE_ENDIAN) {
    const copy = new Uint8Array(wire.byteLength);
    copy.set(new Uint8Array(buffer, offset, wire.byteLength));
    if (!HOST_IS_LITTLE_ENDIAN) swapBytesInPlace(copy, size);
    buffer = copy.buffer;
    offset = 0;
  }
  const data = new Typed(buffer as ArrayBuffer, offset, wire.byteLength / size);
  return new OrtTensor(wire.type, data as Tensor.DataTypeMap[OrtTensorType], wire.dims);
}

/**
 * An output tensor as wire bytes, without a copy when the tensor owns its whole buffer (what ONNX Runtime
 * returns); that buffer is added to `transfer` (for a postMessage back to the event loop).
 */
export function outputToWire(name: string, tensor: Tensor, transfer: ArrayBuffer[]): WireTensor {
  const data = tensor.data as ArrayBufferView;
  let bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const owned =
    data.byteOffset === 0 && data.byteLength === data.buffer.byteLength && data.buffer instanceof ArrayBuffer;
  if (!owned) bytes = bytes.slice();
  if (!HOST_IS_LITTLE_ENDIAN) swapBytesInPlace(bytes, (data as Uint8Array).BYTES_PER_ELEMENT);
  transfer.push(bytes.buffer as ArrayBuffer);
  return {
    name,
    type: tensor.type as OrtTensorType,
    dims: [...tensor.dims],
    buffer: bytes.buffer,
    byteOffset: 0,
    byteLength: bytes.byteLength,
  };
}
