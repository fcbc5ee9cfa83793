/**
 * The inference pool's public types: its options, a run's options, its events and its stats (pool.ts re-exports
 * them). Kept apart so that the pool's parts (worker-set.ts, inline-models.ts) can share them without importing
 * the pool.
 */
import type { InlineBudgetOptions, InlineBudgetStats, InlinePath } from './inline-budget.js';
import type { OutputSegment, WireTensorInfo } from './protocol.js';
import type { OrtSessionConfig } from './session-options.js';
import type { InputByteCounts } from './tensor-transfer.js';

export interface RunOptions {
  /**
   * The caller gives up the input buffers: a tensor whose bytes fill its whole ArrayBuffer is transferred to the
   * worker without a copy, and the caller's buffer is detached (byteLength 0) afterwards. Without this, or for
   * a view into a larger buffer, the bytes are copied once. SharedArrayBuffer bytes are not copied on this
   * thread; the worker copies them once (onnxruntime-node refuses tensors over a SharedArrayBuffer).
   */
  transferInputs?: boolean;
  /**
   * An ArrayBuffer the caller gives up in full (e.g. a gRPC request message that has memory of its own): inputs
   * that are views into it are transferred with it, once, without a copy. The caller must treat it as gone: it is
   * detached when the run goes to a worker, and left as it is when the run is inline.
   */
  ownedBuffer?: ArrayBuffer;
  /**
   * Outputs to write into System V shared memory (where the event loop checked the caller may write): a worker
   * writes them there and sends back only their type and shape (`writtenToSegment`, empty `data`). Outputs not
   * named here come back as bytes; so may those of a run on the event loop (see InlineRunner.run): the caller
   * writes an output named here that comes back as bytes.
   */
  outputSegments?: OutputSegment[];
}

/**
 * Dynamic batching (InferencePool.loadModel): requests for the model that are waiting for a worker are joined along
 * the model's batch dimension and run as one, each request getting its own slice of the outputs. Only on the
 * workers, only between requests whose other dimensions and types match (and whose inputs without the batch
 * dimension are byte for byte the same), never for requests naming shared memory for an output or an input.
 */
export interface BatchingOptions {
  /** The most one run may hold, counted along the batch dimension (the requests' sizes there summed); at least 2. */
  maxBatchSize: number;
  /**
   * The symbolic dimension the requests are joined along, as the model names it (e.g. "batch"). Every output must
   * have it exactly once, and so must at least one input; inputs without it are not joined (they must be the same
   * in every request of a run). Default: the one name that fits; a model with none or several must have it named.
   */
  dimension?: string;
}

export interface LoadModelOptions {
  /** Join waiting requests into one run (off without it). */
  batching?: BatchingOptions;
}

export interface ModelSessionInfo {
  /** The model's inputs and outputs as ONNX Runtime sees them. */
  inputs: WireTensorInfo[];
  outputs: WireTensorInfo[];
  /** Worker indexes holding an instance. */
  workers: number[];
  /** The batching in force for the model, when it was asked for (and fits the model: loadModel fails otherwise). */
  batching?: { dimension: string; maxBatchSize: number };
}

export type PoolEvent =
  | {
      type: 'worker-exit';
      worker: number;
      exitCode: number;
      reason: string;
      /** Requests that were running or loading on it and have failed. */
      failed: number;
    }
  | { type: 'worker-restarted'; worker: number; reloaded: string[] }
  | { type: 'instance-lost'; worker: number; key: string; reason: string }
  /** The model's inline session could not be created: its requests stay on the workers. */
  | { type: 'inline-unavailable'; key: string; reason: string }
  /** The model's inline runs went far over their ceiling `demotions` times lately: only workers run it for parkMs. */
  | { type: 'inline-parked'; key: string; demotions: number; parkMs: number }
  /** A joined run's outputs did not split along the batch dimension: the model's requests run one at a time now. */
  | { type: 'batching-unavailable'; key: string; reason: string };

export interface InferencePoolOptions {
  workers: number;
  session: OrtSessionConfig;
  /** Requests for one model waiting for a worker; more fail with 'queue-full'. Default 256. */
  maxQueuedPerModel?: number;
  /** Delay before restarting a worker that died again soon after its last restart (doubles up to max). */
  restartDelayMs?: { initial: number; max: number };
  /**
   * After each inference, a worker keeps polling for its next request for up to this many microseconds (0 to
   * 10000) before it goes to sleep. A request that arrives meanwhile skips waking the thread and finds ONNX
   * Runtime's caches warm; each inference may then cost up to this much extra CPU, and none while no requests
   * come. Only while a core is to spare: fewer workers than cores − 1 running or polling (the main thread keeps
   * a core); the polling also stops early when the thread is preempted. Default 0 (off): it shortens requests
   * that come one at a time, at the cost of CPU (see docs/benchmarks.md).
   */
  hotWaitMicros?: number;
  /**
   * A model's requests are handed ahead to its busy worker only when its runs, and the running one's, average at
   * most this many milliseconds. Default HAND_AHEAD_MAX_COMPUTE_MS (2 ms).
   */
  handAheadMaxComputeMs?: number;
  /**
   * The inline path: requests for a model whose measured runs average at most `maxRunMicros` run on the event
   * loop, in a session of their own, while inline runs take at most `eventLoopShare` of its time (see
   * InlineBudget); with `idleMaxRunMicros`, a model whose runs average at most that also runs there while no other
   * request is in the pool and the event loop had nothing to do (idle runs); everything else goes to the workers.
   * Default off (`maxRunMicros` 0); the agent turns it on from its configuration. Only with the CPU execution
   * provider alone.
   */
  inline?: InlineBudgetOptions;
  /** Told about worker crashes and restarts (for logs and metrics). */
  onEvent?: (event: PoolEvent) => void;
  /**
   * The calling thread's CPU time in milliseconds (the agent passes its native addon's): an inline run is judged
   * by the lesser of its wall time and the CPU its thread spent. Used only with 1 intra-op thread (with more, ONNX
   * Runtime's own threads do part of a run). Default: the whole process's (process.cpuUsage), which also counts
   * the workers' and so errs towards judging by wall time while they compute.
   */
  threadCpuMs?: () => number;
}

export interface PoolStats {
  workers: Array<{
    index: number;
    threadId: number | null;
    ready: boolean;
    busy: boolean;
    /** Polling for its next request (hotWaitMicros) rather than asleep. */
    hot: boolean;
    sessions: string[];
    restarts: number;
  }>;
  models: Array<{ key: string; workers: number[]; queued: number; running: number }>;
  /**
   * How input bytes reached the workers: transferred without a copy; shared (a SharedArrayBuffer, copied once
   * inside the worker, off the event loop); copied once on this thread (`copies` counts those tensors); in
   * System V shared memory, which the worker maps itself (`segment`: nothing sent; no copy unless misaligned or on
   * a big-endian host, then one inside the worker).
   */
  inputBytes: InputByteCounts;
  /**
   * Where requests ran (warm-up runs included): inline within the event-loop share, inline as idle runs (the
   * agent had nothing else to do; not charged to the share), or on a worker (a joined run counts each request it
   * answered). The three add up to all requests run.
   */
  runs: Record<InlinePath | 'worker', number>;
  /** Worker runs that joined two or more requests (dynamic batching), and the requests they answered. */
  batches: { runs: number; requests: number };
  inline: InlineBudgetStats & {
    /**
     * Models running inline now, with their average run time in microseconds and how: `inline` (within the
     * share) or `inline_idle` (over the per-run ceiling, so only as idle runs).
     */
    models: Array<{ key: string; computeMicros: number; path: InlinePath }>;
    /** Of `demotions`, the near-ceiling runs their model's credit paid for (see NEAR_CEILING_SHARE). */
    nearCeilingPaid: number;
  };
}
