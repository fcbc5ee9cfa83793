/**
 * ONNX Runtime sessions on the agent's event loop, for the inline path: a model whose runs take tens of
 * microseconds costs more to hand to a worker thread (two thread wake-ups, two structured clones) than to run.
 * Each model has its own session here, created only once the pool has measured that the model is fast (see
 * InlineBudget). The pool decides which requests come here; this module only loads, runs and releases.
 */
import { stat } from 'node:fs/promises';
import type ortModule from 'onnxruntime-node';
import type { InferenceSession, Tensor } from 'onnxruntime-node';
import type * as bindingModule from 'onnxruntime-node/dist/binding.js';
import type { Binding } from 'onnxruntime-node/dist/binding.js';
import { loadSysvShmAddon, SharedMemoryError } from '../shm/index.js';
import { InferenceError } from './errors.js';
import { outputToWire, toOrtTensor, type OrtTensorConstructor } from './ort-tensors.js';
import type { ModelBytes, OrtTensorType, OutputSegment, WireSegmentOutput } from './protocol.js';
import { HOST_IS_LITTLE_ENDIAN, TYPED_ARRAY_FOR } from './tensor-bytes.js';
import { fromWire, inputsInPlace, type PoolTensor } from './tensor-transfer.js';
import { WorkerSegments } from './worker-segments.js';

/** Models larger than this are never loaded on the event loop: creating their session would block it too long. */
export const MAX_INLINE_MODEL_BYTES = 32 * 1024 * 1024;

type Ort = typeof ortModule;

/** What running inline needs of onnxruntime-node: its Tensor class and its native session binding. */
interface OrtParts {
  Tensor: OrtTensorConstructor;
  binding: typeof bindingModule;
}

/** A native session, with the fetches every run asks for (all outputs, in the session's order). */
interface InlineSession {
  native: Binding.InferenceSession;
  outputNames: string[];
  fetches: Record<string, Tensor | null>;
  /** Outputs whose type and shape the model fixes: ONNX Runtime can write them into memory given in `fetches`. */
  fixedOutputs: Map<string, FixedOutput>;
}

interface FixedOutput {
  type: OrtTensorType;
  dims: number[];
  byteLength: number;
}

/** ONNX's TensorProto element types (onnxruntime-node's binding metadata gives these) the agent can return. */
const ORT_TYPE_OF_ELEMENT: Partial<Record<number, OrtTensorType>> = {
  1: 'float32',
  2: 'uint8',
  5: 'int16',
  6: 'int32',
  7: 'int64',
  10: 'float16',
  11: 'float64',
};

/** How often the runner lets go of output segments their clients removed, even while no requests come. */
const SEGMENT_SWEEP_MS = 1000;

export interface InlineRunnerOptions {
  /**
   * Where outputs asked for in System V shared memory are mapped on this thread (see run). Default: its own,
   * loading the addon on first use.
   */
  segments?: WorkerSegments;
}

export interface InlineRun {
  outputs: PoolTensor[];
  /** Inside ONNX Runtime's run, in milliseconds. */
  computeMs: number;
}

/**
 * The sessions are onnxruntime-node's native binding (the synchronous session object its public InferenceSession
 * wraps), not the public API: the public `run` defers every run to a setImmediate and then wraps its results
 * again, so a run of a few microseconds waited for the rest of the event loop's turn (tens of microseconds on a
 * busy loop) and went through several promise hops. Here the run happens in the caller's turn. The worker path
 * keeps the public API. inline.test.ts fails if an onnxruntime-node version stops providing this binding.
 */
export class InlineRunner {
  readonly #sessions = new Map<string, InlineSession>();
  #ort: Promise<OrtParts> | undefined;
  /** Set once #ort has resolved, so a run needs no await before it starts. */
  #parts: OrtParts | undefined;
  readonly #segments: WorkerSegments;
  #sweepTimer: NodeJS.Timeout | undefined;

  constructor(options: InlineRunnerOptions = {}) {
    this.#segments = options.segments ?? new WorkerSegments({ addon: () => loadSysvShmAddon() });
  }

  has(key: string): boolean {
    return this.#sessions.has(key);
  }

  /**
   * Creates the model's session on this thread. Resolves false (and loads nothing) when the model is too large
   * to load here without blocking the event loop for long.
   */
  async load(
    key: string,
    model: string | ModelBytes,
    options: InferenceSession.SessionOptions,
  ): Promise<boolean> {
    const bytes =
      typeof model === 'string'
        ? (await stat(model)).size
        : model.model.byteLength + model.externalData.reduce((sum, file) => sum + file.data.byteLength, 0);
    if (bytes > MAX_INLINE_MODEL_BYTES) return false;
    const { binding } = await this.#loadOrt();
    binding.initOrt();
    const native = new binding.binding.InferenceSession();
    if (typeof model === 'string') native.loadModel(model, options);
    else {
      const { model: modelBytes } = model;
      native.loadModel(modelBytes.buffer as ArrayBuffer, modelBytes.byteOffset, modelBytes.byteLength, {
        ...options,
        externalData: [...model.externalData],
      });
    }
    const outputNames = native.outputMetadata.map((output) => output.name);
    await this.release(key);
    this.#sessions.set(key, {
      native,
      outputNames,
      fetches: Object.fromEntries(outputNames.map((name) => [name, null])),
      fixedOutputs: fixedOutputsOf(native.outputMetadata),
    });
    return true;
  }

  /**
   * Runs the inputs where they are (no copy), synchronously, before this returns; the outputs are ONNX Runtime's
   * own buffers, except those named in `outputSegments` whose type and shape the model fixes: ONNX Runtime
   * writes those into their segment itself (checked as a worker checks it, see worker-segments.ts) and they come
   * back `writtenToSegment`. The others named there (a shape known only after the run, too little room, a
   * misaligned place) come back as bytes for the caller to write, as before.
   */
  run(key: string, inputs: readonly PoolTensor[], outputSegments?: readonly OutputSegment[]): InlineRun {
    const session = this.#sessions.get(key);
    const parts = this.#parts;
    if (!session || !parts) throw new InferenceError('unloaded', `no inline session ${key}`);
    const feeds: Record<string, Tensor> = {};
    for (const input of inputsInPlace(inputs)) feeds[input.name] = toOrtTensor(input, parts.Tensor);
    if (outputSegments === undefined || outputSegments.length === 0)
      return this.#run(session, feeds, session.fetches, undefined);
    this.#segments.beginRun();
    try {
      const written = new Map<string, WireSegmentOutput>();
      const fetches = this.#fetchesInto(session, outputSegments, parts.Tensor, written);
      return this.#run(session, feeds, fetches, written);
    } finally {
      this.#segments.endRun();
    }
  }

  #run(
    session: InlineSession,
    feeds: Record<string, Tensor>,
    fetches: Record<string, Tensor | null>,
    written: Map<string, WireSegmentOutput> | undefined,
  ): InlineRun {
    let results: Record<string, unknown>;
    const startedAt = performance.now();
    try {
      results = session.native.run(feeds, fetches, RUN_OPTIONS);
    } catch (error) {
      const message = (error instanceof Error ? error.message : String(error)).trim();
      throw new InferenceError(
        /bad_alloc|failed to allocate|out of memory|cannot allocate memory|ENOMEM/i.test(message)
          ? 'out-of-memory'
          : 'run-failed',
        message,
      );
    }
    const computeMs = performance.now() - startedAt;
    const transfer: ArrayBuffer[] = [];
    // onnxruntime-node 1.30 also returns a copy of an output it wrote into the given memory; that copy is dropped.
    const outputs = session.outputNames.map((name) =>
      fromWire(written?.get(name) ?? outputToWire(name, results[name] as Tensor, transfer)),
    );
    return { outputs, computeMs };
  }

  /**
   * The run's fetches, with a tensor over its segment's memory for each output that ONNX Runtime can write there;
   * those outputs go into `written`.
   */
  #fetchesInto(
    session: InlineSession,
    outputSegments: readonly OutputSegment[],
    OrtTensor: OrtTensorConstructor,
    written: Map<string, WireSegmentOutput>,
  ): Record<string, Tensor | null> {
    let fetches = session.fetches;
    for (const { name, segment } of outputSegments) {
      const fixed = session.fixedOutputs.get(name);
      const Typed = fixed && TYPED_ARRAY_FOR[fixed.type];
      if (
        fixed === undefined ||
        Typed === undefined ||
        fixed.byteLength > segment.byteLength ||
        segment.offset % Typed.BYTES_PER_ELEMENT !== 0 ||
        !HOST_IS_LITTLE_ENDIAN
      )
        continue;
      let bytes: Uint8Array;
      try {
        bytes = this.#segments.bytes(
          { ...segment, byteLength: fixed.byteLength },
          'write',
          `output ${JSON.stringify(name)}`,
        );
      } catch (error) {
        throw new InferenceError(
          error instanceof SharedMemoryError && error.code !== 'ATTACH_FAILED'
            ? 'segment-unusable'
            : 'run-failed',
          (error as Error).message,
        );
      }
      this.#sweepTimer ??= setInterval(() => this.#segments.sweep(), SEGMENT_SWEEP_MS).unref();
      if (fetches === session.fetches) fetches = { ...session.fetches };
      const data = new Typed(
        bytes.buffer as ArrayBuffer,
        bytes.byteOffset,
        fixed.byteLength / Typed.BYTES_PER_ELEMENT,
      );
      fetches[name] = new OrtTensor(fixed.type, data as Tensor.DataTypeMap[OrtTensorType], fixed.dims);
      written.set(name, {
        name,
        type: fixed.type,
        dims: [...fixed.dims],
        byteLength: fixed.byteLength,
        inSegment: true,
      });
    }
    return fetches;
  }

  async release(key: string): Promise<void> {
    const session = this.#sessions.get(key);
    this.#sessions.delete(key);
    try {
      session?.native.dispose();
    } catch {
      // Released either way: nothing runs on it any more.
    }
  }

  async close(): Promise<void> {
    await Promise.all([...this.#sessions.keys()].map((key) => this.release(key)));
    clearInterval(this.#sweepTimer);
    this.#sweepTimer = undefined;
    this.#segments.close();
  }

  #loadOrt(): Promise<OrtParts> {
    this.#ort ??= Promise.all([import('onnxruntime-node'), import('onnxruntime-node/dist/binding.js')]).then(
      ([module, binding]) => {
        const ort = (module as { default?: Ort }).default ?? module;
        const parts: OrtParts = { Tensor: ort.Tensor as unknown as OrtTensorConstructor, binding };
        this.#parts = parts;
        return parts;
      },
    );
    return this.#ort;
  }
}

/** The outputs whose element type and every dimension the model fixes, with their size in bytes. */
function fixedOutputsOf(metadata: readonly Binding.ValueMetadata[]): Map<string, FixedOutput> {
  const fixed = new Map<string, FixedOutput>();
  for (const output of metadata) {
    const type = ORT_TYPE_OF_ELEMENT[output.type];
    if (!output.isTensor || type === undefined) continue;
    if (!output.shape.every((dim) => Number.isSafeInteger(dim) && dim > 0)) continue;
    const elements = output.shape.reduce((product, dim) => product * dim, 1);
    const byteLength = elements * TYPED_ARRAY_FOR[type].BYTES_PER_ELEMENT;
    if (Number.isSafeInteger(byteLength))
      fixed.set(output.name, { type, dims: [...output.shape], byteLength });
  }
  return fixed;
}

/** Every inline run's options: none (onnxruntime-node's public run passes an empty object too). */
const RUN_OPTIONS: InferenceSession.RunOptions = {};
