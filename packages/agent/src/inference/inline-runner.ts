/**
 * ONNX Runtime sessions on the agent's event loop, for the inline path: a model whose runs take tens of
 * microseconds costs more to hand to a worker thread (two thread wake-ups, two structured clones) than to run.
 * Each model has its own session here, created only once the pool has measured that the model is fast (see
 * InlineBudget). InlineModels decides which requests come here; this module only loads, runs and releases.
 */
import { stat } from 'node:fs/promises';
import { DATA_TYPES, dataTypeFromOnnx } from '@edgefleet/core';
import type ortModule from 'onnxruntime-node';
import type { InferenceSession, Tensor } from 'onnxruntime-node';
import type * as bindingModule from 'onnxruntime-node/dist/binding.js';
import type { Binding } from 'onnxruntime-node/dist/binding.js';
import { loadSysvShmAddon, rangesOverlap } from '../shm/index.js';
import { InferenceError, errorMessage, isOutOfMemory } from './errors.js';
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
  fetches: Record<string, null>;
  /** The outputs ONNX Runtime may write straight into shared memory (see run), by name. */
  direct: Map<string, DirectOutput>;
  /** Cleared for good once ONNX Runtime refused memory given for an output: the model does not keep its word. */
  directAllowed: boolean;
}

/** An output whose element type and every dimension the model declares, of at least MIN_DIRECT_OUTPUT_BYTES. */
interface DirectOutput {
  type: OrtTensorType;
  dims: number[];
  byteLength: number;
  /**
   * What this model's runs produced for it: nothing yet ('unseen'), always the declared shape ('agrees'), or
   * another shape at least once ('differs', for good: ONNX Runtime only warns when a model breaks its word).
   */
  seen: 'unseen' | 'agrees' | 'differs';
}

/**
 * Outputs smaller than this are copied into their region by the caller even when they could go straight there:
 * mapping and checking the segment costs more than copying a small tensor (the tiny model's 64 bytes: about 10 µs
 * more per request), while a large one saves its copy (588 KiB: about 70 µs). See docs/benchmarks.md.
 */
export const MIN_DIRECT_OUTPUT_BYTES = 64 * 1024;

/** How often the runner lets go of output segments their clients removed, even while no requests come. */
const SEGMENT_SWEEP_MS = 1000;

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

  constructor() {
    // Where outputs written straight into System V shared memory are mapped (see run).
    this.#segments = new WorkerSegments({ addon: () => loadSysvShmAddon() });
  }

  /**
   * Creates the model's session on this thread, under `key`, which must hold none (InlineModels gives each load a
   * key of its own). Resolves false (and loads nothing) when the model is too large to load here without blocking
   * the event loop for long.
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
    this.#sessions.set(key, {
      native,
      outputNames,
      fetches: Object.fromEntries(outputNames.map((name) => [name, null])),
      direct: directOutputsOf(
        native.outputMetadata,
        native.inputMetadata.map((input) => input.name),
      ),
      directAllowed: true,
    });
    return true;
  }

  /**
   * Runs the inputs where they are (no copy), synchronously, before this returns; the outputs are ONNX Runtime's
   * own buffers, for the caller to copy where it wants them. Except (`outputSegments`, places in System V shared
   * memory the caller checked) where ONNX Runtime can write an output straight into its place, which it then
   * does, and the output comes back `writtenToSegment` with no bytes; that takes all of:
   * - the model declares the output's type and every dimension, the output is not also an input, its inline runs
   *   so far produced that shape (one at least), and the place's size is the declared shape's, at least
   *   MIN_DIRECT_OUTPUT_BYTES, aligned;
   * - the place shares no byte of its segment with an input or another output of the run (ONNX Runtime would
   *   overwrite an input while it still reads it; two regions may name one segment);
   * - the segment maps here, still the one the caller checked (worker-segments.ts: as a worker maps it).
   * Any other output comes back as bytes: the caller writes it, with its own checks and errors. When ONNX Runtime
   * refuses the memory (a model that does not produce the shape it declares), the run is made again without it
   * (its inputs are intact, by the overlap rule) and the model's outputs are copied from then on.
   */
  run(key: string, inputs: readonly PoolTensor[], outputSegments?: readonly OutputSegment[]): InlineRun {
    const session = this.#sessions.get(key);
    const parts = this.#parts;
    if (!session || !parts) throw new InferenceError('unloaded', `no inline session ${key}`);
    const feeds: Record<string, Tensor> = {};
    for (const input of inputsInPlace(inputs)) feeds[input.name] = toOrtTensor(input, parts.Tensor);
    const places =
      outputSegments !== undefined && session.directAllowed
        ? directPlaces(session, inputs, outputSegments)
        : undefined;
    if (places === undefined) return this.#runCopying(session, feeds, 0);
    this.#segments.beginRun();
    try {
      const written = new Map<string, WireSegmentOutput>();
      const fetches = this.#fetchesInto(session, places, parts.Tensor, written);
      if (written.size === 0) return this.#runCopying(session, feeds, 0);
      const startedAt = performance.now();
      let results: Record<string, unknown>;
      try {
        results = session.native.run(feeds, fetches, RUN_OPTIONS);
      } catch (error) {
        // Only ONNX Runtime's refusal of the memory given is made again without it; any other failure is the
        // request's own, and a second run would only double its cost on the event loop.
        if (!REFUSED_OUTPUT_MEMORY.test(errorMessage(error))) throw runFailure(error);
        session.directAllowed = false;
        return this.#runCopying(session, feeds, performance.now() - startedAt);
      }
      const computeMs = performance.now() - startedAt;
      const transfer: ArrayBuffer[] = [];
      const outputs = session.outputNames.map((name) => {
        // onnxruntime-node 1.30 also returns a copy of an output it wrote into the memory given; that copy is
        // dropped, unless (never seen: ONNX Runtime refuses a shape other than the memory's) its shape differs.
        const result = results[name] as Tensor;
        const inSegment = written.get(name);
        if (inSegment !== undefined && sameDims(result.dims, inSegment.dims)) return fromWire(inSegment);
        return fromWire(outputToWire(name, result, transfer));
      });
      this.#noteShapes(session, results);
      return { outputs, computeMs };
    } finally {
      this.#segments.endRun();
    }
  }

  /** A run with every output in ONNX Runtime's own memory. `spentMs`: a refused run's time, counted with it. */
  #runCopying(session: InlineSession, feeds: Record<string, Tensor>, spentMs: number): InlineRun {
    let results: Record<string, unknown>;
    const startedAt = performance.now();
    try {
      results = session.native.run(feeds, session.fetches, RUN_OPTIONS);
    } catch (error) {
      throw runFailure(error);
    }
    const computeMs = spentMs + performance.now() - startedAt;
    const transfer: ArrayBuffer[] = [];
    const outputs = session.outputNames.map((name) =>
      fromWire(outputToWire(name, results[name] as Tensor, transfer)),
    );
    if (session.directAllowed) this.#noteShapes(session, results);
    return { outputs, computeMs };
  }

  /** What the run produced for the outputs that may go straight into shared memory (DirectOutput.seen). */
  #noteShapes(session: InlineSession, results: Record<string, unknown>): void {
    for (const [name, output] of session.direct) {
      if (output.seen === 'differs') continue;
      output.seen = sameDims((results[name] as Tensor).dims, output.dims) ? 'agrees' : 'differs';
    }
  }

  /**
   * The run's fetches, with a tensor over its place in shared memory for each of `places` that maps here; those
   * outputs go into `written`. One that does not map (its segment removed or changed since the caller checked it,
   * or not attachable) is left to the caller, whose own checks report it.
   */
  #fetchesInto(
    session: InlineSession,
    places: readonly OutputSegment[],
    OrtTensor: OrtTensorConstructor,
    written: Map<string, WireSegmentOutput>,
  ): Record<string, Tensor | null> {
    const fetches: Record<string, Tensor | null> = { ...session.fetches };
    for (const { name, segment } of places) {
      const output = session.direct.get(name)!;
      let bytes: Uint8Array;
      try {
        bytes = this.#segments.bytes(segment, 'write', `output ${JSON.stringify(name)}`);
      } catch {
        continue;
      }
      this.#sweepTimer ??= setInterval(() => {
        this.#segments.sweep();
        if (this.#segments.cachedCount === 0) this.#stopSweeping();
      }, SEGMENT_SWEEP_MS).unref();
      const Typed = TYPED_ARRAY_FOR[output.type];
      const data = new Typed(
        bytes.buffer as ArrayBuffer,
        bytes.byteOffset,
        output.byteLength / Typed.BYTES_PER_ELEMENT,
      );
      fetches[name] = new OrtTensor(output.type, data as Tensor.DataTypeMap[OrtTensorType], output.dims);
      written.set(name, {
        name,
        type: output.type,
        dims: [...output.dims],
        byteLength: output.byteLength,
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
    // No inline model left: nothing will write into the segments mapped for one.
    if (this.#sessions.size === 0) {
      this.#stopSweeping();
      this.#segments.close();
    }
  }

  #stopSweeping(): void {
    clearInterval(this.#sweepTimer);
    this.#sweepTimer = undefined;
  }

  async close(): Promise<void> {
    await Promise.all([...this.#sessions.keys()].map((key) => this.release(key)));
    this.#stopSweeping();
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

/**
 * The outputs whose element type and every dimension the model declares, of at least MIN_DIRECT_OUTPUT_BYTES, that
 * are not also inputs: ONNX Runtime answers a graph output that is a graph input with the memory it was given for
 * it, unwritten (measured with onnxruntime-node 1.30: neither the input's values nor a copy of them).
 */
export function directOutputsOf(
  metadata: readonly Binding.ValueMetadata[],
  inputNames: readonly string[],
): Map<string, DirectOutput> {
  const direct = new Map<string, DirectOutput>();
  for (const output of metadata) {
    if (inputNames.includes(output.name)) continue;
    // onnxruntime-node's binding metadata gives ONNX's TensorProto element type; core knows those the agent returns.
    const dataType = dataTypeFromOnnx(output.type);
    const type = dataType && DATA_TYPES[dataType].ort;
    // onnxruntime-node gives -1 for a dimension only the run knows.
    if (!output.isTensor || type === undefined) continue;
    if (!output.shape.every((dim) => Number.isSafeInteger(dim) && dim > 0)) continue;
    const byteLength = output.shape.reduce(
      (product, dim) => product * dim,
      TYPED_ARRAY_FOR[type].BYTES_PER_ELEMENT,
    );
    if (Number.isSafeInteger(byteLength) && byteLength >= MIN_DIRECT_OUTPUT_BYTES)
      direct.set(output.name, { type, dims: [...output.shape], byteLength, seen: 'unseen' });
  }
  return direct;
}

/**
 * The places of `outputSegments` ONNX Runtime may write into itself (see InlineRunner.run), before mapping;
 * undefined when none.
 */
function directPlaces(
  session: InlineSession,
  inputs: readonly PoolTensor[],
  outputSegments: readonly OutputSegment[],
): OutputSegment[] | undefined {
  let places: OutputSegment[] | undefined;
  for (const place of outputSegments) {
    const output = session.direct.get(place.name);
    const { segment } = place;
    if (
      output === undefined ||
      output.seen !== 'agrees' ||
      segment.byteLength !== output.byteLength ||
      segment.offset % TYPED_ARRAY_FOR[output.type].BYTES_PER_ELEMENT !== 0 ||
      !HOST_IS_LITTLE_ENDIAN ||
      inputs.some((input) => input.segment !== undefined && rangesOverlap(segment, input.segment)) ||
      outputSegments.some((other) => other !== place && rangesOverlap(segment, other.segment))
    )
      continue;
    (places ??= []).push(place);
  }
  return places;
}

function sameDims(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((dim, i) => dim === b[i]);
}

/**
 * ONNX Runtime's refusal of a pre-allocated output whose shape is not the run's ("The output OrtValue provided for
 * output 'y' of node … has shape {2,16384} but the computed output shape for this run is {1,16384}. When calling
 * Run() with pre-allocated output OrtValues …", onnxruntime 1.30).
 */
const REFUSED_OUTPUT_MEMORY = /output OrtValue provided for output|pre-allocated output/i;

/** ONNX Runtime's failure as the pool reports it. */
function runFailure(error: unknown): InferenceError {
  const message = errorMessage(error);
  return new InferenceError(isOutOfMemory(message) ? 'out-of-memory' : 'run-failed', message);
}

/** Every inline run's options: none (onnxruntime-node's public run passes an empty object too). */
const RUN_OPTIONS: InferenceSession.RunOptions = {};
