/**
 * Messages between the inference pool (main thread) and its workers. Both ends are this package's own code in
 * one process, so these are plain types rather than zod schemas: validating every tensor message would cost
 * time on the hot path and guard against nothing. What crosses from outside the process is validated before
 * it gets here (models/validate.ts).
 */
import type { InferenceSession } from 'onnxruntime-node';

/** onnxruntime-node's tensor type names for the types SageMaker Edge can express. */
export type OrtTensorType = 'uint8' | 'int16' | 'int32' | 'int64' | 'float16' | 'float32' | 'float64';

/** A tensor crossing threads: bytes (little-endian, row-major) in a buffer that is transferred or shared. */
export interface WireTensor {
  name: string;
  type: OrtTensorType;
  dims: number[];
  buffer: ArrayBuffer | SharedArrayBuffer;
  byteOffset: number;
  byteLength: number;
}

export interface WireTensorInfo {
  name: string;
  /** The type string ONNX Runtime reports; may be one SageMaker Edge cannot express (e.g. 'bool'). */
  type: string;
  /** Dimensions; symbolic ones come back as their name, unknown as -1. */
  shape: Array<number | string>;
}

export type ToWorker =
  | {
      op: 'load';
      id: number;
      key: string;
      modelPath: string;
      options: InferenceSession.SessionOptions;
    }
  | {
      op: 'run';
      id: number;
      key: string;
      inputs: WireTensor[];
    }
  | { op: 'release'; id: number; key: string };

/** Why a worker could not do what it was asked. */
export type WorkerFailureKind = 'out-of-memory' | 'model-rejected' | 'run-failed' | 'no-session';

export type FromWorker =
  | { op: 'ready' }
  | { op: 'loaded'; id: number; inputs: WireTensorInfo[]; outputs: WireTensorInfo[]; loadMs: number }
  | {
      op: 'done';
      id: number;
      outputs: WireTensor[];
      /** Epoch milliseconds (performance.timeOrigin + now(), comparable across threads) around session.run. */
      startedAt: number;
      finishedAt: number;
    }
  | { op: 'released'; id: number }
  | {
      op: 'failed';
      id: number;
      kind: WorkerFailureKind;
      message: string;
      startedAt?: number;
      finishedAt?: number;
    };

/** A wall-clock time in milliseconds, sub-millisecond precise, comparable between threads of one process. */
export function preciseNow(): number {
  return performance.timeOrigin + performance.now();
}

/**
 * Slots of the Int32Array over the SharedArrayBuffer each worker gets as `workerData.control`:
 * IN_NATIVE is 1 while the worker is inside ONNX Runtime's native code; STOP is set to 1 by the pool when it
 * wants the worker gone (the worker then starts nothing new and parks).
 */
export const WORKER_CONTROL = { IN_NATIVE: 0, STOP: 1, SLOTS: 2 } as const;
