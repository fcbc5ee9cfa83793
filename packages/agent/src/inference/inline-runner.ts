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
import { InferenceError } from './errors.js';
import { outputToWire, toOrtTensor, type OrtTensorConstructor } from './ort-tensors.js';
import type { ModelBytes } from './protocol.js';
import { fromWire, inputsInPlace, type PoolTensor } from './tensor-transfer.js';

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
    });
    return true;
  }

  /**
   * Runs the inputs where they are (no copy), synchronously, before this returns; the outputs are ONNX Runtime's
   * own buffers.
   */
  run(key: string, inputs: readonly PoolTensor[]): InlineRun {
    const session = this.#sessions.get(key);
    const parts = this.#parts;
    if (!session || !parts) throw new InferenceError('unloaded', `no inline session ${key}`);
    const feeds: Record<string, Tensor> = {};
    for (const input of inputsInPlace(inputs)) feeds[input.name] = toOrtTensor(input, parts.Tensor);
    let results: Record<string, unknown>;
    const startedAt = performance.now();
    try {
      results = session.native.run(feeds, session.fetches, RUN_OPTIONS);
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
    const outputs = session.outputNames.map((name) =>
      fromWire(outputToWire(name, results[name] as Tensor, transfer)),
    );
    return { outputs, computeMs };
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

/** Every inline run's options: none (onnxruntime-node's public run passes an empty object too). */
const RUN_OPTIONS: InferenceSession.RunOptions = {};
