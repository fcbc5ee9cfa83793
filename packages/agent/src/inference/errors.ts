/** Why the inference pool could not do something; the model registry turns these into AgentErrors. */
export type InferenceFailureKind =
  /** The worker thread running the request or load stopped (crash, termination, out of heap). */
  | 'worker-died'
  /** ONNX Runtime could not allocate memory. */
  | 'out-of-memory'
  /** ONNX Runtime refused to create a session from the model. */
  | 'model-rejected'
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
