// TypeScript shapes of the AWS.SageMaker.Edge messages (agent.proto), as the codec decodes them.
//
// Hand-written interfaces rather than zod schemas: the protobuf decoder already guarantees every field's type,
// so a second validation pass would only cost time on the inference path. What the decoder cannot guarantee
// (enum values in range, shapes that make sense, model names) is the agent's validation, against its models.
//
// Decoded form (protobufjs `toObject` with defaults): every scalar and repeated field is present, with the
// proto3 default when absent ('' / 0 / empty array / empty Buffer); a singular message field is `null` when
// absent (which is how `inference_timestamp` presence is told); a oneof member is present only when set, and the
// oneof's name (`data`) says which one. 64-bit integers become numbers (see agent-codec.ts for values ≥ 2^53).
// Field names are the proto names in camelCase (`segment_id` → `segmentId`).

/** Wire values of `AWS.SageMaker.Edge.DataType`. Enums are open in proto3: decoded values may lie outside. */
export const AgentDataType = {
  UINT8: 0,
  INT16: 1,
  INT32: 2,
  INT64: 3,
  FLOAT16: 4,
  FLOAT32: 5,
  FLOAT64: 6,
} as const;

/** Wire values of `AWS.SageMaker.Edge.Encoding` (of an AuxiliaryData item). */
export const AgentEncoding = { CSV: 0, JSON: 1, NONE: 2, BASE64: 3 } as const;

/** Wire values of `AWS.SageMaker.Edge.CaptureDataStatus`. */
export const AgentCaptureDataStatus = { FAILURE: 0, SUCCESS: 1, IN_PROGRESS: 2, NOT_FOUND: 3 } as const;

export interface Timestamp {
  seconds: number;
  nanos: number;
}

export interface TensorMetadata {
  /** Raw bytes: older clients send a string, some not UTF-8; echo it back unchanged. */
  name: Buffer;
  /** An `AgentDataType` value, or any other int32 a client sent. */
  dataType: number;
  shape: number[];
}

export interface SharedMemoryHandle {
  /** Byte length; 0 means "derive it from the tensor's shape and type". */
  size: number;
  offset: number;
  /** A System V shmid. */
  segmentId: number;
}

export interface Tensor {
  tensorMetadata: TensorMetadata | null;
  /** Decoded from a Buffer: a view into the received message, not a copy. */
  byteData?: Buffer;
  sharedMemoryHandle?: SharedMemoryHandle;
  /** Which member of the `data` oneof is set, if any. */
  data?: 'byteData' | 'sharedMemoryHandle';
}

export interface Model {
  url: string;
  /** @deprecated in the newest revision; `handle` addresses the same model and wins when both are set. */
  name: string;
  inputTensorMetadatas: TensorMetadata[];
  outputTensorMetadatas: TensorMetadata[];
  handle: string;
}

export interface PredictRequest {
  /** @deprecated use `handle`; when both are set, `handle` wins. */
  name: string;
  tensors: Tensor[];
  handle: string;
}

export interface PredictResponse {
  tensors: Tensor[];
}

export interface LoadModelRequest {
  url: string;
  /** @deprecated use `handle`; when both are set, `handle` wins. */
  name: string;
  handle: string;
}

export interface LoadModelResponse {
  model: Model | null;
}

export interface UnLoadModelRequest {
  /** @deprecated use `handle`; when both are set, `handle` wins. */
  name: string;
  handle: string;
}

export type UnLoadModelResponse = Record<string, never>;

export type ListModelsRequest = Record<string, never>;

export interface ListModelsResponse {
  models: Model[];
}

export interface DescribeModelRequest {
  /** @deprecated use `handle`; when both are set, `handle` wins. */
  name: string;
  handle: string;
}

export interface DescribeModelResponse {
  model: Model | null;
}

/** `AuxilaryData` in the older revisions; same wire format. */
export interface AuxiliaryData {
  name: string;
  /** An `AgentEncoding` value, or any other int32 a client sent. */
  encoding: number;
  byteData?: Buffer;
  sharedMemoryHandle?: SharedMemoryHandle;
  data?: 'byteData' | 'sharedMemoryHandle';
}

export interface CaptureDataRequest {
  /** @deprecated use `modelHandle`; when both are set, `modelHandle` wins. */
  modelName: string;
  captureId: string;
  /** null when the client did not send one (then the time of receipt applies). */
  inferenceTimestamp: Timestamp | null;
  inputTensors: Tensor[];
  outputTensors: Tensor[];
  inputs: AuxiliaryData[];
  outputs: AuxiliaryData[];
  modelHandle: string;
}

export type CaptureDataResponse = Record<string, never>;

export interface GetCaptureDataStatusRequest {
  captureId: string;
}

export interface GetCaptureDataStatusResponse {
  /** An `AgentCaptureDataStatus` value. */
  status: number;
}

/** Every message of the package by its proto name. */
export interface AgentMessages {
  Timestamp: Timestamp;
  TensorMetadata: TensorMetadata;
  SharedMemoryHandle: SharedMemoryHandle;
  Tensor: Tensor;
  Model: Model;
  PredictRequest: PredictRequest;
  PredictResponse: PredictResponse;
  LoadModelRequest: LoadModelRequest;
  LoadModelResponse: LoadModelResponse;
  UnLoadModelRequest: UnLoadModelRequest;
  UnLoadModelResponse: UnLoadModelResponse;
  ListModelsRequest: ListModelsRequest;
  ListModelsResponse: ListModelsResponse;
  DescribeModelRequest: DescribeModelRequest;
  DescribeModelResponse: DescribeModelResponse;
  AuxiliaryData: AuxiliaryData;
  CaptureDataRequest: CaptureDataRequest;
  CaptureDataResponse: CaptureDataResponse;
  GetCaptureDataStatusRequest: GetCaptureDataStatusRequest;
  GetCaptureDataStatusResponse: GetCaptureDataStatusResponse;
}

export type AgentMessageName = keyof AgentMessages;

/**
 * What the encoder accepts for a message: any field may be left out (or null), and bytes may be any
 * Uint8Array. Derived from the decoded shape, so a decoded message can always be sent back as it is.
 */
export type MessageInit<T> = T extends Uint8Array
  ? Uint8Array
  : T extends readonly (infer E)[]
    ? readonly MessageInit<E>[]
    : T extends object
      ? { [K in keyof T]?: MessageInit<T[K]> | null }
      : T;

/** The seven methods of `AWS.SageMaker.Edge.Agent`, with their request and response messages. */
export interface AgentMethods {
  Predict: { request: PredictRequest; response: PredictResponse };
  LoadModel: { request: LoadModelRequest; response: LoadModelResponse };
  UnLoadModel: { request: UnLoadModelRequest; response: UnLoadModelResponse };
  ListModels: { request: ListModelsRequest; response: ListModelsResponse };
  DescribeModel: { request: DescribeModelRequest; response: DescribeModelResponse };
  CaptureData: { request: CaptureDataRequest; response: CaptureDataResponse };
  GetCaptureDataStatus: { request: GetCaptureDataStatusRequest; response: GetCaptureDataStatusResponse };
}

export type AgentMethodName = keyof AgentMethods;
