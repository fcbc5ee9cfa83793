/**
 * An inference worker thread: owns ONNX Runtime sessions and runs them. `session.run()` blocks the thread it
 * runs on (onnxruntime-node runs inference synchronously on the JS thread), which is why it only ever runs
 * here and never on the agent's event loop. Messages are handled one at a time, in order.
 */
import { parentPort } from 'node:worker_threads';
import ort from 'onnxruntime-node';
import type { InferenceSession, Tensor } from 'onnxruntime-node';
import {
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
    const session = await ort.InferenceSession.create(message.modelPath, message.options);
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
  // Typed arrays need aligned offsets, and a big-endian host needs its own byte order: both mean one copy.
  if (offset % size !== 0 || !HOST_IS_LITTLE_ENDIAN) {
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
    const results = await session.run(feeds);
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
  await session?.release().catch(() => {});
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
