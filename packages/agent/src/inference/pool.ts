import { InferenceError } from './errors.js';
import { DEFAULT_INLINE_BUDGET } from './inline-budget.js';
import { InlineModels } from './inline-models.js';
import { batchableOf, checkBatchingOptions, planBatching } from './batching.js';
import type {
  InferencePoolOptions,
  LoadModelOptions,
  ModelSessionInfo,
  PoolStats,
  RunOptions,
} from './pool-types.js';
import { preciseNow, type ModelBytes, type WorkerFailureKind } from './protocol.js';
import {
  HAND_AHEAD_MAX_COMPUTE_MS,
  gatherBatch,
  waitsToJoin,
  handAheadTo,
  idleSlot,
  newModelEntry,
  poolIsIdle,
  requestsIn,
  slotCanRun,
  takeOldestWaiting,
  takesAhead,
  type Job,
  type ModelEntry,
  type RunResult,
  type Slot,
} from './scheduling.js';
import { toOrtSessionOptions } from './session-options.js';
import { fromWire, prepareInputs, type InputByteCounts, type PoolTensor } from './tensor-transfer.js';
import { WorkerSet, type LoadedReply, type LostRuns, type RunReply, type WorkerDeath } from './worker-set.js';
import { disableOnnxRuntimeTelemetry } from './ort-telemetry.js';

export type { PoolTensor } from './tensor-transfer.js';
export type { RunResult } from './scheduling.js';
export type {
  BatchingOptions,
  InferencePoolOptions,
  LoadModelOptions,
  ModelSessionInfo,
  PoolEvent,
  PoolStats,
  RunOptions,
} from './pool-types.js';

const DEFAULT_MAX_QUEUED = 256;
const DEFAULT_RESTART_DELAY = { initial: 100, max: 10_000 };
const MAX_HOT_WAIT_MICROS = 10_000;

type Settings = Required<Omit<InferencePoolOptions, 'onEvent' | 'threadCpuMs'>> &
  Pick<InferencePoolOptions, 'onEvent' | 'threadCpuMs'>;

/**
 * A pool of inference worker threads. Each worker owns ONNX Runtime sessions for the models assigned to it;
 * a model has one or more instances (sessions) on distinct workers. A worker runs one request at a time; a
 * request starts at once on an idle worker holding its model, else waits in the model's queue and is taken,
 * oldest first across models, by the first such worker to become free (so it never waits behind a busy
 * instance while another is idle, but for a short while to join a run: dynamic batching, see scheduling.ts). For
 * fast models one waiting request per busy worker is posted to it ahead of time, so that the worker goes from one
 * run to the next without sleeping in between. A
 * worker that dies fails what it was running (and the request handed ahead to it) with 'worker-died', is
 * replaced, and its sessions are loaded again.
 *
 * This class is the one scheduler: it asks the inline path (InlineModels) first whether a request runs on the
 * event loop, and hands the rest to the workers (WorkerSet: their lifecycle and messages).
 */
export class InferencePool {
  readonly #options: Settings;
  readonly #models = new Map<string, ModelEntry>();
  readonly #workers: WorkerSet;
  readonly #inline: InlineModels;
  #workerRuns = 0;
  /** Joined runs (dynamic batching) and the requests they answered. */
  readonly #batches = { runs: 0, requests: 0 };
  #closed = false;
  readonly #inputBytes: InputByteCounts = { transferred: 0, shared: 0, copied: 0, copies: 0, segment: 0 };

  private constructor(options: InferencePoolOptions) {
    const settings: Settings = {
      maxQueuedPerModel: DEFAULT_MAX_QUEUED,
      restartDelayMs: DEFAULT_RESTART_DELAY,
      hotWaitMicros: 0,
      handAheadMaxComputeMs: HAND_AHEAD_MAX_COMPUTE_MS,
      inline: { ...DEFAULT_INLINE_BUDGET, maxRunMicros: 0, idleMaxRunMicros: 0 },
      ...options,
    };
    this.#options = settings;
    const sessionOptions = () => toOrtSessionOptions(settings.session);
    const cpuOnly = settings.session.executionProviders.every((ep) => ep.name === 'cpu');
    this.#inline = new InlineModels({
      budget: cpuOnly ? settings.inline : { ...settings.inline, maxRunMicros: 0 },
      sessionOptions,
      models: this.#models,
      poolIdle: () => poolIsIdle(this.#workers.slots, this.#models),
      ...(settings.onEvent && { onEvent: settings.onEvent }),
      // The thread's clock counts a run's work only when ONNX Runtime does it all on that thread.
      ...(settings.threadCpuMs &&
        settings.session.intraOpNumThreads === 1 && { threadCpuMs: settings.threadCpuMs }),
    });
    this.#workers = new WorkerSet({
      workers: settings.workers,
      hotWaitMicros: settings.hotWaitMicros,
      restartDelayMs: settings.restartDelayMs,
      sessionOptions,
      ...(settings.onEvent && { onEvent: settings.onEvent }),
      events: {
        canTakeWork: (slot) => this.#pump(slot),
        runEnded: (slot, job, reply) => this.#runEnded(slot, job, reply),
        died: (slot, death, lost) => this.#workerDied(slot, death, lost),
        instanceLost: (slot, key, reason) => this.#dropInstance(slot, key, reason),
        modelOf: (key) => this.#models.get(key)?.model,
      },
    });
  }

  /** Starts the workers; resolves once every one has loaded ONNX Runtime. */
  static async start(options: InferencePoolOptions): Promise<InferencePool> {
    disableOnnxRuntimeTelemetry();
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
    try {
      await pool.#workers.start();
    } catch (error) {
      await pool.close();
      throw error;
    }
    return pool;
  }

  get workerCount(): number {
    return this.#workers.slots.length;
  }

  /**
   * Creates `instances` sessions of the model (capped at the number of workers), on the workers holding the
   * fewest sessions. All or nothing: if any instance fails, the others are released and the error thrown
   * ('model-rejected' with ONNX Runtime's reason, 'out-of-memory', or 'worker-died'). `model` is a path or the
   * model's bytes; bytes are kept while the model is loaded, so a restarted worker runs the same ones. With
   * `options.batching`, the model's waiting requests are joined into one run (BatchingOptions); a model without a
   * fitting batch dimension fails to load ('unbatchable', saying why).
   */
  async loadModel(
    key: string,
    model: string | ModelBytes,
    instances: number,
    options: LoadModelOptions = {},
  ): Promise<ModelSessionInfo> {
    if (this.#closed) throw closedError();
    if (options.batching) checkBatchingOptions(options.batching);
    if (this.#models.has(key)) throw new Error(`a session set named ${key} is already in the pool`);
    const slots = this.#workers.slots;
    const count = Math.max(1, Math.min(instances, slots.length));
    const chosen = [...slots]
      .sort((a, b) => a.sessions.size - b.sessions.size || a.index - b.index)
      .slice(0, count);
    const entry = newModelEntry(key, model, chosen);
    this.#models.set(key, entry);
    const results = await Promise.allSettled(chosen.map((slot) => this.#workers.load(slot, key, model)));
    const failure = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failure || this.#models.get(key) !== entry) {
      await this.unloadModel(key).catch(() => {});
      throw (
        failure?.reason ?? new InferenceError('unloaded', `model ${key} was unloaded while it was loading`)
      );
    }
    const first = (results[0] as PromiseFulfilledResult<LoadedReply>).value;
    const info: ModelSessionInfo = {
      inputs: first.inputs,
      outputs: first.outputs,
      workers: chosen.map((s) => s.index),
    };
    if (options.batching) {
      try {
        entry.batching = planBatching(key, first.inputs, first.outputs, options.batching);
      } catch (error) {
        await this.unloadModel(key).catch(() => {});
        throw error;
      }
      info.batching = { dimension: entry.batching.dimension, maxBatchSize: entry.batching.maxBatchSize };
    }
    return info;
  }

  /** Runs one inference: inline, on an idle instance, or after the runs before it (see scheduling.ts). */
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
    clearTimeout(entry.joinWait);
    for (const job of entry.queue.splice(0)) {
      job.reject(new InferenceError('unloaded', `model ${key} was unloaded before this request ran`));
    }
    // Inline runs are synchronous (InlineRunner.run): none can be under way while this runs.
    await Promise.all([
      this.#inline.release(entry),
      ...[...entry.slots].map((slot) => this.#workers.release(slot, key)),
    ]);
  }

  /**
   * Terminates a worker as if it had crashed, and replaces it: what it was running fails with 'worker-died',
   * its sessions are loaded into the new worker. For operators (a worker that grew too large) and for tests.
   * A worker inside ONNX Runtime cannot be stopped safely, so a running inference finishes computing first;
   * its result is discarded.
   */
  async recycleWorker(index: number): Promise<void> {
    await this.#workers.recycle(index);
  }

  stats(): PoolStats {
    return {
      workers: this.#workers.stats(),
      models: [...this.#models.values()].map((entry) => ({
        key: entry.key,
        workers: [...entry.slots].map((s) => s.index),
        queued: entry.queue.length,
        running: entry.running,
      })),
      inputBytes: { ...this.#inputBytes },
      runs: { ...this.#inline.runs, worker: this.#workerRuns },
      batches: { ...this.#batches },
      inline: this.#inline.stats(),
    };
  }

  /** Fails everything pending with 'closed' and stops the workers. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const entry of this.#models.values()) {
      clearTimeout(entry.joinWait);
      for (const job of entry.queue.splice(0)) job.reject(closedError());
    }
    this.#models.clear();
    for (const slot of this.#workers.slots) {
      slot.running?.reject(closedError());
      slot.ahead?.reject(closedError());
      slot.running = null;
      slot.ahead = null;
    }
    await this.#workers.close(closedError);
    await this.#inline.close();
  }

  // --- scheduling ----------------------------------------------------------------------------------------------

  #submit(
    key: string,
    inputs: readonly PoolTensor[],
    options: RunOptions,
    pinned: Slot | undefined,
  ): Promise<RunResult> {
    if (this.#closed) return Promise.reject(closedError());
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
    const inline = pinned ? undefined : this.#inline.pathFor(entry, inputs);
    if (inline) return this.#inline.run(entry, inputs, inline, options.outputSegments);
    const { wire, transfer } = prepareInputs(
      inputs,
      options.transferInputs === true,
      this.#inputBytes,
      options.ownedBuffer,
    );
    return new Promise<RunResult>((resolve, reject) => {
      const job: Job = {
        seq: this.#workers.nextId(),
        key,
        inputs: wire,
        ...(options.outputSegments?.length && { outputSegments: options.outputSegments }),
        transfer,
        submittedAt: preciseNow(),
        resolve,
        reject,
      };
      if (pinned) job.pinned = pinned;
      else if (entry.batching && !job.outputSegments) {
        const batchable = batchableOf(entry.batching, wire);
        if (batchable) job.batchable = batchable;
      }
      let idle: Slot | undefined;
      if (pinned) idle = slotCanRun(pinned, key) ? pinned : undefined;
      else if (waitsToJoin(job, entry, this.#options.handAheadMaxComputeMs)) this.#boundTheWait(entry);
      else idle = idleSlot(entry);
      if (idle) {
        this.#start(idle, job, entry, 'running');
        return;
      }
      // A request that could join a run waits to be joined rather than be handed ahead (see runsShort).
      const busy =
        pinned || job.batchable
          ? undefined
          : handAheadTo(entry, this.#models, this.#options.handAheadMaxComputeMs);
      if (busy) this.#start(busy, job, entry, 'ahead');
      else entry.queue.push(job);
    });
  }

  /**
   * Posts the job to the worker, to run now (`running`) or right after its current run (`ahead`); with dynamic
   * batching, joined with the requests of its model waiting that can share its run.
   */
  #start(slot: Slot, first: Job, entry: ModelEntry, as: 'running' | 'ahead'): void {
    const members = gatherBatch(first, entry);
    const job = members ? this.#joinedRun(members, entry) : first;
    slot[as] = job;
    job.countedIn = entry;
    entry.running += requestsIn(job);
    try {
      this.#workers.postRun(slot, job, this.#inputBytes);
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

  /** One job for a joined run: its seq names the run; failing it fails each member. */
  #joinedRun(members: Job[], entry: ModelEntry): Job {
    return {
      seq: this.#workers.nextId(),
      key: entry.key,
      inputs: [],
      transfer: [],
      submittedAt: members[0]!.submittedAt,
      batch: { members, plan: entry.batching! },
      resolve: () => {},
      reject: (error) => {
        for (const member of members) member.reject(error);
      },
    };
  }

  #finished(job: Job): void {
    if (job.countedIn) job.countedIn.running -= requestsIn(job);
    delete job.countedIn;
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

  /** The worker answered a request: settle it (measuring the model's run), then give the worker more. */
  #runEnded(slot: Slot, job: Job, reply: RunReply): void {
    // The model the run was started for, if still loaded (not another loaded under its key since).
    const entry = job.countedIn && this.#models.get(job.key) === job.countedIn ? job.countedIn : undefined;
    this.#finished(job);
    if (reply.op === 'done-batch') {
      this.#joinedRunEnded(slot, job, reply, entry);
    } else if (reply.op === 'done') {
      this.#workerRuns++;
      if (entry) {
        entry.workerRuns++;
        this.#inline.measured(entry, reply.finishedAt - reply.startedAt, job.inputs);
      }
      try {
        job.resolve({
          outputs: reply.outputs.map(fromWire),
          queueMs: Math.max(0, reply.startedAt - job.submittedAt),
          computeMs: Math.max(0, reply.finishedAt - reply.startedAt),
          worker: slot.index,
          batchSize: 1,
        });
      } catch (error) {
        job.reject(error as InferenceError);
      }
    } else {
      job.reject(new InferenceError(failureKindOf(reply.kind), reply.message));
    }
    this.#pump(slot);
    if (entry) this.#pumpIdleInstances(entry);
  }

  /**
   * Requests waiting to join (waitsToJoin) wait at most about the short-run bound: then an idle instance takes
   * them, even if the run under way is still going (a large request, or one longer than the model's lone runs).
   */
  #boundTheWait(entry: ModelEntry, afterMs = this.#options.handAheadMaxComputeMs): void {
    if (entry.joinWait) return;
    entry.joinWait = setTimeout(() => {
      delete entry.joinWait;
      if (this.#models.get(entry.key) !== entry) return;
      // Counted from the oldest request still waiting to join (those before it were taken by a run meanwhile).
      const oldest = entry.queue.find((job) => job.batchable);
      if (!oldest) return;
      const leftMs = oldest.submittedAt + this.#options.handAheadMaxComputeMs - preciseNow();
      if (leftMs > 0) this.#boundTheWait(entry, leftMs);
      else this.#pumpIdleInstances(entry);
    }, afterMs);
    entry.joinWait.unref();
  }

  /**
   * A batching model's requests may wait while another of its instances is idle (waitsToJoin): once its run
   * ended, or the wait is over (#boundTheWait), an idle instance takes what still waits.
   */
  #pumpIdleInstances(entry: ModelEntry): void {
    if (!entry.batching) return;
    for (const slot of entry.slots) {
      if (entry.queue.length === 0) return;
      if (slotCanRun(slot, entry.key)) this.#pump(slot);
    }
  }

  /**
   * A joined run ended: each member gets its slice (or, where the worker ran them apart, its own answer). Joined
   * runs are not measured for the inline path (their time is not one request's). A model whose outputs did not
   * split runs its requests one at a time from now on.
   */
  #joinedRunEnded(
    slot: Slot,
    job: Job,
    reply: Extract<RunReply, { op: 'done-batch' }>,
    entry: ModelEntry | undefined,
  ): void {
    const members = job.batch!.members;
    const joined = reply.ranApart === undefined;
    this.#workerRuns += members.length;
    if (joined) {
      this.#batches.runs++;
      this.#batches.requests += members.length;
    } else if (reply.unfit && entry?.batching) {
      delete entry.batching;
      this.#options.onEvent?.({ type: 'batching-unavailable', key: job.key, reason: reply.ranApart! });
    }
    const computeMs = Math.max(0, reply.finishedAt - reply.startedAt);
    members.forEach((member, i) => {
      const result = reply.results[i];
      if (result === undefined || !('outputs' in result)) {
        member.reject(
          result
            ? new InferenceError(failureKindOf(result.kind), result.message)
            : new InferenceError('run-failed', 'the worker answered a joined run without this request'),
        );
        return;
      }
      try {
        member.resolve({
          outputs: result.outputs.map(fromWire),
          queueMs: Math.max(0, reply.startedAt - member.submittedAt),
          computeMs,
          worker: slot.index,
          batchSize: joined ? members.length : 1,
        });
      } catch (error) {
        member.reject(error as InferenceError);
      }
    });
  }

  /** A worker died: what it was running or had been handed fails, and so do warm-up runs pinned to it. */
  #workerDied(slot: Slot, { reason, kind }: WorkerDeath, lost: LostRuns): number {
    const fail = (job: Job | null, message: string): number => {
      if (!job) return 0;
      this.#finished(job);
      job.reject(new InferenceError('worker-died', message));
      return requestsIn(job);
    };
    const failed =
      fail(
        lost.running,
        `the inference worker running this request stopped (${reason}); the request did not complete and may be retried`,
      ) +
      fail(
        lost.ahead,
        `the inference worker this request was handed to stopped (${reason}) before running it; it may be retried`,
      );
    // Warm-up runs pinned to this worker cannot run anywhere else.
    for (const entry of this.#models.values()) {
      entry.queue = entry.queue.filter((job) => {
        if (job.pinned !== slot) return true;
        job.reject(new InferenceError(kind, `the inference worker stopped (${reason})`));
        return false;
      });
    }
    return failed;
  }

  /** The model lost its instance on this worker; with none left, its waiting requests fail. */
  #dropInstance(slot: Slot, key: string, reason: string): void {
    const entry = this.#models.get(key);
    if (!entry || !entry.slots.delete(slot)) return;
    this.#options.onEvent?.({ type: 'instance-lost', worker: slot.index, key, reason });
    if (entry.slots.size === 0) {
      for (const job of entry.queue.splice(0)) job.reject(noInstance(key, reason));
    }
  }
}

/** What a worker's failure means for the request. */
function failureKindOf(kind: WorkerFailureKind): InferenceError['kind'] {
  if (kind === 'no-session') return 'unloaded';
  return kind === 'out-of-memory' || kind === 'segment-unusable' ? kind : 'run-failed';
}

function closedError(): InferenceError {
  return new InferenceError('closed', 'the inference pool is shutting down');
}

function noInstance(key: string, reason: string): InferenceError {
  return new InferenceError(
    'no-instance',
    `no worker holds a working session of model ${key} (${reason}); unload it and load it again`,
  );
}
