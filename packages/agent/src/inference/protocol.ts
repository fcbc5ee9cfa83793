/**
 * Messages between the inference pool (main thread) and its workers. Both ends are this package's own code in
 * one process, so these are plain types rather than zod schemas: validating every tensor message would cost
 * time on the hot path and guard against nothing. What crosses from outside the process is validated before
 * it gets here (models/validate.ts).
 */
import type { InferenceSession } from 'onnxruntime-node';
import type { SegmentReference } from '../shm/segment-reference.js';

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

/**
 * An input whose bytes lie in a System V segment the event loop checked: the worker maps the segment itself and
 * ONNX Runtime reads the bytes there (see worker-segments.ts).
 */
export interface WireSegmentTensor {
  name: string;
  type: OrtTensorType;
  dims: number[];
  segment: SegmentReference;
}

/** A run's input: its bytes, or where they lie in shared memory. */
export type WireInput = WireTensor | WireSegmentTensor;

/** An output the worker wrote into shared memory (`segment` of the run message): only its type and shape come back. */
export interface WireSegmentOutput {
  name: string;
  type: OrtTensorType;
  dims: number[];
  byteLength: number;
  inSegment: true;
}

/** Where the caller wants an output written: ONNX Runtime's output goes there, and no bytes come back. */
export interface OutputSegment {
  name: string;
  segment: SegmentReference;
}

/** A model in memory, with the external data files it refers to (named as the model names them). */
export interface ModelBytes {
  model: Uint8Array;
  externalData: ReadonlyArray<{ path: string; data: Uint8Array }>;
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
      /** A path ONNX Runtime reads, or the model in memory (what a package load gives: the verified bytes). */
      model: string | ModelBytes;
      options: InferenceSession.SessionOptions;
    }
  | {
      op: 'run';
      id: number;
      key: string;
      inputs: WireInput[];
      /** Outputs to write into shared memory rather than send back. */
      outputSegments?: OutputSegment[];
    }
  | {
      /** Dynamic batching: the requests joined along the batch dimension, run once, and the outputs split back. */
      op: 'run-batch';
      id: number;
      key: string;
      /** Each request's inputs (bytes only), in the order the answers come back. */
      requests: WireTensor[][];
      /** Each request's size along the batch dimension. */
      counts: number[];
      /** BatchPlan's axes: inputs without one are taken from the first request (they are the same in all). */
      inputAxes: Record<string, number>;
      outputAxes: Record<string, number>;
    }
  | { op: 'release'; id: number; key: string };

/** Why a worker could not do what it was asked. */
export type WorkerFailureKind =
  | 'out-of-memory'
  | 'model-rejected'
  | 'run-failed'
  | 'no-session'
  /** A segment the run names is gone, changed, too small, or cannot be mapped for the reason the message gives. */
  | 'segment-unusable';

export type FromWorker =
  | { op: 'ready' }
  | { op: 'loaded'; id: number; inputs: WireTensorInfo[]; outputs: WireTensorInfo[]; loadMs: number }
  | {
      op: 'done';
      id: number;
      outputs: Array<WireTensor | WireSegmentOutput>;
      /** Epoch milliseconds (performance.timeOrigin + now(), comparable across threads) around session.run. */
      startedAt: number;
      finishedAt: number;
    }
  | {
      op: 'done-batch';
      id: number;
      /** Each request's outputs, or why its run failed, in the order of the run-batch message. */
      results: Array<{ outputs: WireTensor[] } | { kind: WorkerFailureKind; message: string }>;
      /**
       * Why the requests ran one at a time instead of joined (the joined run failed, or its outputs did not have
       * the requests' sizes along the batch dimension); absent when they ran as one.
       */
      ranApart?: string;
      /** Whether ranApart means the model does not batch at all (its outputs did not split). */
      unfit?: boolean;
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
 * wants the worker gone (the worker then starts nothing new and parks); DOORBELL is incremented by the pool after
 * every message it posts to the worker (a worker in its hot wait polls it, see InferencePoolOptions.hotWaitMicros);
 * HOT is 1 while the worker is in its hot wait.
 */
export const WORKER_CONTROL = { IN_NATIVE: 0, STOP: 1, DOORBELL: 2, HOT: 3, SLOTS: 4 } as const;

/** What a worker is started with (`workerData`). */
export interface InferenceWorkerData {
  /** WORKER_CONTROL slots. */
  control: SharedArrayBuffer;
  /** The worker's index in the pool, i.e. its slot in `activity`. */
  index: number;
  /**
   * Shared by all workers of the pool, an Int32 per worker: 1 while it runs a model or hot-waits, else 0. A worker
   * hot-waits only while fewer than `hotWaitCores` workers are active, so that spinning never takes a core that
   * a run (or the agent's main thread) needs.
   */
  activity: SharedArrayBuffer;
  /** How long the worker polls for its next message after a run before it sleeps; 0 = not at all. */
  hotWaitMicros: number;
  /** At most this many workers may be active, the one about to hot-wait included (the cores but one). */
  hotWaitCores: number;
}
