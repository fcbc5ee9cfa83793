/**
 * The pool's scheduling: which worker (or the event loop) runs a request. Pure decisions over the pool's slots
 * and models; the pool (pool.ts) acts on them, worker-set.ts owns the worker lifecycle and the messages,
 * inline-models.ts the inline path, tensor-transfer.ts the bytes.
 *
 * A request runs inline when its model is measured fast and the budget allows, or when its model is measured fast
 * enough for an idle run and the agent has nothing else to do (see InlineBudget); otherwise it starts at once on
 * an idle worker holding its model, else waits in the model's queue and is taken, oldest first across models, by
 * the first such worker to become free (so it never waits behind a busy instance while another is idle). For fast
 * models one waiting request per busy worker is posted to it ahead of time (handAheadTo). A model with dynamic
 * batching differs: its waiting requests are joined into one run (gatherBatch), none is handed ahead, and while its
 * runs are short a request may wait a short while for its run under way, to join the next (waitsToJoin).
 */
import type { Worker } from 'node:worker_threads';
import type { Batchable, BatchPlan } from './batching.js';
import type { InferenceError } from './errors.js';
import { RUNS_BEFORE_INLINE, type InlineBudget, type InlinePath } from './inline-budget.js';
import type { FromWorker, ModelBytes, OutputSegment, ToWorker, WireInput } from './protocol.js';
import type { PoolTensor } from './tensor-transfer.js';

export interface RunResult {
  outputs: PoolTensor[];
  /** Waiting for a worker: from submission until ONNX Runtime started. */
  queueMs: number;
  /**
   * Inside ONNX Runtime's run: for a joined run (batchSize > 1) the whole run's; for requests of a joined run the
   * worker ran one by one (batchSize 1), the time of all of them.
   */
  computeMs: number;
  /** Index of the worker that ran it; -1 when it ran inline, on the event loop. */
  worker: number;
  /** Requests answered by the same run (dynamic batching); 1 when it ran alone. */
  batchSize: number;
}

export interface Job {
  seq: number;
  key: string;
  inputs: WireInput[];
  /** Outputs the worker writes into shared memory (RunOptions.outputSegments). */
  outputSegments?: OutputSegment[];
  transfer: ArrayBuffer[];
  submittedAt: number;
  /** Warm-up runs go to one given worker. */
  pinned?: Slot;
  /**
   * The model entry whose `running` counts this job while it is on a worker, and which its run measures (not
   * looked up by key when it ends: the model may have been unloaded and loaded again under the same key meanwhile).
   */
  countedIn?: ModelEntry;
  /** A request that may share a run with others of its model (dynamic batching, batching.ts). */
  batchable?: Batchable;
  /**
   * A joined run: the requests it answers (`members`, each with `batchable`), joined as `plan` says. The run
   * goes by this job's seq; its resolve is unused (the pool settles each member), its reject fails each.
   */
  batch?: { members: Job[]; plan: BatchPlan };
  resolve: (result: RunResult) => void;
  reject: (error: InferenceError) => void;
}

/** Requests a posted job answers: a joined run's members, else the one. */
export function requestsIn(job: Job): number {
  return job.batch?.members.length ?? 1;
}

export interface Control {
  message: ToWorker;
  resolve: (reply: FromWorker) => void;
  reject: (error: InferenceError) => void;
}

export type SessionState = 'loading' | 'ready' | 'reloading';

/** One worker thread and what it holds. */
export interface Slot {
  index: number;
  worker: Worker | null;
  /** Shared with the worker: WORKER_CONTROL slots. */
  control: Int32Array;
  ready: boolean;
  running: Job | null;
  /** A request already posted to the worker, to run right after `running` (see handAheadTo). */
  ahead: Job | null;
  controls: Map<number, Control>;
  /** Control messages waiting for the worker to (re)start. */
  backlog: Control[];
  sessions: Map<string, SessionState>;
  restarts: number;
  /** Deaths since the worker last completed something; drives the restart delay. */
  recentDeaths: number;
  lastError: Error | null;
}

export interface ModelEntry {
  key: string;
  /** Kept for as long as the model is loaded: a restarted worker creates its sessions again from it. */
  model: string | ModelBytes;
  slots: Set<Slot>;
  queue: Job[];
  /** Requests running or handed ahead on a worker. */
  running: number;
  /** A moving average of ONNX Runtime's time per run, once one has completed. */
  computeMs?: number;
  /** Runs completed on workers. */
  workerRuns: number;
  /**
   * The largest of each dimension of each input a completed worker run of the model has shown. A request with an
   * input beyond it (another name or rank, or any dimension larger) never runs inline: its run time is not known (a
   * model with dynamic dimensions measured on small inputs could block the event loop on a large one, or on the same
   * bytes in another shape); it goes to a worker, which measures it, and its shape counts only if that run was within
   * the demotion limit (InlineBudget.withinDemotionLimit). A cost set by the inputs' values still shows only after
   * one long inline run, which demotes the model (MAX_DEMOTIONS of them park it on the workers for a while).
   */
  measuredShapes: MeasuredShapes;
  /**
   * For a model measured within the idle ceiling only, before its inline session exists: how many requests in a
   * row found the pool holding nothing else (its session is created after IDLE_REQUESTS_BEFORE_SESSION of them, in
   * inline-models.ts, so an agent that is never idle never pays for it).
   */
  idleRequestsInARow: number;
  /**
   * The inline path for this model: 'off' until it has been measured fast, 'loading' its inline session, 'on'
   * (requests may run inline, budget permitting), 'unfit' (too large to load on the event loop, or it failed).
   */
  inline: 'off' | 'loading' | 'on' | 'unfit';
  /** Inline requests may start once `workerRuns` reaches this (a demoted model is measured on workers again). */
  inlineAfterRuns: number;
  /** Times an inline run of the model went far over its ceiling, lately (see MAX_DEMOTIONS). */
  demotions: number;
  /** When (performance.now()) the last of them was. */
  lastDemotionAt?: number;
  /** Parked on the workers until then (performance.now()) after MAX_DEMOTIONS: no inline run before. */
  parkedUntil?: number;
  /**
   * What near-ceiling inline runs of the model may still take (creditMs), and the time its other inline runs
   * admitted within the event loop's share took since the last one (earningMs), which adds to it at the next (see
   * NEAR_CEILING_SHARE); in milliseconds. Undefined until the model's first inline run, when the credit starts full.
   */
  nearCeilingCredit?: { creditMs: number; earningMs: number };
  /** Dynamic batching, when the model was loaded with it (and until a joined run shows it does not split). */
  batching?: BatchPlan;
  /** Armed while requests wait to join (waitsToJoin): when it fires, an idle instance takes them. */
  joinWait?: NodeJS.Timeout;
}

/** A model just loaded on `slots`: nothing measured, nothing queued, on the workers. */
export function newModelEntry(key: string, model: string | ModelBytes, slots: Iterable<Slot>): ModelEntry {
  return {
    key,
    model,
    slots: new Set(slots),
    queue: [],
    running: 0,
    workerRuns: 0,
    measuredShapes: new Map(),
    idleRequestsInARow: 0,
    inline: 'off',
    inlineAfterRuns: RUNS_BEFORE_INLINE,
    demotions: 0,
  };
}

/**
 * Requests are handed ahead to a busy worker (see #handAhead) only when both the running request's model and
 * theirs take at most this long per run, on average (the pool's `handAheadMaxComputeMs`): a request handed ahead
 * waits for the run before it even if another instance becomes free first.
 */
export const HAND_AHEAD_MAX_COMPUTE_MS = 2;

export function slotCanRun(slot: Slot, key: string): boolean {
  return slot.ready && slot.running === null && slot.sessions.get(key) === 'ready';
}

export function idleSlot(entry: ModelEntry): Slot | undefined {
  for (const slot of entry.slots) if (slotCanRun(slot, entry.key)) return slot;
  return undefined;
}

/**
 * Whether the model's runs average at most `maxComputeMs` (short enough for its requests to be handed ahead to
 * busy workers, and to wait to join a run). Requests that could join a run (dynamic batching) are never handed
 * ahead: they wait in the queue, to be joined into the next run (measured, Silero VAD with 8 callers makes runs of
 * 6–7 requests that way against 2–4 when each worker is handed one ahead, and serves more).
 */
export function runsShort(entry: ModelEntry, maxComputeMs: number): boolean {
  return entry.computeMs !== undefined && entry.computeMs <= maxComputeMs;
}

/**
 * Where this request runs inline, if it does: the model's session is loaded on the event loop, it is not being
 * measured on the workers after a demotion, and its inputs are within the shapes worker runs have measured
 * (`withinMeasured`); then 'inline' when its average run fits the per-run ceiling and the
 * event-loop share has room (admitting charges the share), or 'inline_idle' when it fits the idle ceiling and
 * the agent has nothing else to do (InlineBudget.admitIdle; `poolIdle` and `loopIdleMs` are asked only then).
 */
export function inlinePath(
  entry: ModelEntry,
  inputs: readonly ShapedInput[],
  budget: InlineBudget,
  poolIdle: () => boolean,
  loopIdleMs: () => number,
): InlinePath | undefined {
  if (
    entry.inline !== 'on' ||
    entry.workerRuns < entry.inlineAfterRuns ||
    entry.computeMs === undefined ||
    !withinMeasured(entry.measuredShapes, inputs)
  )
    return undefined;
  if (budget.fastEnough(entry.computeMs))
    return budget.admit(entry.computeMs, performance.now()) ? 'inline' : undefined;
  if (
    budget.fastEnoughWhenIdle(entry.computeMs) &&
    budget.admitIdle(poolIdle(), loopIdleMs, performance.now())
  )
    return 'inline_idle';
  return undefined;
}

/**
 * No request is waiting or on a worker (running or handed ahead). Inline runs are synchronous, so none is ever in
 * the pool when this is asked: an idle run may follow a fast model's inline run at once, and delays the next one by
 * at most its own run (see InlineBudget).
 */
export function poolIsIdle(slots: readonly Slot[], models: ReadonlyMap<string, ModelEntry>): boolean {
  for (const slot of slots) if (slot.running || slot.ahead) return false;
  for (const entry of models.values()) if (entry.running > 0 || entry.queue.length > 0) return false;
  return true;
}

/**
 * Takes the oldest request, across the worker's ready sessions, that it may run; with `aheadMaxComputeMs`, the
 * oldest it may run next, handed ahead (only of models whose runs average at most that).
 */
export function takeOldestWaiting(
  slot: Slot,
  aheadMaxComputeMs: number | undefined,
  models: ReadonlyMap<string, ModelEntry>,
): { job: Job; entry: ModelEntry } | undefined {
  const ahead = aheadMaxComputeMs !== undefined;
  let best: { entry: ModelEntry; index: number } | undefined;
  for (const [key, state] of slot.sessions) {
    if (state !== 'ready') continue;
    const entry = models.get(key);
    if (!entry || (ahead && !runsShort(entry, aheadMaxComputeMs))) continue;
    const index = entry.queue.findIndex((job) =>
      ahead
        ? job.pinned === undefined && job.batchable === undefined
        : job.pinned === undefined || job.pinned === slot,
    );
    if (index < 0) continue;
    if (!best || entry.queue[index]!.seq < best.entry.queue[best.index]!.seq) best = { entry, index };
  }
  if (!best) return undefined;
  const [job] = best.entry.queue.splice(best.index, 1);
  return { job: job!, entry: best.entry };
}

/**
 * A busy worker to post a request to ahead of time, when every instance of the model is busy: the worker then
 * starts it straight after its current run, without going to sleep and being woken again (each costs tens of
 * microseconds, and the run after a sleep finds cold caches). Only between fast runs (takesAhead): a request
 * handed ahead no longer moves to an instance that becomes free first, so it may wait for one short run more.
 */
export function handAheadTo(
  entry: ModelEntry,
  models: ReadonlyMap<string, ModelEntry>,
  maxComputeMs: number,
): Slot | undefined {
  if (!runsShort(entry, maxComputeMs)) return undefined;
  for (const slot of entry.slots) {
    if (slot.sessions.get(entry.key) === 'ready' && takesAhead(slot, models, maxComputeMs)) return slot;
  }
  return undefined;
}

/**
 * The worker is running a model whose runs are short (a batching model's too: only its own requests are not
 * handed ahead), and has no request handed ahead yet.
 */
export function takesAhead(
  slot: Slot,
  models: ReadonlyMap<string, ModelEntry>,
  maxComputeMs: number,
): boolean {
  // A joined run is longer than the model's measured (lone) runs: nothing waits behind one.
  if (!slot.ready || !slot.running || slot.ahead || slot.running.batch) return false;
  const running = models.get(slot.running.key);
  return running !== undefined && runsShort(running, maxComputeMs);
}

/**
 * How many waiting requests gatherBatch looks at, at most, for a run's companions (besides the ones it takes): a
 * queue full of requests that cannot join (a client sending shapes no other sends) costs each run a bounded scan.
 */
export const BATCH_SCAN_LIMIT = 64;

/**
 * Dynamic batching: the requests to run with `job` (it first), taken from its model's queue oldest first while
 * the run has room along the batch dimension; requests that cannot share its run keep their place. Undefined when
 * it runs alone.
 */
export function gatherBatch(job: Job, entry: ModelEntry): Job[] | undefined {
  const plan = entry.batching;
  const first = job.batchable;
  if (!plan || !first || first.count >= plan.maxBatchSize || entry.queue.length === 0) return undefined;
  const members = [job];
  let size = first.count;
  let passed = 0;
  for (let i = 0; i < entry.queue.length && size < plan.maxBatchSize && passed < BATCH_SCAN_LIMIT;) {
    const other = entry.queue[i]!.batchable;
    if (other && other.key === first.key && size + other.count <= plan.maxBatchSize) {
      members.push(entry.queue.splice(i, 1)[0]!);
      size += other.count;
    } else {
      i++;
      passed++;
    }
  }
  return members.length > 1 ? members : undefined;
}

/**
 * Dynamic batching: a request that could join others waits for its model's run under way, to join the next,
 * rather than start alone on an idle instance, when the model's runs are short (at most `maxWaitMs` on average),
 * until the requests that could join it (itself included) fill a run; then they start on the idle instance at
 * once. The pool bounds the wait to about `maxWaitMs` whatever the run under way (InferencePool's #boundTheWait).
 * One session running large joined runs leaves the other cores to the agent's event loop and its clients: measured
 * on 2 vCPUs with Silero VAD and 8 clients, that serves about 30 % more than two sessions each running smaller
 * ones. A model whose runs are longer spreads its requests over its
 * sessions at once, as unbatched; so do requests that cannot join (shared memory), and one that fills a run alone.
 */
export function waitsToJoin(job: Job, entry: ModelEntry, maxWaitMs: number): boolean {
  const plan = entry.batching;
  const own = job.batchable;
  if (!plan || !own || entry.running <= 0 || !runsShort(entry, maxWaitMs)) return false;
  let size = own.count;
  let looked = 0;
  for (const waiting of entry.queue) {
    if (size >= plan.maxBatchSize || looked >= BATCH_SCAN_LIMIT) return false;
    if (waiting.batchable?.key === own.key) size += waiting.batchable.count;
    looked++;
  }
  return size < plan.maxBatchSize;
}

/** Each input's largest dimensions measured so far, by input name (ModelEntry.measuredShapes). */
export type MeasuredShapes = Map<string, number[]>;

/** What the size rule reads of an input. */
export interface ShapedInput {
  name: string;
  shape: readonly number[];
}

/** Folds a completed run's input shapes into what has been measured. */
export function foldMeasuredShapes(
  measured: MeasuredShapes,
  inputs: readonly Pick<WireInput, 'name' | 'dims'>[],
): void {
  for (const { name, dims } of inputs) {
    const largest = measured.get(name);
    if (largest === undefined) measured.set(name, [...dims]);
    else if (largest.length === dims.length)
      for (let i = 0; i < dims.length; i++) largest[i] = Math.max(largest[i]!, dims[i]!);
  }
}

/** Whether every input has a measured shape of its rank, and no dimension larger than measured. */
export function withinMeasured(measured: MeasuredShapes, inputs: readonly ShapedInput[]): boolean {
  for (const { name, shape } of inputs) {
    const largest = measured.get(name);
    if (largest === undefined || largest.length !== shape.length) return false;
    for (let i = 0; i < shape.length; i++) if (shape[i]! > largest[i]!) return false;
  }
  return true;
}
