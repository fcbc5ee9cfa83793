/**
 * An inference worker thread: owns ONNX Runtime sessions and runs them. `session.run()` blocks the thread it
 * runs on (onnxruntime-node runs inference synchronously on the JS thread), which is why it only ever runs
 * here and never on the agent's event loop. Messages are handled one at a time, in order.
 */
import { parentPort, workerData } from 'node:worker_threads';
import ort from 'onnxruntime-node';
import type { InferenceSession, Tensor } from 'onnxruntime-node';
import {
  WORKER_CONTROL,
  preciseNow,
  type FromWorker,
  type OrtTensorType,
  type ToWorker,
  type WireTensor,
  type WireTensorInfo,
  type WorkerFailureKind,
} from './protocol.js';
import { HOST_IS_LITTLE_ENDIAN, TYPED_ARRAY_FOR, swapBytesInPlace } from './tensor-bytes.js';

const port = parentPort;
if (!port) throw new Error('inference-worker must run in a worker thread');

const sessions = new Map<string, InferenceSession>();

/**
 * Shared with the pool (see WORKER_CONTROL in protocol.ts). Terminating a worker while ONNX Runtime's native
 * code runs aborts the whole process (the binding throws a C++ exception into a dying environment), so the
 * pool asks to stop, waits for IN_NATIVE to drop, and only then terminates; meanwhile this worker parks.
 */
const control = new Int32Array((workerData as { control: SharedArrayBuffer }).control);

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

/** ONNX Runtime reports allocation failures in a few spellings; they mean "not enough memory". */
function failureKind(error: unknown, fallback: WorkerFailureKind): WorkerFailureKind {
  const message = error instanceof Error ? error.message : String(error);
  return /bad_alloc|failed to allocate|out of memory|cannot allocate memory|ENOMEM/i.test(message)
    ? 'out-of-memory'
    : fallback;
}

function errorMessage(error: unknown): string {
  return (error instanceof Error ? error.message : String(error)).trim();
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
    const session = await native(() => ort.InferenceSession.create(message.modelPath, message.options));
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

function toOrtTensor(wire: WireTensor): Tensor {
  const Typed = TYPED_ARRAY_FOR[wire.type];
  const size = Typed.BYTES_PER_ELEMENT;
  let buffer = wire.buffer;
  let offset = wire.byteOffset;
  // One copy here when onnxruntime-node could not use the bytes where they are: it refuses tensors over a
  // SharedArrayBuffer, typed arrays need aligned offsets, and a big-endian host needs its own byte order.
  if (buffer instanceof SharedArrayBuffer || offset % size !== 0 || !HOST_IS_LITTLE_ENDIAN) {
    const copy = new Uint8Array(wire.byteLength);
    copy.set(new Uint8Array(buffer, offset, wire.byteLength));
    if (!HOST_IS_LITTLE_ENDIAN) swapBytesInPlace(copy, size);
    buffer = copy.buffer;
    offset = 0;
  }
  const data = new Typed(buffer as ArrayBuffer, offset, wire.byteLength / size);
  return new ort.Tensor(wire.type, data as Tensor.DataTypeMap[OrtTensorType], wire.dims);
}

/** An output tensor as wire bytes; its buffer is transferred back when the tensor owns all of it. */
function toWire(name: string, tensor: Tensor, transfer: ArrayBuffer[]): WireTensor {
  const data = tensor.data as ArrayBufferView;
  let bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const owned =
    data.byteOffset === 0 && data.byteLength === data.buffer.byteLength && data.buffer instanceof ArrayBuffer;
  if (!owned) bytes = bytes.slice();
  if (!HOST_IS_LITTLE_ENDIAN) swapBytesInPlace(bytes, (data as Uint8Array).BYTES_PER_ELEMENT);
  transfer.push(bytes.buffer as ArrayBuffer);
  return {
    name,
    type: tensor.type as OrtTensorType,
    dims: [...tensor.dims],
    buffer: bytes.buffer,
    byteOffset: 0,
    byteLength: bytes.byteLength,
  };
}

async function run(message: Extract<ToWorker, { op: 'run' }>): Promise<void> {
  const session = sessions.get(message.key);
  if (!session) {
    send({
      op: 'failed',
      id: message.id,
      kind: 'no-session',
      message: `no session ${message.key} in this worker`,
    });
    return;
  }
  let startedAt: number | undefined;
  let finishedAt: number | undefined;
  try {
    const feeds: Record<string, Tensor> = {};
    for (const input of message.inputs) feeds[input.name] = toOrtTensor(input);
    startedAt = preciseNow();
    const results = await native(() => session.run(feeds));
    finishedAt = preciseNow();
    const transfer: ArrayBuffer[] = [];
    const outputs = session.outputNames.map((name) => toWire(name, results[name]!, transfer));
    send({ op: 'done', id: message.id, outputs, startedAt, finishedAt }, transfer);
  } catch (error) {
    send({
      op: 'failed',
      id: message.id,
      kind: failureKind(error, 'run-failed'),
      message: errorMessage(error),
      ...(startedAt !== undefined && { startedAt, finishedAt: finishedAt ?? preciseNow() }),
    });
  }
}

async function release(message: Extract<ToWorker, { op: 'release' }>): Promise<void> {
  const session = sessions.get(message.key);
  sessions.delete(message.key);
  if (session) await native(() => session.release()).catch(() => {});
  send({ op: 'released', id: message.id });
}

// One message at a time: session.run's promise resolves on a later tick, so chain the handlers explicitly.
let queue: Promise<void> = Promise.resolve();
port.on('message', (message: ToWorker) => {
  queue = queue.then(() => {
    switch (message.op) {
      case 'load':
        return load(message);
      case 'run':
        return run(message);
      case 'release':
        return release(message);
    }
  });
});
send({ op: 'ready' });
