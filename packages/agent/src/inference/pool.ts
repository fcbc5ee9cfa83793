import { InferenceError } from './errors.js';
import {
  DEFAULT_INLINE_BUDGET,
  InlineBudget,
  RUNS_BEFORE_INLINE,
  type InlineBudgetOptions,
  type InlineBudgetStats,
  type InlinePath,
} from './inline-budget.js';
import { InlineRunner } from './inline-runner.js';
import {
  WORKER_CONTROL,
  preciseNow,
  type FromWorker,
  type ModelBytes,
  type OutputSegment,
  type ToWorker,
  type WireTensorInfo,
} from './protocol.js';
import {
  HAND_AHEAD_MAX_COMPUTE_MS,
  handAheadTo,
  idleSlot,
  inlinePath,
  poolIsIdle,
  slotCanRun,
  takeOldestWaiting,
  takesAhead,
  type Control,
  type Job,
  type ModelEntry,
  type RunResult,
  type Slot,
} from './scheduling.js';
import { toOrtSessionOptions, type OrtSessionConfig } from './session-options.js';
import {
  copiedInputs,
  fromWire,
  prepareInputs,
  type InputByteCounts,
  type PoolTensor,
} from './tensor-transfer.js';
import {
  deathOf,
  newSlot,
  restartDelay,
  ringDoorbell as ring,
  spawnWorkerThread,
  stopWorker,
} from './worker-thread.js';

export type { PoolTensor } from './tensor-transfer.js';
export type { RunResult } from './scheduling.js';

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

export interface ModelSessionInfo {
  /** The model's inputs and outputs as ONNX Runtime sees them. */
  inputs: WireTensorInfo[];
  outputs: WireTensorInfo[];
  /** Worker indexes holding an instance. */
  workers: number[];
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
  | { type: 'inline-unavailable'; key: string; reason: string };

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
   * agent had nothing else to do; not charged to the share), or on a worker. The three add up to all runs.
   */
  runs: Record<InlinePath | 'worker', number>;
  inline: InlineBudgetStats & {
    /**
     * Models running inline now, with their average run time in microseconds and how: `inline` (within the
     * share) or `inline_idle` (over the per-run ceiling, so only as idle runs).
     */
    models: Array<{ key: string; computeMicros: number; path: InlinePath }>;
  };
}

const DEFAULT_MAX_QUEUED = 256;
const DEFAULT_RESTART_DELAY = { initial: 100, max: 10_000 };
const MAX_HOT_WAIT_MICROS = 10_000;

/**
 * A pool of inference worker threads. Each worker owns ONNX Runtime sessions for the models assigned to it;
 * a model has one or more instances (sessions) on distinct workers. A worker runs one request at a time; a
 * request starts at once on an idle worker holding its model, else waits in the model's queue and is taken,
 * oldest first across models, by the first such worker to become free (so it never waits behind a busy
 * instance while another is idle). For fast models (see scheduling.ts) one waiting request per busy worker is
 * posted to it ahead of time, so that the worker goes from one run to the next without sleeping in between. A
 * worker that dies fails what it was running (and the request handed ahead to it) with 'worker-died', is
 * replaced, and its sessions are loaded again.
 */
export class InferencePool {
  readonly #options: Required<Omit<InferencePoolOptions, 'onEvent'>> & Pick<InferencePoolOptions, 'onEvent'>;
  readonly #budget: InlineBudget;
  readonly #inline = new InlineRunner();
  readonly #runs: PoolStats['runs'] = { inline: 0, inline_idle: 0, worker: 0 };
  readonly #slots: Slot[] = [];
  readonly #models = new Map<string, ModelEntry>();
  /** InferenceWorkerData.activity, an Int32 per worker. */
  #activity = new Int32Array(new SharedArrayBuffer(0));
  #nextId = 1;
  #closed = false;
  readonly #inputBytes: InputByteCounts = { transferred: 0, shared: 0, copied: 0, copies: 0, segment: 0 };

  private constructor(options: InferencePoolOptions) {
    this.#options = {
      maxQueuedPerModel: DEFAULT_MAX_QUEUED,
      restartDelayMs: DEFAULT_RESTART_DELAY,
      hotWaitMicros: 0,
      handAheadMaxComputeMs: HAND_AHEAD_MAX_COMPUTE_MS,
      inline: { ...DEFAULT_INLINE_BUDGET, maxRunMicros: 0, idleMaxRunMicros: 0 },
      ...options,
    };
    const cpuOnly = this.#options.session.executionProviders.every((ep) => ep.name === 'cpu');
    this.#budget = new InlineBudget(
      cpuOnly ? this.#options.inline : { ...this.#options.inline, maxRunMicros: 0 },
    );
  }

  /** Starts the workers; resolves once every one has loaded ONNX Runtime. */
  static async start(options: InferencePoolOptions): Promise<InferencePool> {
    if (!Number.isInteger(options.workers) || options.workers < 1) {
      throw new RangeError(`workers must be a whole number ≥ 1, got ${options.workers}`);
    }
    const hot = options.hotWaitMicros ?? 0;
    if (!Number.isInteger(hot) || hot < 0 || hot > MAX_HOT_WAIT_MICROS) {
      throw new RangeError(
        `hotWaitMicros must be a whole number of microseconds from 0 to ${MAX_HOT_WAIT_MICROS}, got ${hot}`,
      );
    }
    const pool = new InferencePool(options); // validates the inline budget
    pool.#activity = new Int32Array(new SharedArrayBuffer(options.workers * 4));
    try {
      await Promise.all(
        Array.from({ length: options.workers }, (_, index) => {
          const slot = newSlot(index);
          pool.#slots.push(slot);
          return pool.#spawn(slot);
        }),
      );
    } catch (error) {
      await pool.close();
      throw error;
    }
    return pool;
  }

  get workerCount(): number {
    return this.#slots.length;
  }

  /**
   * Creates `instances` sessions of the model (capped at the number of workers), on the workers holding the
   * fewest sessions. All or nothing: if any instance fails, the others are released and the error thrown
   * ('model-rejected' with ONNX Runtime's reason, 'out-of-memory', or 'worker-died'). `model` is a path or the
   * model's bytes; bytes are kept while the model is loaded, so a restarted worker runs the same ones.
   */
  async loadModel(key: string, model: string | ModelBytes, instances: number): Promise<ModelSessionInfo> {
    this.#assertOpen();
    if (this.#models.has(key)) throw new Error(`a session set named ${key} is already in the pool`);
    const count = Math.max(1, Math.min(instances, this.#slots.length));
    const chosen = [...this.#slots]
      .sort((a, b) => a.sessions.size - b.sessions.size || a.index - b.index)
      .slice(0, count);
    const entry: ModelEntry = {
      key,
      model,
      slots: new Set(chosen),
      queue: [],
      running: 0,
      workerRuns: 0,
      inline: 'off',
      inlineAfterRuns: RUNS_BEFORE_INLINE,
    };
    this.#models.set(key, entry);
    const results = await Promise.allSettled(chosen.map((slot) => this.#loadOn(slot, entry)));
    const failure = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failure || this.#models.get(key) !== entry) {
      await this.unloadModel(key).catch(() => {});
      throw (
        failure?.reason ?? new InferenceError('unloaded', `model ${key} was unloaded while it was loading`)
      );
    }
    const first = (results[0] as PromiseFulfilledResult<Extract<FromWorker, { op: 'loaded' }>>).value;
    return { inputs: first.inputs, outputs: first.outputs, workers: chosen.map((s) => s.index) };
  }

  /** Runs one inference on the model's least-busy instance. */
  run(key: string, inputs: readonly PoolTensor[], options: RunOptions = {}): Promise<RunResult> {
    return this.#submit(key, inputs, options, undefined);
  }

  /** Runs the same inputs once on every instance of the model (e.g. a warm-up after load). */
  async runOnEveryInstance(key: string, inputs: readonly PoolTensor[]): Promise<RunResult[]> {
    const entry = this.#models.get(key);
    if (!entry) throw new InferenceError('unknown-model', `no session set named ${key} is loaded`);
    return Promise.all([...entry.slots].map((slot) => this.#submit(key, inputs, {}, slot)));
  }

  /**
   * Releases the model's sessions. Requests still waiting for a worker fail with 'unloaded'; a request already
   * running finishes first (the worker handles the release after it).
   */
  async unloadModel(key: string): Promise<void> {
    const entry = this.#models.get(key);
    if (!entry) return;
    this.#models.delete(key);
    for (const job of entry.queue.splice(0)) {
      job.reject(new InferenceError('unloaded', `model ${key} was unloaded before this request ran`));
    }
    // Inline runs are synchronous (InlineRunner.run): none can be under way while this runs.
    const releaseInline = async () => {
      entry.inline = 'off';
      await this.#inline.release(key);
    };
    await Promise.all([
      releaseInline(),
      ...[...entry.slots].map(async (slot) => {
        if (!slot.sessions.has(key)) return;
        slot.sessions.delete(key);
        if (!slot.worker) return; // a dead worker holds nothing; its restart will not reload this key
        await this.#control(slot, { op: 'release', id: this.#id(), key }).catch(() => {});
      }),
    ]);
  }

  /**
   * Terminates a worker as if it had crashed, and replaces it: what it was running fails with 'worker-died',
   * its sessions are loaded into the new worker. For operators (a worker that grew too large) and for tests.
   * A worker inside ONNX Runtime cannot be stopped safely, so a running inference finishes computing first;
   * its result is discarded.
   */
  async recycleWorker(index: number): Promise<void> {
    const slot = this.#slots[index];
    if (!slot) throw new RangeError(`no worker ${index}; the pool has ${this.#slots.length}`);
    if (slot.worker) await stopWorker(slot.worker, slot.control);
  }

  stats(): PoolStats {
    return {
      workers: this.#slots.map((slot) => ({
        index: slot.index,
        threadId: slot.worker?.threadId ?? null,
        ready: slot.ready,
        busy: slot.running !== null,
        hot: slot.worker !== null && Atomics.load(slot.control, WORKER_CONTROL.HOT) === 1,
        sessions: [...slot.sessions.keys()],
        restarts: slot.restarts,
      })),
      models: [...this.#models.values()].map((entry) => ({
        key: entry.key,
        workers: [...entry.slots].map((s) => s.index),
        queued: entry.queue.length,
        running: entry.running,
      })),
      inputBytes: { ...this.#inputBytes },
      runs: { ...this.#runs },
      inline: {
        ...this.#budget.stats(performance.now()),
        models: [...this.#models.values()]
          .filter(
            (entry) =>
              entry.inline === 'on' &&
              entry.workerRuns >= entry.inlineAfterRuns &&
              this.#budget.fastEnoughWhenIdle(entry.computeMs ?? Infinity),
          )
          .map((entry) => ({
            key: entry.key,
            computeMicros: Math.round((entry.computeMs ?? 0) * 1000),
            path: this.#budget.fastEnough(entry.computeMs ?? Infinity) ? 'inline' : 'inline_idle',
          })),
      },
    };
  }

  /** Fails everything pending with 'closed' and stops the workers. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const closed = () => new InferenceError('closed', 'the inference pool is shutting down');
    for (const entry of this.#models.values()) for (const job of entry.queue.splice(0)) job.reject(closed());
    this.#models.clear();
    await Promise.all(
      this.#slots.map(async (slot) => {
        slot.running?.reject(closed());
        slot.ahead?.reject(closed());
        slot.running = null;
        slot.ahead = null;
        for (const control of [...slot.controls.values(), ...slot.backlog]) control.reject(closed());
        slot.controls.clear();
        slot.backlog = [];
        const worker = slot.worker;
        slot.worker = null;
        slot.ready = false;
        if (worker) await stopWorker(worker, slot.control);
      }),
    );
    await this.#inline.close();
  }

  // --- workers -------------------------------------------------------------------------------------------------

  #spawn(slot: Slot): Promise<void> {
    return spawnWorkerThread(
      slot,
      { activity: this.#activity, hotWaitMicros: this.#options.hotWaitMicros },
      {
        ready: () => {
          for (const control of slot.backlog.splice(0)) this.#post(slot, control);
          this.#pump(slot);
        },
        reply: (message) => this.#onReply(slot, message),
        exited: (exitCode, started) => {
          if (this.#closed) return;
          // A restart that failed to start: try again later rather than give up on the slot.
          if (started || slot.restarts > 0) this.#died(slot, exitCode);
        },
      },
    );
  }

  /** A worker stopped unexpectedly: fail what it was doing, then replace it and reload its sessions. */
  #died(slot: Slot, exitCode: number): void {
    const { reason, kind } = deathOf(slot, exitCode);
    slot.worker = null;
    slot.ready = false;
    let failed = 0;
    if (slot.running) {
      const job = slot.running;
      slot.running = null;
      this.#finished(job);
      job.reject(
        new InferenceError(
          'worker-died',
          `the inference worker running this request stopped (${reason}); the request did not complete and may be retried`,
        ),
      );
      failed++;
    }
    if (slot.ahead) {
      const job = slot.ahead;
      slot.ahead = null;
      this.#finished(job);
      job.reject(
        new InferenceError(
          'worker-died',
          `the inference worker this request was handed to stopped (${reason}) before running it; it may be retried`,
        ),
      );
      failed++;
    }
    for (const control of slot.controls.values()) {
      control.reject(
        new InferenceError(kind, `the inference worker stopped (${reason}) while loading the model`),
      );
      failed++;
    }
    slot.controls.clear();
    // Sessions being loaded failed with their load; the ones that were ready are loaded again.
    for (const [key, state] of slot.sessions) {
      if (state === 'ready') slot.sessions.set(key, 'reloading');
      else if (state === 'loading')
        this.#dropInstance(slot, key, `the worker stopped while loading it (${reason})`);
    }
    // Warm-up runs pinned to this worker cannot run anywhere else.
    for (const entry of this.#models.values()) {
      entry.queue = entry.queue.filter((job) => {
        if (job.pinned !== slot) return true;
        job.reject(new InferenceError(kind, `the inference worker stopped (${reason})`));
        return false;
      });
    }
    this.#options.onEvent?.({ type: 'worker-exit', worker: slot.index, exitCode, reason, failed });
    slot.recentDeaths++;
    setTimeout(() => void this.#restart(slot), restartDelay(slot, this.#options.restartDelayMs)).unref();
  }

  async #restart(slot: Slot): Promise<void> {
    if (this.#closed) return;
    slot.restarts++;
    try {
      await this.#spawn(slot);
    } catch {
      return; // #spawn's exit handler scheduled another attempt
    }
    const reloaded: string[] = [];
    for (const [key, state] of [...slot.sessions]) {
      const entry = this.#models.get(key);
      if (state !== 'reloading' || !entry) continue;
      try {
        await this.#loadOn(slot, entry);
        reloaded.push(key);
      } catch (error) {
        if (slot.worker === null) return; // died again while reloading; #died has handled it
        this.#dropInstance(slot, key, (error as Error).message);
      }
    }
    this.#options.onEvent?.({ type: 'worker-restarted', worker: slot.index, reloaded });
  }

  /** Loads the model on one worker; the session is usable once this resolves. */
  async #loadOn(slot: Slot, entry: ModelEntry): Promise<Extract<FromWorker, { op: 'loaded' }>> {
    slot.sessions.set(entry.key, 'loading');
    const reply = await this.#control(slot, {
      op: 'load',
      id: this.#id(),
      key: entry.key,
      model: entry.model,
      options: toOrtSessionOptions(this.#options.session),
    });
    if (reply.op !== 'loaded') throw new Error(`unexpected reply ${reply.op} to load`);
    if (slot.sessions.get(entry.key) === 'loading') slot.sessions.set(entry.key, 'ready');
    this.#pump(slot);
    return reply;
  }

  /** The model loses its instance on this worker; with none left, its waiting requests fail. */
  #dropInstance(slot: Slot, key: string, reason: string): void {
    slot.sessions.delete(key);
    const entry = this.#models.get(key);
    if (!entry || !entry.slots.delete(slot)) return;
    this.#options.onEvent?.({ type: 'instance-lost', worker: slot.index, key, reason });
    if (entry.slots.size === 0) {
      for (const job of entry.queue.splice(0)) job.reject(noInstance(key, reason));
    }
  }

  // --- messages ------------------------------------------------------------------------------------------------

  #id(): number {
    return this.#nextId++;
  }

  #control(slot: Slot, message: ToWorker): Promise<FromWorker> {
    return new Promise((resolve, reject) => {
      const control: Control = { message, resolve, reject };
      if (slot.ready) this.#post(slot, control);
      else slot.backlog.push(control);
    });
  }

  #post(slot: Slot, control: Control): void {
    slot.controls.set(control.message.id, control);
    slot.worker!.postMessage(control.message);
    ringDoorbell(slot);
  }

  #onReply(slot: Slot, message: FromWorker): void {
    if (message.op === 'ready') return;
    const job = slot.running;
    if (job && message.id === job.seq && (message.op === 'done' || message.op === 'failed')) {
      // The worker runs what was handed ahead to it as soon as it is done with this one.
      slot.running = slot.ahead;
      slot.ahead = null;
      slot.recentDeaths = 0;
      this.#finished(job);
      if (message.op === 'done') {
        this.#runs.worker++;
        const entry = this.#models.get(job.key);
        if (entry) {
          entry.workerRuns++;
          this.#measured(entry, message.finishedAt - message.startedAt);
        }
        try {
          job.resolve({
            outputs: message.outputs.map(fromWire),
            queueMs: Math.max(0, message.startedAt - job.submittedAt),
            computeMs: Math.max(0, message.finishedAt - message.startedAt),
            worker: slot.index,
          });
        } catch (error) {
          job.reject(error as InferenceError);
        }
      } else {
        job.reject(
          new InferenceError(
            message.kind === 'no-session'
              ? 'unloaded'
              : message.kind === 'out-of-memory' || message.kind === 'segment-unusable'
                ? message.kind
                : 'run-failed',
            message.message,
          ),
        );
      }
      this.#pump(slot);
      return;
    }
    const control = slot.controls.get(message.id);
    if (!control) return;
    slot.controls.delete(message.id);
    slot.recentDeaths = 0;
    if (message.op === 'failed') {
      control.reject(
        new InferenceError(
          message.kind === 'out-of-memory' ? 'out-of-memory' : 'model-rejected',
          message.message,
        ),
      );
    } else {
      control.resolve(message);
    }
  }

  // --- scheduling ----------------------------------------------------------------------------------------------

  #submit(
    key: string,
    inputs: readonly PoolTensor[],
    options: RunOptions,
    pinned: Slot | undefined,
  ): Promise<RunResult> {
    if (this.#closed)
      return Promise.reject(new InferenceError('closed', 'the inference pool is shutting down'));
    const entry = this.#models.get(key);
    if (!entry)
      return Promise.reject(new InferenceError('unknown-model', `no session set named ${key} is loaded`));
    if (entry.slots.size === 0) return Promise.reject(noInstance(key, 'its instances were lost'));
    if (!pinned && entry.queue.length >= this.#options.maxQueuedPerModel) {
      return Promise.reject(
        new InferenceError(
          'queue-full',
          `${entry.queue.length} requests for model ${key} are already waiting for a worker (the limit is ${this.#options.maxQueuedPerModel}); retry later`,
        ),
      );
    }
    const inline = pinned
      ? undefined
      : inlinePath(
          entry,
          this.#budget,
          () => poolIsIdle(this.#slots, this.#models),
          () => performance.eventLoopUtilization().idle,
        );
    if (inline) return this.#runInline(entry, inputs, inline, options.outputSegments);
    const { wire, transfer } = prepareInputs(
      inputs,
      options.transferInputs === true,
      this.#inputBytes,
      options.ownedBuffer,
    );
    return new Promise<RunResult>((resolve, reject) => {
      const job: Job = {
        seq: this.#id(),
        key,
        inputs: wire,
        ...(options.outputSegments?.length && { outputSegments: options.outputSegments }),
        transfer,
        submittedAt: preciseNow(),
        resolve,
        reject,
      };
      if (pinned) job.pinned = pinned;
      const idle = pinned ? (slotCanRun(pinned, key) ? pinned : undefined) : idleSlot(entry);
      if (idle) {
        this.#start(idle, job, entry, 'running');
        return;
      }
      const busy = pinned ? undefined : handAheadTo(entry, this.#models, this.#options.handAheadMaxComputeMs);
      if (busy) this.#start(busy, job, entry, 'ahead');
      else entry.queue.push(job);
    });
  }

  /** Posts the job to the worker, to run now (`running`) or right after its current run (`ahead`). */
  #start(slot: Slot, job: Job, entry: ModelEntry, as: 'running' | 'ahead'): void {
    slot[as] = job;
    entry.running++;
    const message: ToWorker = {
      op: 'run',
      id: job.seq,
      key: job.key,
      inputs: job.inputs,
      ...(job.outputSegments && { outputSegments: job.outputSegments }),
    };
    try {
      slot.worker!.postMessage(message, job.transfer);
      ringDoorbell(slot);
    } catch {
      // A buffer that cannot be transferred (an external one, e.g. mapped memory): copy everything instead.
      try {
        const copies = copiedInputs(job.inputs, this.#inputBytes);
        slot.worker!.postMessage({ ...message, inputs: copies.wire }, copies.transfer);
        ringDoorbell(slot);
      } catch (error) {
        slot[as] = null;
        this.#finished(job);
        job.reject(
          new InferenceError(
            'run-failed',
            `the input tensors could not be handed to a worker: ${(error as Error).message}`,
          ),
        );
        queueMicrotask(() => this.#pump(slot));
      }
    }
  }

  #finished(job: Job): void {
    const entry = this.#models.get(job.key);
    if (entry) entry.running--;
  }

  /**
   * A worker became free (or gained a session): give it the oldest waiting request it can run, and, for fast
   * models, the next one to run after it.
   */
  #pump(slot: Slot): void {
    if (!slot.ready) return;
    if (!slot.running) {
      const oldest = takeOldestWaiting(slot, undefined, this.#models);
      if (!oldest) return;
      this.#start(slot, oldest.job, oldest.entry, 'running');
    }
    if (takesAhead(slot, this.#models, this.#options.handAheadMaxComputeMs)) {
      const next = takeOldestWaiting(slot, this.#options.handAheadMaxComputeMs, this.#models);
      if (next) this.#start(slot, next.job, next.entry, 'ahead');
    }
  }

  // --- the inline path ------------------------------------------------------------------------------------------

  /** Folds one measured run time into the model's average, and moves a fast model towards the inline path. */
  #measured(entry: ModelEntry, computeMs: number): void {
    entry.computeMs = entry.computeMs === undefined ? computeMs : 0.8 * entry.computeMs + 0.2 * computeMs;
    if (
      entry.inline === 'off' &&
      entry.workerRuns >= RUNS_BEFORE_INLINE &&
      this.#budget.fastEnoughWhenIdle(entry.computeMs)
    )
      void this.#loadInline(entry);
  }

  async #loadInline(entry: ModelEntry): Promise<void> {
    entry.inline = 'loading';
    let loaded = false;
    try {
      loaded = await this.#inline.load(entry.key, entry.model, toOrtSessionOptions(this.#options.session));
    } catch (error) {
      // The workers hold working sessions of it; this model stays on them, and the operator is told why (e.g. an
      // onnxruntime-node without the native binding the inline path uses, or a session option it refuses).
      this.#options.onEvent?.({
        type: 'inline-unavailable',
        key: entry.key,
        reason: (error instanceof Error ? error.message : String(error)).slice(0, 500),
      });
    }
    if (this.#models.get(entry.key) !== entry || this.#closed) {
      // Unloaded (or the pool closed) while its inline session was being created: nothing may keep that session.
      if (loaded && (this.#closed || !this.#models.has(entry.key))) await this.#inline.release(entry.key);
      return;
    }
    entry.inline = loaded ? 'on' : 'unfit';
  }

  /** Runs at once, on this thread (InlineRunner.run is synchronous); the promise is already settled. */
  #runInline(
    entry: ModelEntry,
    inputs: readonly PoolTensor[],
    path: InlinePath,
    outputSegments: readonly OutputSegment[] | undefined,
  ): Promise<RunResult> {
    // Idle runs are not charged to the event-loop share (see InlineBudget): nothing to settle for them.
    const expectedMs = entry.computeMs ?? 0;
    const charged = path === 'inline';
    const submittedAt = preciseNow();
    entry.running++;
    try {
      const { outputs, computeMs } = this.#inline.run(entry.key, inputs, outputSegments);
      this.#runs[path]++;
      if (charged) this.#budget.settle(expectedMs, computeMs);
      entry.computeMs = 0.8 * (entry.computeMs ?? computeMs) + 0.2 * computeMs;
      // One run far over the ceiling (a misjudged model, or inputs that make it slow): back to the workers,
      // which measure it again before it may return.
      if (this.#budget.tooSlow(computeMs, path))
        entry.inlineAfterRuns = entry.workerRuns + RUNS_BEFORE_INLINE;
      const queueMs = Math.max(0, preciseNow() - submittedAt - computeMs);
      return Promise.resolve({ outputs, queueMs, computeMs, worker: -1 });
    } catch (error) {
      if (charged) this.#budget.settle(expectedMs, 0);
      return Promise.reject(error as InferenceError);
    } finally {
      entry.running--;
    }
  }

  #assertOpen(): void {
    if (this.#closed) throw new InferenceError('closed', 'the inference pool is shutting down');
  }
}

function ringDoorbell(slot: Slot): void {
  ring(slot.control);
}

function noInstance(key: string, reason: string): InferenceError {
  return new InferenceError(
    'no-instance',
    `no worker holds a working session of model ${key} (${reason}); unload it and load it again`,
  );
}
