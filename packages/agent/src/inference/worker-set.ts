/**
 * The pool's worker threads as a set: starting them, their control messages (load, release) and run messages,
 * routing their replies, and what a worker's death means for them: its control messages fail, its sessions are
 * loaded again into its replacement, which is started after restartDelay. Which requests run where, and failing
 * them, is the scheduler's (pool.ts), told through WorkerSetEvents; one thread's start and stop is
 * worker-thread.ts's.
 */
import type { InferenceSession } from 'onnxruntime-node';
import { InferenceError, type InferenceFailureKind } from './errors.js';
import type { PoolEvent, PoolStats } from './pool-types.js';
import type { BatchPlan } from './batching.js';
import {
  WORKER_CONTROL,
  type FromWorker,
  type ModelBytes,
  type ToWorker,
  type WireTensor,
} from './protocol.js';
import type { Control, Job, Slot } from './scheduling.js';
import { copiedInputs, type InputByteCounts } from './tensor-transfer.js';
import {
  deathOf,
  newSlot,
  restartDelay,
  ringDoorbell as ring,
  spawnWorkerThread,
  stopWorker,
} from './worker-thread.js';

/** A worker's answer to a run: its outputs, or why it failed. */
export type RunReply = Extract<FromWorker, { op: 'done' | 'done-batch' | 'failed' }>;
export type LoadedReply = Extract<FromWorker, { op: 'loaded' }>;
/** Why a worker stopped, in words, and what that means for the requests it had (worker-thread.ts's deathOf). */
export interface WorkerDeath {
  reason: string;
  kind: InferenceFailureKind;
}
/** The requests a dead worker had: the one it was running, and the one handed ahead to it. */
export interface LostRuns {
  running: Job | null;
  ahead: Job | null;
}

/** What the scheduler is told about the workers. */
export interface WorkerSetEvents {
  /** The worker may take requests: it became ready, or one of its sessions did. */
  canTakeWork(slot: Slot): void;
  /** The worker answered its running request; the request handed ahead to it (if any) is running now. */
  runEnded(slot: Slot, job: Job, reply: RunReply): void;
  /**
   * The worker died (after its control messages failed and its sessions were marked): fail the requests it was
   * running or had been handed ahead (`lost`, taken off the slot), and those waiting for it alone. Returns how
   * many of `lost` it failed.
   */
  died(slot: Slot, death: WorkerDeath, lost: LostRuns): number;
  /** The model lost its instance on this worker (its load failed, or the worker died while loading it). */
  instanceLost(slot: Slot, key: string, reason: string): void;
  /** The model a session is created from, while it is loaded (a restarted worker creates its sessions again). */
  modelOf(key: string): string | ModelBytes | undefined;
}

export interface WorkerSetOptions {
  workers: number;
  hotWaitMicros: number;
  /** Delay before restarting a worker that died again soon after its last restart (doubles up to max). */
  restartDelayMs: { initial: number; max: number };
  /** ONNX Runtime's options for every session a worker creates. */
  sessionOptions: () => InferenceSession.SessionOptions;
  events: WorkerSetEvents;
  /** Told about worker exits and restarts. */
  onEvent?: (event: PoolEvent) => void;
}

export class WorkerSet {
  readonly #options: WorkerSetOptions;
  readonly #slots: Slot[] = [];
  /** InferenceWorkerData.activity, an Int32 per worker. */
  readonly #activity: Int32Array;
  #nextId = 1;
  #closed = false;

  constructor(options: WorkerSetOptions) {
    this.#options = options;
    this.#activity = new Int32Array(new SharedArrayBuffer(options.workers * 4));
  }

  /** Starts the workers; resolves once every one has loaded ONNX Runtime. */
  async start(): Promise<void> {
    await Promise.all(
      Array.from({ length: this.#options.workers }, (_, index) => {
        const slot = newSlot(index);
        this.#slots.push(slot);
        return this.#spawn(slot);
      }),
    );
  }

  get slots(): readonly Slot[] {
    return this.#slots;
  }

  /** A number for the next message to a worker: run messages and control messages share one sequence. */
  nextId(): number {
    return this.#nextId++;
  }

  /** Loads the model on one worker; the session is usable once this resolves. */
  async load(slot: Slot, key: string, model: string | ModelBytes): Promise<LoadedReply> {
    slot.sessions.set(key, 'loading');
    const reply = await this.#control(slot, {
      op: 'load',
      id: this.nextId(),
      key,
      model,
      options: this.#options.sessionOptions(),
    });
    if (reply.op !== 'loaded') throw new Error(`unexpected reply ${reply.op} to load`);
    if (slot.sessions.get(key) === 'loading') slot.sessions.set(key, 'ready');
    this.#options.events.canTakeWork(slot);
    return reply;
  }

  /** Releases the model's session on this worker; a request already running finishes first. */
  async release(slot: Slot, key: string): Promise<void> {
    if (!slot.sessions.has(key)) return;
    slot.sessions.delete(key);
    if (!slot.worker) return; // a dead worker holds nothing; its restart will not reload this key
    await this.#control(slot, { op: 'release', id: this.nextId(), key }).catch(() => {});
  }

  /**
   * Posts the job to the worker. A buffer that cannot be transferred (an external one, e.g. mapped memory) makes
   * it copy every input instead; throws when even that fails.
   */
  postRun(slot: Slot, job: Job, inputBytes: InputByteCounts): void {
    if (job.batch) {
      this.#postBatch(slot, job, job.batch, inputBytes);
      return;
    }
    const message: ToWorker = {
      op: 'run',
      id: job.seq,
      key: job.key,
      inputs: job.inputs,
      ...(job.outputSegments && { outputSegments: job.outputSegments }),
    };
    try {
      this.#postRun(slot, message, job.transfer);
    } catch {
      const copies = copiedInputs(job.inputs, inputBytes);
      this.#postRun(slot, { ...message, inputs: copies.wire }, copies.transfer);
    }
  }

  /** Stops the worker as if it had crashed (see InferencePool.recycleWorker). */
  async recycle(index: number): Promise<void> {
    const slot = this.#slots[index];
    if (!slot) throw new RangeError(`no worker ${index}; the pool has ${this.#slots.length}`);
    if (slot.worker) await stopWorker(slot.worker, slot.control);
  }

  stats(): PoolStats['workers'] {
    return this.#slots.map((slot) => ({
      index: slot.index,
      threadId: slot.worker?.threadId ?? null,
      ready: slot.ready,
      busy: slot.running !== null,
      hot: slot.worker !== null && Atomics.load(slot.control, WORKER_CONTROL.HOT) === 1,
      sessions: [...slot.sessions.keys()],
      restarts: slot.restarts,
    }));
  }

  /**
   * Fails the control messages with `error()` and stops the workers; no worker is restarted after this. The
   * scheduler fails the requests.
   */
  async close(error: () => InferenceError): Promise<void> {
    this.#closed = true;
    await Promise.all(
      this.#slots.map(async (slot) => {
        for (const control of [...slot.controls.values(), ...slot.backlog]) control.reject(error());
        slot.controls.clear();
        slot.backlog = [];
        const worker = slot.worker;
        slot.worker = null;
        slot.ready = false;
        if (worker) await stopWorker(worker, slot.control);
      }),
    );
  }

  // --- lifecycle -----------------------------------------------------------------------------------------------

  #spawn(slot: Slot): Promise<void> {
    return spawnWorkerThread(
      slot,
      { activity: this.#activity, hotWaitMicros: this.#options.hotWaitMicros },
      {
        ready: () => {
          for (const control of slot.backlog.splice(0)) this.#post(slot, control);
          this.#options.events.canTakeWork(slot);
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
    const death = deathOf(slot, exitCode);
    const { reason, kind } = death;
    slot.worker = null;
    slot.ready = false;
    const lost: LostRuns = { running: slot.running, ahead: slot.ahead };
    slot.running = null;
    slot.ahead = null;
    let failed = 0;
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
      else if (state === 'loading') {
        slot.sessions.delete(key);
        this.#options.events.instanceLost(slot, key, `the worker stopped while loading it (${reason})`);
      }
    }
    failed += this.#options.events.died(slot, death, lost);
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
      const model = this.#options.events.modelOf(key);
      if (state !== 'reloading' || model === undefined) continue;
      try {
        await this.load(slot, key, model);
        reloaded.push(key);
      } catch (error) {
        if (slot.worker === null) return; // died again while reloading; #died has handled it
        slot.sessions.delete(key);
        this.#options.events.instanceLost(slot, key, (error as Error).message);
      }
    }
    this.#options.onEvent?.({ type: 'worker-restarted', worker: slot.index, reloaded });
  }

  // --- messages ------------------------------------------------------------------------------------------------

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
    ring(slot.control);
  }

  /** A joined run (dynamic batching): every member's inputs in one message. */
  #postBatch(
    slot: Slot,
    job: Job,
    { members, plan }: { members: readonly Job[]; plan: BatchPlan },
    inputBytes: InputByteCounts,
  ): void {
    const message = (requests: WireTensor[][]): ToWorker => ({
      op: 'run-batch',
      id: job.seq,
      key: job.key,
      requests,
      counts: members.map((member) => member.batchable!.count),
      inputAxes: plan.inputAxes,
      outputAxes: plan.outputAxes,
    });
    try {
      this.#postRun(
        slot,
        message(members.map((member) => member.batchable!.inputs)),
        members.flatMap((member) => member.transfer),
      );
    } catch {
      const copies = members.map((member) => copiedInputs(member.inputs, inputBytes));
      this.#postRun(
        slot,
        message(copies.map((copy) => copy.wire as WireTensor[])),
        copies.flatMap((copy) => copy.transfer),
      );
    }
  }

  #postRun(slot: Slot, message: ToWorker, transfer: ArrayBuffer[]): void {
    slot.worker!.postMessage(message, transfer);
    ring(slot.control);
  }

  #onReply(slot: Slot, message: Exclude<FromWorker, { op: 'ready' }>): void {
    const job = slot.running;
    if (
      job &&
      message.id === job.seq &&
      (message.op === 'done' || message.op === 'done-batch' || message.op === 'failed')
    ) {
      // The worker runs what was handed ahead to it as soon as it is done with this one.
      slot.running = slot.ahead;
      slot.ahead = null;
      slot.recentDeaths = 0;
      this.#options.events.runEnded(slot, job, message);
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
}
