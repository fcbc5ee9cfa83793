import {
  DATA_TYPES,
  byteLength,
  elementSize,
  shapeMismatch,
  type DataTypeName,
  type TensorMetadata,
  MAX_TENSOR_ELEMENTS,
  MAX_TENSOR_RANK,
} from '@edgefleet/core';
import type { PoolTensor } from '../inference/index.js';
import type { SegmentReference } from '../shm/index.js';
import { AgentError } from './agent-error.js';
import { declaredNameBytes, showTensorName } from './tensor-names.js';

/** One input tensor of a Predict request, as an adapter hands it over. */
export interface PredictTensor {
  /** The name the client sent, as bytes (it may not be UTF-8); empty when the client sent none. */
  name: Uint8Array;
  dataType: DataTypeName;
  shape: readonly number[];
  /** Little-endian, row-major bytes; exactly shape × element size of them. */
  data: Uint8Array;
  /** Where `data` lies in System V shared memory, checked for the caller: a worker then maps it itself. */
  segment?: SegmentReference;
}

function describeInputs(inputs: readonly TensorMetadata[]): string {
  return inputs.map((i) => `${JSON.stringify(i.name)}: ${i.dataType} [${i.shape.join(', ')}]`).join(', ');
}

/**
 * Checks a request's tensors against the model's declared inputs and puts them in the model's input order.
 *
 * Matching: when every given tensor's name equals (byte for byte) a distinct model input name, tensors are
 * matched by name, in any order; otherwise they are matched by position (the i-th tensor is the i-th input),
 * whatever their names — clients that leave names empty or send stale ones keep working.
 * Then, per tensor: the data type must be the declared one; the shape must have the declared rank and equal
 * every declared dimension except -1 (any); the data must be exactly shape × element size bytes.
 * Throws AgentError INVALID_ARGUMENT saying which tensor is wrong and what was expected.
 */
export function matchPredictInputs(
  modelName: string,
  declared: readonly TensorMetadata[],
  given: readonly PredictTensor[],
): PoolTensor[] {
  const invalid = (message: string): never => {
    throw new AgentError('INVALID_ARGUMENT', message);
  };
  if (given.length !== declared.length) {
    invalid(
      `model ${JSON.stringify(modelName)} takes ${declared.length} input tensor${declared.length === 1 ? '' : 's'} (${describeInputs(declared)}); the request has ${given.length}`,
    );
  }
  const declaredNames = declaredNameBytes(declared);
  // Most requests name every tensor after its input, in the model's order: no search, no Set.
  let matchedByName = true;
  let inOrder = true;
  let byName: number[] | undefined;
  for (let position = 0; position < given.length; position++) {
    if (declaredNames[position]!.equals(given[position]!.name)) continue;
    inOrder = false;
    break;
  }
  if (!inOrder) {
    byName = given.map((tensor) => declaredNames.findIndex((name) => name.equals(tensor.name)));
    matchedByName = byName.every((index) => index >= 0) && new Set(byName).size === byName.length;
  }
  const ordered: PoolTensor[] = new Array(declared.length);
  for (let position = 0; position < given.length; position++) {
    const tensor = given[position]!;
    const index = matchedByName && byName ? byName[position]! : position;
    const want = declared[index]!;
    // Built only for an error message: a request that passes never pays for it.
    const label = (): string =>
      `input tensor ${showTensorName(tensor.name)} (#${position + 1}, matched ${matchedByName ? 'by name' : 'by position'} to model input ${JSON.stringify(want.name)})`;
    if (!Object.hasOwn(DATA_TYPES, tensor.dataType)) {
      invalid(`${label()} has data type ${String(tensor.dataType)}; expected ${want.dataType}`);
    }
    if (tensor.dataType !== want.dataType) {
      invalid(`${label()} is ${tensor.dataType}; the model expects ${want.dataType}`);
    }
    const shape = [...tensor.shape];
    if (shape.length > MAX_TENSOR_RANK || shape.some((d) => !Number.isSafeInteger(d))) {
      invalid(
        `${label()} has shape [${shape.join(', ')}]; expected whole-number dimensions matching [${want.shape.join(', ')}] (-1 = any)`,
      );
    }
    const mismatch = shapeMismatch(want.shape, shape);
    if (mismatch) invalid(`${label()}: shape [${shape.join(', ')}] does not fit the model: ${mismatch}`);
    const elements = shape.reduce((n, d) => n * d, 1);
    if (elements > MAX_TENSOR_ELEMENTS)
      invalid(
        `${label()} has shape [${shape.join(', ')}], ${elements} elements; at most ${MAX_TENSOR_ELEMENTS} are accepted`,
      );
    const expectedBytes = byteLength(tensor.dataType, shape);
    if (tensor.data.byteLength !== expectedBytes) {
      invalid(
        `${label()} has ${tensor.data.byteLength} bytes of data; shape [${shape.join(', ')}] of ${tensor.dataType} needs ${expectedBytes} (${elements} elements × ${elementSize(tensor.dataType)} bytes)`,
      );
    }
    ordered[index] = tensor.segment
      ? { name: want.name, dataType: tensor.dataType, shape, data: tensor.data, segment: tensor.segment }
      : { name: want.name, dataType: tensor.dataType, shape, data: tensor.data };
  }
  return ordered;
}

/** Inputs of zeros in each declared shape, -1 taken as 1: the warm-up inference after a load. */
export function warmUpInputs(declared: readonly TensorMetadata[]): PoolTensor[] {
  return declared.map((input) => {
    const shape = input.shape.map((d) => (d === -1 ? 1 : d));
    return {
      name: input.name,
      dataType: input.dataType,
      shape,
      data: new Uint8Array(byteLength(input.dataType, shape)),
    };
  });
}
