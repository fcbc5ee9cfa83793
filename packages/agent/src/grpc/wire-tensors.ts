import { status } from '@grpc/grpc-js';
import {
  DATA_TYPES,
  DATA_TYPE_NAMES,
  dataTypeFromWire,
  elementSize,
  type AuxiliaryData,
  type CaptureDataRequest,
  type DataTypeName,
  type SharedMemoryHandle,
  type TensorMetadata,
  type WireTensorMetadata,
  type MessageInit,
  type Model,
  type Tensor,
  MAX_TENSOR_ELEMENTS,
  MAX_TENSOR_RANK,
} from '@edgefleet/core';
import type { CaptureAuxiliaryInput, CaptureRequest } from '../capture/index.js';
import {
  AgentError,
  showTensorName,
  tensorNameBytes,
  type ModelDescription,
  type PredictOutput,
  type PredictTensor,
} from '../models/index.js';
import {
  SharedMemoryError,
  type PeerCredentials,
  type SegmentLease,
  type SharedMemoryReader,
} from '../shm/index.js';
import { GrpcStatusError } from './grpc-errors.js';

/** Beyond these a request is malformed, not just large (the registry applies the same limits). */

const EMPTY = Buffer.alloc(0);

const DATA_TYPE_LIST = DATA_TYPE_NAMES.map((name) => `${DATA_TYPES[name].wire} (${name})`).join(', ');

/** A manifest tensor as the wire's TensorMetadata: the name as UTF-8 bytes, the type as its DataType number. */
export function toWireMetadata(tensor: TensorMetadata): MessageInit<WireTensorMetadata> {
  return {
    name: tensorNameBytes(tensor.name),
    dataType: DATA_TYPES[tensor.dataType].wire,
    shape: tensor.shape,
  };
}

/** A loaded model as the wire's Model: `handle` and the deprecated `name` both carry its name. */
export function toWireModel(model: ModelDescription): MessageInit<Model> {
  return {
    url: model.url,
    name: model.name,
    handle: model.name,
    inputTensorMetadatas: model.inputs.map(toWireMetadata),
    outputTensorMetadatas: model.outputs.map(toWireMetadata),
  };
}

/** An output of a prediction as a wire Tensor: always byte_data, with the tensor's real shape. */
export function toWireOutput(output: PredictOutput): MessageInit<Tensor> {
  return {
    tensorMetadata: { name: output.name, dataType: DATA_TYPES[output.dataType].wire, shape: output.shape },
    byteData: output.data,
  };
}

/** Where a request's shared memory segments are read (null: no addon), for whom, and the leases taken. */
export interface SegmentSource {
  reader: SharedMemoryReader | null;
  /** The caller's credentials (null: unknown, so no segment is read). */
  caller: PeerCredentials | null;
  /** Each segment read adds its lease; the caller releases them once done with the bytes. */
  leases: SegmentLease[];
}

/**
 * The one decoder of the wire's tensors, for Predict and CaptureData alike: the metadata must be there and its
 * data type known; the bytes are byte_data, or read from the System V segment a shared_memory_handle names
 * (whose tensor then needs a whole shape, to know how many bytes to read). Bytes stay views into the request or
 * the segment; a segment read adds its lease to `segments.leases`.
 * Checks only what is needed to find the bytes; the in-process APIs check the rest. `label` says which tensor
 * ("input tensor #2"). Throws AgentError INVALID_ARGUMENT, FAILED_PRECONDITION (no shared memory reader),
 * INTERNAL, or GrpcStatusError PERMISSION_DENIED for a segment the caller may not read (or any segment, when
 * the caller is not known).
 */
export function fromWireTensor(tensor: Tensor, label: string, segments: SegmentSource): PredictTensor {
  const metadata = tensor.tensorMetadata;
  if (metadata === null || metadata === undefined) {
    throw new AgentError(
      'INVALID_ARGUMENT',
      `${label} has no tensor_metadata; expected its name, data_type and shape (copy them from DescribeModel)`,
    );
  }
  // Only messages need the name shown (decoding and quoting it costs more than the rest of this function).
  const named = (): string => `${label} ${showTensorName(metadata.name)}`;
  const dataType = dataTypeFromWire(metadata.dataType);
  if (dataType === undefined) {
    throw new AgentError(
      'INVALID_ARGUMENT',
      `${named()} has data_type ${metadata.dataType}, which is not a DataType; expected one of ${DATA_TYPE_LIST}`,
    );
  }
  if (tensor.data === 'sharedMemoryHandle' && tensor.sharedMemoryHandle) {
    // The lease's reference lets a worker map the segment itself instead of getting a copy of the bytes.
    const lease = readTensorSegment(tensor.sharedMemoryHandle, named(), dataType, metadata.shape, segments);
    return {
      name: metadata.name,
      dataType,
      shape: metadata.shape,
      data: lease.data,
      segment: lease.reference,
    };
  }
  return { name: metadata.name, dataType, shape: metadata.shape, data: tensor.byteData ?? EMPTY };
}

/**
 * An auxiliary data item of CaptureData: its bytes from byte_data or shared memory (whose handle must then give
 * the size: auxiliary data has no shape). Errors as fromWireTensor.
 */
export function fromWireAuxiliary(
  item: AuxiliaryData,
  label: string,
  segments: SegmentSource,
): CaptureAuxiliaryInput {
  let data: Uint8Array = item.byteData ?? EMPTY;
  if (item.data === 'sharedMemoryHandle' && item.sharedMemoryHandle) {
    const size = item.sharedMemoryHandle.size;
    if (size === 0) {
      throw new AgentError(
        'INVALID_ARGUMENT',
        `${label} names shared memory with size 0; auxiliary data has no shape to derive its length from, so expected its size in bytes`,
      );
    }
    data = readSegment(item.sharedMemoryHandle, size, label, segments).data;
  }
  return { name: item.name, encoding: item.encoding, data };
}

/** CaptureData's tensors and auxiliary items decoded (see fromWireTensor); the capture service checks the rest. */
export function fromWireCaptureRequest(request: CaptureDataRequest, segments: SegmentSource): CaptureRequest {
  const id = request.captureId;
  const label = `capture ${JSON.stringify(id.length > 80 ? `${id.slice(0, 77)}...` : id)}`;
  return {
    ...request,
    inputTensors: (request.inputTensors ?? []).map((t, i) =>
      fromWireTensor(t, `${label}: input tensor #${i + 1}`, segments),
    ),
    outputTensors: (request.outputTensors ?? []).map((t, i) =>
      fromWireTensor(t, `${label}: output tensor #${i + 1}`, segments),
    ),
    inputs: (request.inputs ?? []).map((a, i) =>
      fromWireAuxiliary(a, `${label}: auxiliary input #${i + 1}`, segments),
    ),
    outputs: (request.outputs ?? []).map((a, i) =>
      fromWireAuxiliary(a, `${label}: auxiliary output #${i + 1}`, segments),
    ),
  };
}

function readTensorSegment(
  handle: SharedMemoryHandle,
  named: string,
  dataType: DataTypeName,
  shape: readonly number[],
  segments: SegmentSource,
): SegmentLease {
  if (shape.length > MAX_TENSOR_RANK || shape.some((d) => !Number.isSafeInteger(d) || d < 0)) {
    throw new AgentError(
      'INVALID_ARGUMENT',
      `${named} has shape [${shape.join(', ')}]; a tensor in shared memory needs its real shape (every dimension ≥ 0, at most ${MAX_TENSOR_RANK} of them) to know how many bytes to read`,
    );
  }
  const elements = shape.reduce((n, d) => n * d, 1);
  if (elements > MAX_TENSOR_ELEMENTS) {
    throw new AgentError(
      'INVALID_ARGUMENT',
      `${named} has shape [${shape.join(', ')}], ${elements} elements; at most ${MAX_TENSOR_ELEMENTS} are accepted`,
    );
  }
  return readSegment(handle, elements * elementSize(dataType), named, segments);
}

function readSegment(
  handle: SharedMemoryHandle,
  length: number,
  named: string,
  { reader, caller, leases }: SegmentSource,
): SegmentLease {
  if (reader === null) {
    throw new AgentError(
      'FAILED_PRECONDITION',
      `${named} is in shared memory, but this agent cannot read System V shared memory (its native addon is not built: run \`npm run build:native -w @edgefleet/agent\`); send the tensor as byte_data instead`,
    );
  }
  const location = { segmentId: handle.segmentId, offset: handle.offset, size: handle.size };
  try {
    const lease = reader.readTensorFromSegment(location, length, caller);
    leases.push(lease);
    return lease;
  } catch (error) {
    if (!(error instanceof SharedMemoryError)) throw error;
    const message = `${named}: ${error.message}`;
    switch (error.code) {
      case 'ACCESS_DENIED':
        throw new GrpcStatusError(status.PERMISSION_DENIED, message);
      case 'ATTACH_FAILED':
        throw new AgentError('INTERNAL', message);
      default:
        throw new AgentError('INVALID_ARGUMENT', message);
    }
  }
}
