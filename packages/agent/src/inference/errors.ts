/** Why the inference pool could not do something; the model registry turns these into AgentErrors. */
export type InferenceFailureKind =
  /** The worker thread running the request or load stopped (crash, termination, out of heap). */
  | 'worker-died'
  /** ONNX Runtime could not allocate memory. */
  | 'out-of-memory'
  /** ONNX Runtime refused to create a session from the model. */
  | 'model-rejected'
  /** Dynamic batching was asked for a model without a batch dimension that fits (batching.ts says which). */
  | 'unbatchable'
  /** ONNX Runtime failed while running the model. */
  | 'run-failed'
  /** A System V segment the request names is gone, changed, or too small, as the worker found it. */
  | 'segment-unusable'
  /** Too many requests for this model are already waiting. */
  | 'queue-full'
  /** The model was unloaded before the request ran. */
  | 'unloaded'
  /** No session of this model is loaded. */
  | 'unknown-model'
  /** Every instance of the model was lost (its reload after a worker crash failed). */
  | 'no-instance'
  /** The pool is shutting down. */
  | 'closed';

export class InferenceError extends Error {
  override readonly name = 'InferenceError';
  constructor(
    readonly kind: InferenceFailureKind,
    message: string,
  ) {
    super(message);
  }
}

/** An error's message, trimmed (ONNX Runtime's end in a newline). */
export function errorMessage(error: unknown): string {
  return (error instanceof Error ? error.message : String(error)).trim();
}

/** Whether ONNX Runtime's message says it could not allocate memory (it has a few spellings for that). */
export function isOutOfMemory(message: string): boolean {
  return /bad_alloc|failed to allocate|out of memory|cannot allocate memory|ENOMEM/i.test(message);
}
