import { status } from '@grpc/grpc-js';
import {
  DATA_TYPES,
  DATA_TYPE_NAMES,
  dataTypeFromWire,
  elementSize,
  type DataTypeName,
  type TensorMetadata,
  type WireTensorMetadata,
  type MessageInit,
  type Model,
  type Tensor,
} from '@edgefleet/core';
import {
  AgentError,
  showTensorName,
  tensorNameBytes,
  type ModelDescription,
  type PredictOutput,
  type PredictTensor,
} from '../models/index.js';
import { SharedMemoryError, type SegmentLease, type SharedMemoryReader } from '../shm/index.js';
import { GrpcStatusError } from './grpc-errors.js';

/** Beyond these a request is malformed, not just large (the registry applies the same limits). */
const MAX_RANK = 32;
const MAX_ELEMENTS = 2 ** 40;

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

/**
 * The i-th tensor of a Predict request as the registry takes it. Bytes stay views into the request (or into
 * the shared memory segment); a segment read adds its lease to `leases`, which the caller releases once the
 * prediction is over. Checks only what is needed to find the bytes; the registry checks the rest against the
 * model. Throws AgentError INVALID_ARGUMENT, or GrpcStatusError for a segment the agent may not read.
 */
export function fromWireTensor(
  tensor: Tensor,
  position: number,
  sharedMemory: SharedMemoryReader | null,
  leases: SegmentLease[],
): PredictTensor {
  const metadata = tensor.tensorMetadata;
  const label = `input tensor #${position + 1}`;
  if (metadata === null) {
    throw new AgentError(
      'INVALID_ARGUMENT',
      `${label} has no tensor_metadata; expected its name, data_type and shape (copy them from DescribeModel)`,
    );
  }
  const named = `${label} ${showTensorName(metadata.name)}`;
  const dataType = dataTypeFromWire(metadata.dataType);
  if (dataType === undefined) {
    throw new AgentError(
      'INVALID_ARGUMENT',
      `${named} has data_type ${metadata.dataType}, which is not a DataType; expected one of ${DATA_TYPE_LIST}`,
    );
  }
  const data =
    tensor.data === 'sharedMemoryHandle'
      ? readSegment(tensor, named, dataType, metadata.shape, sharedMemory, leases)
      : (tensor.byteData ?? EMPTY);
  return { name: metadata.name, dataType, shape: metadata.shape, data };
}

function readSegment(
  tensor: Tensor,
  named: string,
  dataType: DataTypeName,
  shape: readonly number[],
  sharedMemory: SharedMemoryReader | null,
  leases: SegmentLease[],
): Buffer {
  const handle = tensor.sharedMemoryHandle!;
  if (sharedMemory === null) {
    throw new AgentError(
      'FAILED_PRECONDITION',
      `${named} is in shared memory, but this agent cannot read System V shared memory (its native addon is not built: run \`npm run build:native -w @edgefleet/agent\`); send the tensor as byte_data instead`,
    );
  }
  if (shape.length > MAX_RANK || shape.some((d) => d < 0)) {
    throw new AgentError(
      'INVALID_ARGUMENT',
      `${named} has shape [${shape.join(', ')}]; a tensor in shared memory needs its real shape (every dimension ≥ 0, at most ${MAX_RANK} of them) to know how many bytes to read`,
    );
  }
  const elements = shape.reduce((n, d) => n * d, 1);
  if (elements > MAX_ELEMENTS) {
    throw new AgentError(
      'INVALID_ARGUMENT',
      `${named} has shape [${shape.join(', ')}], ${elements} elements; at most ${MAX_ELEMENTS} are accepted`,
    );
  }
  const location = { segmentId: handle.segmentId, offset: handle.offset, size: handle.size };
  try {
    const lease = sharedMemory.readTensorFromSegment(location, elements * elementSize(dataType));
    leases.push(lease);
    return lease.data;
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
