/**
 * One inference worker thread's lifecycle: its slot, starting it, telling why it died, how long to wait before
 * restarting it, signalling and stopping it. What its death means for the worker set and reloading its sessions
 * are worker-set.ts's; what it means for requests, the pool's (pool.ts).
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import type { InferenceFailureKind } from './errors.js';
import { WORKER_CONTROL, type FromWorker, type InferenceWorkerData } from './protocol.js';
import type { Slot } from './scheduling.js';

/** A slot for worker `index`, with no thread yet. */
export function newSlot(index: number): Slot {
  return {
    index,
    worker: null,
    control: new Int32Array(0),
    ready: false,
    running: null,
    ahead: null,
    controls: new Map(),
    backlog: [],
    sessions: new Map(),
    restarts: 0,
    recentDeaths: 0,
    lastError: null,
  };
}

export interface WorkerThreadEvents {
  /** The thread has loaded ONNX Runtime and takes messages. */
  ready(): void;
  /** Any other message from the thread. */
  reply(message: Exclude<FromWorker, { op: 'ready' }>): void;
  /** The thread stopped; `started`: after it had been ready. Not called for a thread replaced meanwhile. */
  exited(exitCode: number, started: boolean): void;
}

/**
 * Starts the slot's worker thread; resolves once it is ready, rejects if it stops before. Events of a thread
 * the slot no longer holds (replaced, or stopped by the pool) are ignored.
 */
export function spawnWorkerThread(
  slot: Slot,
  shared: { activity: Int32Array; hotWaitMicros: number },
  events: WorkerThreadEvents,
): Promise<void> {
  slot.control = new Int32Array(new SharedArrayBuffer(WORKER_CONTROL.SLOTS * 4));
  // A worker that died while active left its flag set.
  Atomics.store(shared.activity, slot.index, 0);
  const worker = createWorker({
    control: slot.control.buffer as SharedArrayBuffer,
    index: slot.index,
    activity: shared.activity.buffer as SharedArrayBuffer,
    hotWaitMicros: shared.hotWaitMicros,
    hotWaitCores: Math.max(0, availableParallelism() - 1),
  });
  slot.worker = worker;
  slot.ready = false;
  slot.lastError = null;
  return new Promise<void>((resolve, reject) => {
    let started = false;
    worker.on('message', (message: FromWorker) => {
      if (slot.worker !== worker) return;
      if (message.op === 'ready') {
        started = true;
        slot.ready = true;
        resolve();
        events.ready();
        return;
      }
      events.reply(message);
    });
    worker.on('error', (error) => {
      if (slot.worker === worker) slot.lastError = error;
    });
    worker.on('exit', (exitCode) => {
      if (slot.worker !== worker) return;
      if (!started) {
        slot.worker = null;
        reject(
          new Error(
            `inference worker ${slot.index} stopped while starting (exit code ${exitCode})${slot.lastError ? `: ${slot.lastError.message}` : ''}`,
          ),
        );
      }
      events.exited(exitCode, started);
    });
  });
}

/** Why the slot's thread stopped, in words, and what that means for the requests it had. */
export function deathOf(slot: Slot, exitCode: number): { reason: string; kind: InferenceFailureKind } {
  const reason = slot.lastError
    ? `${slot.lastError.message}`
    : exitCode === 1
      ? 'it was terminated'
      : `it exited with code ${exitCode}`;
  const outOfMemory = (slot.lastError as NodeJS.ErrnoException | null)?.code === 'ERR_WORKER_OUT_OF_MEMORY';
  return { reason, kind: outOfMemory ? 'out-of-memory' : 'worker-died' };
}

/** No wait after a first death; after repeated ones, doubling from `initial` up to `max`. */
export function restartDelay(slot: Slot, delays: { initial: number; max: number }): number {
  return slot.recentDeaths <= 1 ? 0 : Math.min(delays.max, delays.initial * 2 ** (slot.recentDeaths - 2));
}

/**
 * Starts an inference worker. From compiled dist the worker is `inference-worker.js` beside this file; from
 * TypeScript sources (tests, development) it is `inference-worker.ts`, started with tsx's loader registered in
 * the worker first (a worker's `--import` cannot register loader hooks on Node 20).
 */
export function createWorker(workerData: InferenceWorkerData): Worker {
  const here = import.meta.url;
  if (!here.endsWith('.ts')) return new Worker(new URL('./inference-worker.js', here), { workerData });
  const entry = new URL('./inference-worker.ts', here).href;
  const tsx = import.meta.resolve('tsx/esm/api');
  const boot = `import(${JSON.stringify(tsx)}).then(({ register }) => { register(); return import(${JSON.stringify(entry)}); });`;
  return new Worker(boot, { eval: true, workerData });
}

type WaitAsync = (
  array: Int32Array,
  index: number,
  value: number,
) => { async: false; value: string } | { async: true; value: Promise<string> };

/**
 * Terminates a worker safely: terminating one inside ONNX Runtime's native code aborts the process, so ask it
 * to stop (it then starts nothing new), wait until it is out of native code, then terminate.
 */
export async function stopWorker(worker: Worker, control: Int32Array): Promise<void> {
  Atomics.store(control, WORKER_CONTROL.STOP, 1);
  Atomics.notify(control, WORKER_CONTROL.STOP);
  const waitAsync = (Atomics as unknown as { waitAsync: WaitAsync }).waitAsync;
  while (Atomics.load(control, WORKER_CONTROL.IN_NATIVE) === 1) {
    const wait = waitAsync(control, WORKER_CONTROL.IN_NATIVE, 1);
    if (wait.async) await wait.value;
  }
  await worker.terminate();
}

/** Tells a worker in its hot wait that a message was posted to it (a plain counter: nothing to wake). */
export function ringDoorbell(control: Int32Array): void {
  Atomics.add(control, WORKER_CONTROL.DOORBELL, 1);
}
