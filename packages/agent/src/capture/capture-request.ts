import {
  DATA_TYPES,
  dataTypeFromWire,
  elementSize,
  type AuxiliaryData,
  type CaptureDataRequest,
  type Tensor,
} from '@edgefleet/core';
import { AgentError, checkModelName, showTensorName } from '../models/index.js';
import { SharedMemoryError, type SharedMemoryReader } from '../shm/index.js';
import {
  AUXILIARY_ENCODINGS,
  type CaptureItem,
  type CapturedAuxiliary,
  type CapturedTensor,
} from './capture-item.js';

/** Longest capture_id taken: the spec says any non-empty string "up to a sane length". */
export const MAX_CAPTURE_ID_LENGTH = 256;
const MAX_RANK = 32;
const MAX_ELEMENTS = 2 ** 40;
const MAX_CONTENT_TYPE_LENGTH = 256;

/** What capture needs to know of the loaded models (ModelRegistry fits). */
export interface CaptureModelCatalog {
  /** Throws AgentError NOT_FOUND when no such model is loaded. */
  describe(name: string): { name: string; version: string };
}

export interface CaptureRequestContext {
  models: CaptureModelCatalog;
  /** Absent: requests naming shared memory are refused with FAILED_PRECONDITION. */
  sharedMemory?: SharedMemoryReader;
  now: number;
  futureToleranceMs: number;
}

/**
 * Checks a CaptureDataRequest and turns it into a capture: the model (model_handle, or the deprecated
 * model_name; the handle wins) must be loaded; the id non-empty, at most 256 characters, no control characters;
 * the timestamp valid and not in the future; every tensor's type known, shape whole and non-negative, and data
 * exactly shape × element size bytes (inline or in a System V segment); every auxiliary item's encoding known.
 * Bytes are copied: the capture owns them. Throws AgentError (INVALID_ARGUMENT, NOT_FOUND, OUT_OF_RANGE,
 * FAILED_PRECONDITION, INTERNAL).
 */
export function captureItemFromRequest(
  request: CaptureDataRequest,
  context: CaptureRequestContext,
): CaptureItem {
  const captureId = checkCaptureId(request.captureId);
  const name = request.modelHandle !== '' ? request.modelHandle : request.modelName;
  if (name === '' || name === undefined) {
    throw new AgentError(
      'INVALID_ARGUMENT',
      `capture ${JSON.stringify(captureId)} names no model; expected model_handle (or the older model_name) of a loaded model`,
    );
  }
  checkModelName(name);
  const model = context.models.describe(name);
  const inferenceTime = inferenceTimeOf(request, context);
  const label = `capture ${JSON.stringify(captureId)}`;
  const item: CaptureItem = {
    captureId,
    model: model.name,
    modelVersion: model.version,
    inferenceTime,
    receivedAt: context.now,
    source: 'api',
    inputTensors: (request.inputTensors ?? []).map((t, i) =>
      capturedTensor(t, `${label}: input tensor #${i + 1}`, context),
    ),
    outputTensors: (request.outputTensors ?? []).map((t, i) =>
      capturedTensor(t, `${label}: output tensor #${i + 1}`, context),
    ),
    inputs: (request.inputs ?? []).map((a, i) =>
      capturedAuxiliary(a, `${label}: auxiliary input #${i + 1}`, context),
    ),
    outputs: (request.outputs ?? []).map((a, i) =>
      capturedAuxiliary(a, `${label}: auxiliary output #${i + 1}`, context),
    ),
  };
  if (item.inputTensors.length + item.outputTensors.length + item.inputs.length + item.outputs.length === 0) {
    throw new AgentError(
      'INVALID_ARGUMENT',
      `${label} carries no data; expected at least one input or output tensor, or auxiliary data`,
    );
  }
  return item;
}

export function checkCaptureId(id: unknown): string {
  if (typeof id !== 'string' || id.length === 0) {
    throw new AgentError(
      'INVALID_ARGUMENT',
      'capture_id is empty; expected a non-empty string that names this capture (a UUID, or any unique text)',
    );
  }
  if (id.length > MAX_CAPTURE_ID_LENGTH) {
    throw new AgentError(
      'INVALID_ARGUMENT',
      `capture_id is ${id.length} characters long; expected at most ${MAX_CAPTURE_ID_LENGTH}`,
    );
  }
  // eslint-disable-next-line no-control-regex -- control characters are exactly what is refused
  if (/[\u0000-\u001f\u007f]/.test(id)) {
    throw new AgentError(
      'INVALID_ARGUMENT',
      `capture_id ${JSON.stringify(id)} contains control characters; expected printable text`,
    );
  }
  return id;
}

function inferenceTimeOf(request: CaptureDataRequest, context: CaptureRequestContext): number {
  const ts = request.inferenceTimestamp;
  if (ts === null || ts === undefined) return context.now;
  if (
    !Number.isSafeInteger(ts.seconds) ||
    !Number.isInteger(ts.nanos) ||
    ts.nanos < 0 ||
    ts.nanos > 999_999_999
  ) {
    throw new AgentError(
      'INVALID_ARGUMENT',
      `inference_timestamp {seconds: ${ts.seconds}, nanos: ${ts.nanos}} is not a valid time; expected whole seconds since 1970 and nanos 0..999999999`,
    );
  }
  const ms = ts.seconds * 1000 + Math.floor(ts.nanos / 1e6);
  if (ms < 0 || ms > 253402300799999) {
    throw new AgentError(
      'OUT_OF_RANGE',
      `inference_timestamp ${ts.seconds} s lies outside the years 1970..9999; expected the time the inference ran`,
    );
  }
  if (ms > context.now + context.futureToleranceMs) {
    throw new AgentError(
      'OUT_OF_RANGE',
      `inference_timestamp ${new Date(ms).toISOString()} is in the future (the agent's clock reads ${new Date(context.now).toISOString()}); expected the time the inference ran`,
    );
  }
  return ms;
}

function capturedTensor(tensor: Tensor, label: string, context: CaptureRequestContext): CapturedTensor {
  const metadata = tensor.tensorMetadata;
  if (!metadata)
    throw new AgentError(
      'INVALID_ARGUMENT',
      `${label} has no tensor_metadata; expected its name, data_type and shape`,
    );
  const where = `${label} (${showTensorName(metadata.name)})`;
  const dataType = dataTypeFromWire(metadata.dataType);
  if (dataType === undefined) {
    throw new AgentError(
      'INVALID_ARGUMENT',
      `${where} has data_type ${metadata.dataType}; expected one of ${Object.entries(DATA_TYPES)
        .map(([n, d]) => `${n}=${d.wire}`)
        .join(', ')}`,
    );
  }
  const shape = metadata.shape;
  if (shape.length > MAX_RANK || shape.some((d) => !Number.isSafeInteger(d) || d < 0)) {
    throw new AgentError(
      'INVALID_ARGUMENT',
      `${where} has shape [${shape.join(', ')}]; expected at most ${MAX_RANK} whole dimensions ≥ 0`,
    );
  }
  const elements = shape.reduce((n, d) => n * d, 1);
  if (elements > MAX_ELEMENTS) {
    throw new AgentError(
      'INVALID_ARGUMENT',
      `${where} has ${elements} elements; at most ${MAX_ELEMENTS} are accepted`,
    );
  }
  const expected = elements * elementSize(dataType);
  const data = tensorBytes(tensor, expected, where, context);
  if (data.byteLength !== expected) {
    throw new AgentError(
      'INVALID_ARGUMENT',
      `${where} has ${data.byteLength} bytes of data; shape [${shape.join(', ')}] of ${dataType} needs ${expected} (${elements} elements × ${elementSize(dataType)} bytes)`,
    );
  }
  return { name: tensorNameText(metadata.name), dataType, shape: [...shape], data };
}

function tensorBytes(
  tensor: Tensor,
  expected: number,
  where: string,
  context: CaptureRequestContext,
): Buffer {
  if (tensor.data === 'sharedMemoryHandle' && tensor.sharedMemoryHandle) {
    return readSegment(tensor.sharedMemoryHandle, expected, where, context);
  }
  if (tensor.byteData !== undefined) return Buffer.from(tensor.byteData);
  if (expected === 0) return Buffer.alloc(0);
  throw new AgentError(
    'INVALID_ARGUMENT',
    `${where} carries no data; expected byte_data or a shared_memory_handle`,
  );
}

function capturedAuxiliary(
  item: AuxiliaryData,
  label: string,
  context: CaptureRequestContext,
): CapturedAuxiliary {
  const encoding = AUXILIARY_ENCODINGS[item.encoding];
  if (encoding === undefined) {
    throw new AgentError(
      'INVALID_ARGUMENT',
      `${label} has encoding ${item.encoding}; expected one of ${AUXILIARY_ENCODINGS.map((e, i) => `${e}=${i}`).join(', ')}`,
    );
  }
  if (item.name.length > MAX_CONTENT_TYPE_LENGTH) {
    throw new AgentError(
      'INVALID_ARGUMENT',
      `${label} has a name of ${item.name.length} characters; expected at most ${MAX_CONTENT_TYPE_LENGTH} (what the data is: "jpg", "json", …)`,
    );
  }
  let data: Buffer;
  if (item.data === 'sharedMemoryHandle' && item.sharedMemoryHandle) {
    const size = item.sharedMemoryHandle.size;
    if (size === 0) {
      throw new AgentError(
        'INVALID_ARGUMENT',
        `${label} names shared memory with size 0; auxiliary data has no shape to derive its length from, so expected its size in bytes`,
      );
    }
    data = readSegment(item.sharedMemoryHandle, size, label, context);
  } else {
    data = Buffer.from(item.byteData ?? Buffer.alloc(0));
  }
  return { contentType: item.name, encoding, data };
}

function readSegment(
  handle: { segmentId: number; offset: number; size: number },
  expected: number,
  where: string,
  context: CaptureRequestContext,
): Buffer {
  if (!context.sharedMemory) {
    throw new AgentError(
      'FAILED_PRECONDITION',
      `${where} is in shared memory, which this agent cannot read (its System V addon is not available); send byte_data instead`,
    );
  }
  let lease;
  try {
    lease = context.sharedMemory.readTensorFromSegment(handle, expected);
  } catch (error) {
    if (error instanceof SharedMemoryError) {
      throw new AgentError(
        error.code === 'ATTACH_FAILED' ? 'INTERNAL' : 'INVALID_ARGUMENT',
        `${where}: ${error.message}`,
        { cause: error },
      );
    }
    throw error;
  }
  try {
    return Buffer.from(lease.data);
  } finally {
    lease.release();
  }
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/** A tensor name as record text: the UTF-8 text, or 0x-prefixed hex when the bytes are not UTF-8. */
export function tensorNameText(name: Uint8Array): string {
  try {
    return strictUtf8.decode(name);
  } catch {
    return `0x${Buffer.from(name).toString('hex')}`;
  }
}
