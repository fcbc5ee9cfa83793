/** Starting, stopping and signalling one inference worker thread (the pool owns their lifecycle). */
import { Worker } from 'node:worker_threads';
import { WORKER_CONTROL, type InferenceWorkerData } from './protocol.js';

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
