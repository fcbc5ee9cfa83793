/**
 * ONNX Runtime sessions on the agent's event loop, for the inline path: a model whose runs take tens of
 * microseconds costs more to hand to a worker thread (two thread wake-ups, two structured clones) than to run.
 * Each model has its own session here, created only once the pool has measured that the model is fast (see
 * InlineBudget). The pool decides which requests come here; this module only loads, runs and releases.
 */
import { stat } from 'node:fs/promises';
import type ortModule from 'onnxruntime-node';
import type { InferenceSession, Tensor } from 'onnxruntime-node';
import { InferenceError } from './errors.js';
import { outputToWire, toOrtTensor, type OrtTensorConstructor } from './ort-tensors.js';
import type { ModelBytes } from './protocol.js';
import { fromWire, inputsInPlace, type PoolTensor } from './tensor-transfer.js';

/** Models larger than this are never loaded on the event loop: creating their session would block it too long. */
export const MAX_INLINE_MODEL_BYTES = 32 * 1024 * 1024;

type Ort = typeof ortModule;

export interface InlineRun {
  outputs: PoolTensor[];
  /** Inside ONNX Runtime's run, in milliseconds. */
  computeMs: number;
}

export class InlineRunner {
  readonly #sessions = new Map<string, InferenceSession>();
  #ort: Promise<Ort> | undefined;

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
    const ort = await this.#loadOrt();
    const session =
      typeof model === 'string'
        ? await ort.InferenceSession.create(model, options)
        : await ort.InferenceSession.create(model.model, {
            ...options,
            externalData: [...model.externalData],
          });
    await this.release(key);
    this.#sessions.set(key, session);
    return true;
  }

  /** Runs the inputs where they are (no copy); the outputs are ONNX Runtime's own buffers. */
  async run(key: string, inputs: readonly PoolTensor[]): Promise<InlineRun> {
    const session = this.#sessions.get(key);
    const ort = this.#ort && (await this.#ort);
    if (!session || !ort) throw new InferenceError('unloaded', `no inline session ${key}`);
    const feeds: Record<string, Tensor> = {};
    for (const input of inputsInPlace(inputs))
      feeds[input.name] = toOrtTensor(input, ort.Tensor as unknown as OrtTensorConstructor);
    // onnxruntime-node runs the model in a setImmediate callback. Immediates run in order, so one queued just
    // before marks when that run starts, and the promise settles in the microtasks right after it: the time
    // measured is ONNX Runtime's alone, not the rest of the event loop's turn.
    let startedAt = 0;
    setImmediate(() => {
      startedAt = performance.now();
    });
    let results: InferenceSession.ReturnType;
    try {
      results = await session.run(feeds);
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
    const outputs = session.outputNames.map((name) => fromWire(outputToWire(name, results[name]!, transfer)));
    return { outputs, computeMs };
  }

  async release(key: string): Promise<void> {
    const session = this.#sessions.get(key);
    this.#sessions.delete(key);
    await session?.release().catch(() => {});
  }

  async close(): Promise<void> {
    await Promise.all([...this.#sessions.keys()].map((key) => this.release(key)));
  }

  #loadOrt(): Promise<Ort> {
    this.#ort ??= import('onnxruntime-node').then(
      (module) => (module as { default?: Ort }).default ?? module,
    );
    return this.#ort;
  }
}
