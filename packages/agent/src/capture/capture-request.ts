import { elementSize, type CaptureDataRequest, MAX_TENSOR_ELEMENTS, MAX_TENSOR_RANK } from '@edgefleet/core';
import { AgentError, checkModelName, showTensorName, type PredictTensor } from '../models/index.js';
import {
  AUXILIARY_ENCODINGS,
  keptBytes,
  viewableMemory,
  type CaptureItem,
  type CapturedAuxiliary,
  type CapturedTensor,
} from './capture-item.js';

/** Longest capture_id taken: the spec says any non-empty string "up to a sane length". */
export const MAX_CAPTURE_ID_LENGTH = 256;
const MAX_CONTENT_TYPE_LENGTH = 256;

/** What capture needs to know of the loaded models (ModelRegistry fits). */
export interface CaptureModelCatalog {
  /** Throws AgentError NOT_FOUND when no such model is loaded. */
  describe(name: string): { name: string; version: string };
}

/** An auxiliary data item with its bytes found (inline or in shared memory) by the front door. */
export interface CaptureAuxiliaryInput {
  /** What the data is ("jpg", "json", …). */
  name: string;
  /** The wire's Encoding value (CSV=0, JSON=1, NONE=2, BASE64=3); others are refused here. */
  encoding: number;
  /** A view into the request (kept, see CaptureRequest.ownedBuffer) or a shared memory segment (copied). */
  data: Uint8Array;
}

/**
 * A CaptureDataRequest as the front door decodes it (grpc/wire-tensors.ts, the same decoder as Predict's):
 * tensors have a known data type and their bytes, read from byte_data or from shared memory.
 */
export type CaptureRequest = Omit<
  CaptureDataRequest,
  'inputTensors' | 'outputTensors' | 'inputs' | 'outputs'
> & {
  inputTensors: PredictTensor[];
  outputTensors: PredictTensor[];
  inputs: CaptureAuxiliaryInput[];
  outputs: CaptureAuxiliaryInput[];
  /**
   * Memory of this request alone that nothing writes again (its gRPC message, see keptBytes): data that lie in it
   * are kept as views; any other data (shared memory, an embedding caller's buffers) is copied.
   */
  ownedBuffer?: ArrayBuffer;
};

export interface CaptureRequestContext {
  models: CaptureModelCatalog;
  now: number;
  futureToleranceMs: number;
}

/**
 * Checks a CaptureDataRequest and turns it into a capture: the model (model_handle, or the deprecated
 * model_name; the handle wins) must be loaded; the id non-empty, at most 256 characters, no control characters;
 * the timestamp valid and not in the future; every tensor's shape whole and non-negative, and data exactly
 * shape × element size bytes; every auxiliary item's encoding known. The capture owns its bytes: views of those
 * in request.ownedBuffer when they are most of it (viewableMemory), copies of the rest.
 * Throws AgentError (INVALID_ARGUMENT, NOT_FOUND, OUT_OF_RANGE).
 */
export function captureItemFromRequest(request: CaptureRequest, context: CaptureRequestContext): CaptureItem {
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
  // Views only when the captured bytes are most of the message (viewableMemory), else copies.
  const owned = viewableMemory(request.ownedBuffer, [
    ...(request.inputTensors ?? []).map((t) => t.data),
    ...(request.outputTensors ?? []).map((t) => t.data),
    ...(request.inputs ?? []).map((a) => a.data),
    ...(request.outputs ?? []).map((a) => a.data),
  ]);
  const item: CaptureItem = {
    captureId,
    model: model.name,
    modelVersion: model.version,
    inferenceTime,
    receivedAt: context.now,
    source: 'api',
    inputTensors: (request.inputTensors ?? []).map((t, i) =>
      capturedTensor(t, `${label}: input tensor #${i + 1}`, owned),
    ),
    outputTensors: (request.outputTensors ?? []).map((t, i) =>
      capturedTensor(t, `${label}: output tensor #${i + 1}`, owned),
    ),
    inputs: (request.inputs ?? []).map((a, i) =>
      capturedAuxiliary(a, `${label}: auxiliary input #${i + 1}`, owned),
    ),
    outputs: (request.outputs ?? []).map((a, i) =>
      capturedAuxiliary(a, `${label}: auxiliary output #${i + 1}`, owned),
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

function inferenceTimeOf(request: CaptureRequest, context: CaptureRequestContext): number {
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

function capturedTensor(
  tensor: PredictTensor,
  label: string,
  owned: ArrayBuffer | undefined,
): CapturedTensor {
  const where = `${label} (${showTensorName(tensor.name)})`;
  const { dataType, shape } = tensor;
  if (shape.length > MAX_TENSOR_RANK || shape.some((d) => !Number.isSafeInteger(d) || d < 0)) {
    throw new AgentError(
      'INVALID_ARGUMENT',
      `${where} has shape [${shape.join(', ')}]; expected at most ${MAX_TENSOR_RANK} whole dimensions ≥ 0`,
    );
  }
  const elements = shape.reduce((n, d) => n * d, 1);
  if (elements > MAX_TENSOR_ELEMENTS) {
    throw new AgentError(
      'INVALID_ARGUMENT',
      `${where} has ${elements} elements; at most ${MAX_TENSOR_ELEMENTS} are accepted`,
    );
  }
  const expected = elements * elementSize(dataType);
  if (tensor.data.byteLength !== expected) {
    throw new AgentError(
      'INVALID_ARGUMENT',
      `${where} has ${tensor.data.byteLength} bytes of data; shape [${shape.join(', ')}] of ${dataType} needs ${expected} (${elements} elements × ${elementSize(dataType)} bytes)`,
    );
  }
  // A view of the gRPC message's bytes (nothing writes them again; no 64 MiB copy on the event loop); a copy of
  // shared memory, which the client may overwrite once answered, and of anything else (keptBytes).
  return {
    name: tensorNameText(tensor.name),
    dataType,
    shape: [...shape],
    data: keptBytes(tensor.data, owned),
  };
}

function capturedAuxiliary(
  item: CaptureAuxiliaryInput,
  label: string,
  owned: ArrayBuffer | undefined,
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
  // As a tensor's bytes: a view of the gRPC message, a copy of shared memory or anything else (keptBytes).
  return { contentType: item.name, encoding, data: keptBytes(item.data, owned) };
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
