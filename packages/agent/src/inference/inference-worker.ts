/**
 * An inference worker thread: owns ONNX Runtime sessions and runs them. `session.run()` blocks the thread it
 * runs on (onnxruntime-node runs inference synchronously on the JS thread), which is why it only ever runs
 * here and never on the agent's event loop. Messages are handled one at a time, in order; after a run the worker
 * may stay hot for its next message for a bounded time (hotWait).
 */
import { parentPort, receiveMessageOnPort, workerData } from 'node:worker_threads';
import ort from 'onnxruntime-node';
import type { InferenceSession, Tensor } from 'onnxruntime-node';
import {
  WORKER_CONTROL,
  preciseNow,
  type FromWorker,
  type InferenceWorkerData,
  type OrtTensorType,
  type ToWorker,
  type WireTensor,
  type WireTensorInfo,
  type WorkerFailureKind,
} from './protocol.js';
import { errorMessage, isOutOfMemory } from './errors.js';
import { outputToWire, toOrtTensor } from './ort-tensors.js';
import { TYPED_ARRAY_FOR } from './tensor-bytes.js';
import { loadSysvShmAddon, SharedMemoryError } from '../shm/index.js';
import { WorkerSegments, segmentInputTensor, writeOutputToSegment } from './worker-segments.js';
import { joinAlong, splitAlong } from './batch-tensors.js';

const port = parentPort;
if (!port) throw new Error('inference-worker must run in a worker thread');

const sessions = new Map<string, InferenceSession>();
/** Segments the runs' inputs and outputs lie in, mapped by this thread (see worker-segments.ts). */
const segments = new WorkerSegments({ addon: () => loadSysvShmAddon() });
/** Lets go of segments clients removed even while no requests come. */
const SEGMENT_SWEEP_MS = 1000;
setInterval(() => segments.sweep(), SEGMENT_SWEEP_MS).unref();

const data = workerData as InferenceWorkerData;
const { index, hotWaitMicros, hotWaitCores } = data;
/**
 * Shared with the pool (see WORKER_CONTROL in protocol.ts). Terminating a worker while ONNX Runtime's native
 * code runs aborts the whole process (the binding throws a C++ exception into a dying environment), so the
 * pool asks to stop, waits for IN_NATIVE to drop, and only then terminates; meanwhile this worker parks.
 */
const control = new Int32Array(data.control);
/** The pool's workers, 1 each while running a model or hot-waiting (see InferenceWorkerData.activity). */
const activity = new Int32Array(data.activity);

/** Runs native ONNX Runtime work with IN_NATIVE raised, refusing to start once a stop was asked for. */
async function native<T>(work: () => Promise<T>): Promise<T> {
  parkIfStopping();
  Atomics.store(control, WORKER_CONTROL.IN_NATIVE, 1);
  try {
    return await work();
  } finally {
    Atomics.store(control, WORKER_CONTROL.IN_NATIVE, 0);
    Atomics.notify(control, WORKER_CONTROL.IN_NATIVE);
    parkIfStopping();
  }
}

/** Once the pool asked to stop, do nothing more (no reply either) until it terminates this thread. */
function parkIfStopping(): void {
  while (Atomics.load(control, WORKER_CONTROL.STOP) === 1) Atomics.wait(control, WORKER_CONTROL.STOP, 1);
}

function send(message: FromWorker, transfer: ArrayBuffer[] = []): void {
  port!.postMessage(message, transfer);
}

function failureKind(error: unknown, fallback: WorkerFailureKind): WorkerFailureKind {
  return isOutOfMemory(errorMessage(error)) ? 'out-of-memory' : fallback;
}

function infoOf(metadata: readonly InferenceSession.ValueMetadata[]): WireTensorInfo[] {
  return metadata.map((m) =>
    m.isTensor
      ? { name: m.name, type: m.type, shape: [...m.shape] }
      : { name: m.name, type: 'non-tensor', shape: [] },
  );
}

async function load(message: Extract<ToWorker, { op: 'load' }>): Promise<void> {
  const began = performance.now();
  try {
    const { model, options } = message;
    const session = await native(() =>
      typeof model === 'string'
        ? ort.InferenceSession.create(model, options)
        : ort.InferenceSession.create(model.model, { ...options, externalData: [...model.externalData] }),
    );
    sessions
      .get(message.key)
      ?.release()
      .catch(() => {});
    sessions.set(message.key, session);
    send({
      op: 'loaded',
      id: message.id,
      inputs: infoOf(session.inputMetadata),
      outputs: infoOf(session.outputMetadata),
      loadMs: performance.now() - began,
    });
  } catch (error) {
    send({
      op: 'failed',
      id: message.id,
      kind: failureKind(error, 'model-rejected'),
      message: errorMessage(error),
    });
  }
}

/** The message's session; without one, the run fails ('no-session') and this answers it. */
function sessionFor(message: { id: number; key: string }): InferenceSession | undefined {
  const session = sessions.get(message.key);
  if (!session)
    send({
      op: 'failed',
      id: message.id,
      kind: 'no-session',
      message: `no session ${message.key} in this worker`,
    });
  return session;
}

async function run(message: Extract<ToWorker, { op: 'run' }>): Promise<void> {
  const session = sessionFor(message);
  if (!session) return;
  let startedAt: number | undefined;
  let finishedAt: number | undefined;
  segments.beginRun();
  try {
    const feeds: Record<string, Tensor> = {};
    for (const input of message.inputs)
      feeds[input.name] =
        'segment' in input ? segmentInputTensor(input, segments, ort.Tensor) : toOrtTensor(input, ort.Tensor);
    startedAt = preciseNow();
    const results = await timedRun(session, feeds);
    finishedAt = preciseNow();
    const transfer: ArrayBuffer[] = [];
    const outputs = session.outputNames.map((name) => {
      const place = message.outputSegments?.find((o) => o.name === name);
      return place
        ? writeOutputToSegment(name, results[name]!, place.segment, segments)
        : outputToWire(name, results[name]!, transfer);
    });
    send({ op: 'done', id: message.id, outputs, startedAt, finishedAt }, transfer);
  } catch (error) {
    send({
      op: 'failed',
      id: message.id,
      kind:
        error instanceof SharedMemoryError && error.code !== 'ATTACH_FAILED'
          ? 'segment-unusable'
          : failureKind(error, 'run-failed'),
      message: errorMessage(error),
      ...(startedAt !== undefined && { startedAt, finishedAt: finishedAt ?? preciseNow() }),
    });
  } finally {
    segments.endRun();
  }
}

type RunBatch = Extract<ToWorker, { op: 'run-batch' }>;
type BatchResults = Extract<FromWorker, { op: 'done-batch' }>['results'];

/** A joined run's output that does not have the requests' sizes along the batch dimension. */
class UnsplittableOutput extends Error {}

/**
 * Dynamic batching: the requests joined into one run, each answered with its slice of the outputs. When the
 * joined run fails (one request's bad input fails them all) or its outputs do not split, each request runs on its
 * own, so that each gets the answer it would have got alone.
 */
async function runBatch(message: RunBatch): Promise<void> {
  const session = sessionFor(message);
  if (!session) return;
  const startedAt = preciseNow();
  let results: BatchResults | undefined;
  let ranApart: string | undefined;
  let unfit = false;
  try {
    results = await joinedRun(session, message);
  } catch (error) {
    ranApart = errorMessage(error);
    unfit = error instanceof UnsplittableOutput;
  }
  results ??= await runsApart(session, message.requests);
  const finishedAt = preciseNow();
  const transfer: ArrayBuffer[] = [];
  for (const result of results)
    if ('outputs' in result) for (const output of result.outputs) transfer.push(output.buffer as ArrayBuffer);
  send(
    {
      op: 'done-batch',
      id: message.id,
      results,
      ...(ranApart !== undefined && { ranApart, unfit }),
      startedAt,
      finishedAt,
    },
    transfer,
  );
}

async function joinedRun(session: InferenceSession, message: RunBatch): Promise<BatchResults> {
  const { requests, counts, inputAxes, outputAxes } = message;
  const feeds: Record<string, Tensor> = {};
  for (const input of requests[0]!) {
    const axis = inputAxes[input.name];
    if (axis === undefined) {
      feeds[input.name] = toOrtTensor(input, ort.Tensor);
      continue;
    }
    const joined = joinAlong(
      requests.map((inputs) => inputs.find((t) => t.name === input.name)!),
      axis,
      elementSizeOf(input.type),
    );
    feeds[input.name] = toOrtTensor(
      {
        ...input,
        dims: joined.dims,
        buffer: joined.bytes.buffer,
        byteOffset: 0,
        byteLength: joined.bytes.byteLength,
      },
      ort.Tensor,
    );
  }
  const results = await timedRun(session, feeds);
  const total = counts.reduce((sum, count) => sum + count, 0);
  const answers: WireTensor[][] = requests.map(() => []);
  for (const name of session.outputNames) {
    const output = outputToWire(name, results[name]!, []);
    const axis = outputAxes[name];
    if (axis === undefined || output.dims[axis] !== total)
      throw new UnsplittableOutput(
        `the joined run of ${requests.length} requests (${total} along the batch dimension) gave output ${name} the shape [${output.dims.join(', ')}], which does not split into them`,
      );
    const slices = splitAlong(
      { dims: output.dims, bytes: new Uint8Array(output.buffer, output.byteOffset, output.byteLength) },
      axis,
      counts,
      elementSizeOf(output.type),
    );
    slices.forEach((slice, r) =>
      answers[r]!.push({
        name,
        type: output.type,
        dims: slice.dims,
        buffer: slice.bytes.buffer,
        byteOffset: 0,
        byteLength: slice.bytes.byteLength,
      }),
    );
  }
  return answers.map((outputs) => ({ outputs }));
}

/** Bytes per element of a tensor type (planBatching refuses models with a type outside TYPED_ARRAY_FOR). */
function elementSizeOf(type: OrtTensorType): number {
  return TYPED_ARRAY_FOR[type].BYTES_PER_ELEMENT;
}

async function runsApart(
  session: InferenceSession,
  requests: readonly WireTensor[][],
): Promise<BatchResults> {
  const results: BatchResults = [];
  for (const inputs of requests) {
    try {
      const feeds: Record<string, Tensor> = {};
      for (const input of inputs) feeds[input.name] = toOrtTensor(input, ort.Tensor);
      const outputs = await timedRun(session, feeds);
      results.push({ outputs: session.outputNames.map((name) => outputToWire(name, outputs[name]!, [])) });
    } catch (error) {
      results.push({ kind: failureKind(error, 'run-failed'), message: errorMessage(error) });
    }
  }
  return results;
}

/** session.run with this worker marked active (see InferenceWorkerData.activity) and IN_NATIVE raised. */
function timedRun(session: InferenceSession, feeds: Record<string, Tensor>) {
  Atomics.store(activity, index, 1);
  return native(() => session.run(feeds)).finally(() => Atomics.store(activity, index, 0));
}

async function release(message: Extract<ToWorker, { op: 'release' }>): Promise<void> {
  const session = sessions.get(message.key);
  sessions.delete(message.key);
  if (session) await native(() => session.release()).catch(() => {});
  send({ op: 'released', id: message.id });
}

/**
 * A gap this long between two polls of the hot wait means the thread was preempted: another thread wants this
 * CPU, and spinning on would only take time from it (the thread the worker is waiting for, often).
 */
const PREEMPTED_MS = 0.05;

/**
 * The next message to handle: first those the event loop delivered while the last one was handled, then one
 * already waiting in the port (taken at once, without a turn of the event loop: the pool may have posted a request
 * ahead, see InferencePool), then, after a run, whatever the hot wait finds.
 */
function next(afterRun: boolean): ToWorker | undefined {
  const delivered = arrived.shift();
  if (delivered) return delivered;
  // Read the doorbell before looking at the port: a message posted after the look rings a bell hotWait sees.
  const rung = Atomics.load(control, WORKER_CONTROL.DOORBELL);
  const waiting = receiveMessageOnPort(port!);
  if (waiting) return waiting.message as ToWorker;
  return afterRun ? hotWait(rung) : undefined;
}

/**
 * Keeps polling for the next message for up to hotWaitMicros rather than going to sleep in the event loop at
 * once. A message that comes meanwhile is taken straight from the port: the pool does not have to wake this
 * thread (on a VM whose idle vCPUs halt, that wake-up costs tens of microseconds each way), and ONNX Runtime's
 * working set is still in the caches. The pool rings the doorbell after every message it posts, so the loop reads
 * a shared counter rather than the port. Entered only after a run (an idle worker costs no CPU) and while a core
 * is to spare (hotWaitCores: other workers' runs and the main thread come first); it gives up early when the
 * thread is preempted, and parks for good once the pool asks the worker to stop.
 */
function hotWait(seen: number): ToWorker | undefined {
  if (hotWaitMicros <= 0 || activeWorkers() >= hotWaitCores) return undefined;
  Atomics.store(activity, index, 1);
  Atomics.store(control, WORKER_CONTROL.HOT, 1);
  try {
    const deadline = performance.now() + hotWaitMicros / 1000;
    for (let last = performance.now(); ;) {
      const now = performance.now();
      if (now >= deadline || now - last > PREEMPTED_MS) return undefined;
      last = now;
      parkIfStopping();
      const rung = Atomics.load(control, WORKER_CONTROL.DOORBELL);
      if (rung !== seen) {
        seen = rung;
        const received = receiveMessageOnPort(port!);
        if (received) return received.message as ToWorker;
      }
    }
  } finally {
    Atomics.store(control, WORKER_CONTROL.HOT, 0);
    Atomics.store(activity, index, 0);
  }
}

/** Workers of the pool running a model or hot-waiting (this one is neither when it asks). */
function activeWorkers(): number {
  let active = 0;
  for (let i = 0; i < activity.length; i++) active += Atomics.load(activity, i);
  return active;
}

function handle(message: ToWorker): Promise<void> {
  switch (message.op) {
    case 'load':
      return load(message);
    case 'run':
      return run(message);
    case 'run-batch':
      return runBatch(message);
    case 'release':
      return release(message);
  }
}

// One message at a time, in order: session.run's promise resolves on a later tick, and messages the event loop
// delivers meanwhile wait in `arrived` (next() takes later ones from the port itself, after those).
const arrived: ToWorker[] = [];
let handling = false;

async function handleArrived(): Promise<void> {
  handling = true;
  try {
    let message = arrived.shift();
    while (message) {
      // The handlers answer every failure themselves; a throw here is a bug, and must not stop the worker.
      await handle(message).catch(() => {});
      message = next(message.op === 'run' || message.op === 'run-batch');
    }
  } finally {
    handling = false;
  }
}

port.on('message', (message: ToWorker) => {
  arrived.push(message);
  if (!handling) void handleArrived();
});
send({ op: 'ready' });
