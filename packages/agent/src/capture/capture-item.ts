import { DataTypeNameSchema, type DataTypeName } from '@edgefleet/core';
import { z } from 'zod';

/** AuxilaryData encodings by wire value (AWS.SageMaker.Edge.Encoding). */
export const AUXILIARY_ENCODINGS = ['CSV', 'JSON', 'NONE', 'BASE64'] as const;
export type AuxiliaryEncoding = (typeof AUXILIARY_ENCODINGS)[number];

export interface CapturedTensor {
  /** The tensor's name as text (a name that is not UTF-8 is shown as 0x-prefixed hex). */
  name: string;
  dataType: DataTypeName;
  shape: number[];
  /** Little-endian, row-major; the capture's own: a copy, or a view of request memory nothing writes again (keptBytes). */
  data: Buffer;
}

export interface CapturedAuxiliary {
  /** The client's AuxilaryData.name: what the bytes are ("jpg", "json", …), echoed as observedContentType. */
  contentType: string;
  encoding: AuxiliaryEncoding;
  data: Buffer;
}

/** One accepted capture, as it waits in the queue. */
export interface CaptureItem {
  captureId: string;
  model: string;
  modelVersion: string;
  /** Epoch milliseconds: the client's inference_timestamp, or the time of receipt. */
  inferenceTime: number;
  receivedAt: number;
  /** `api`: CaptureData; `auto`: sampled from Predict traffic. */
  source: 'api' | 'auto';
  inputTensors: CapturedTensor[];
  outputTensors: CapturedTensor[];
  inputs: CapturedAuxiliary[];
  outputs: CapturedAuxiliary[];
}

/**
 * `owned` when the bytes of `data` that lie in it cover at least half of it, else undefined (so that keptBytes
 * copies them all). A view keeps the whole of `owned` alive while the capture is held (until written: up to a
 * push period), but the capture buffer's byte budget (edgefleet_capture_buffer_bytes) counts only the bytes
 * captured; what else the message carries is the client's choice (an unknown field, which the codec skips, or a
 * repeated bytes field, of which the last wins), so a 4-byte tensor in a message of -m bytes would hold -m for 4
 * bytes charged. With this rule a capture holds at most twice what it is charged, and a copy is made only of
 * bytes fewer than the rest of the message it came in.
 */
export function viewableMemory(
  owned: ArrayBuffer | undefined,
  data: Iterable<Uint8Array>,
): ArrayBuffer | undefined {
  if (owned === undefined) return undefined;
  let viewed = 0;
  for (const d of data) if (d.buffer === owned) viewed += d.byteLength;
  return viewed * 2 >= owned.byteLength ? owned : undefined;
}

/**
 * The bytes a capture keeps of `data`: a view, with no copy on the event loop, when `data` lies in `owned`
 * (memory of this request alone that nothing writes again: a gRPC request message, which grpc-js assembles per
 * message, see the gRPC door's messageMemory), else a copy (a shared memory segment the client may overwrite once
 * answered, a caller's buffer it may reuse). A view keeps `owned` alive while the capture is held: callers pass
 * `owned` only when the capture's bytes are most of it (viewableMemory).
 */
export function keptBytes(data: Uint8Array, owned: ArrayBuffer | undefined): Buffer {
  return owned !== undefined && data.buffer === owned
    ? Buffer.from(owned, data.byteOffset, data.byteLength)
    : Buffer.from(data);
}

/** Bytes of data a capture holds (what its buffering and spooling cost). */
export function captureBytes(item: CaptureItem): number {
  let bytes = 0;
  for (const list of [item.inputTensors, item.outputTensors, item.inputs, item.outputs]) {
    for (const entry of list) bytes += entry.data.byteLength;
  }
  return bytes;
}

// ---- serialised form (the local database): meta JSON + the bytes concatenated ----

const TensorMetaSchema = z.object({
  name: z.string(),
  dataType: DataTypeNameSchema,
  shape: z.array(z.number().int().nonnegative()),
  bytes: z.number().int().nonnegative(),
});
const AuxiliaryMetaSchema = z.object({
  contentType: z.string(),
  encoding: z.enum(AUXILIARY_ENCODINGS),
  bytes: z.number().int().nonnegative(),
});
const CaptureMetaSchema = z.object({
  v: z.literal(1),
  captureId: z.string().min(1),
  model: z.string().min(1),
  modelVersion: z.string(),
  inferenceTime: z.number(),
  receivedAt: z.number(),
  source: z.enum(['api', 'auto']),
  inputTensors: z.array(TensorMetaSchema),
  outputTensors: z.array(TensorMetaSchema),
  inputs: z.array(AuxiliaryMetaSchema),
  outputs: z.array(AuxiliaryMetaSchema),
});
type CaptureMeta = z.infer<typeof CaptureMetaSchema>;

export function encodeCaptureItem(item: CaptureItem): { meta: string; payload: Buffer } {
  const { meta, chunks, bytes } = encodeCaptureItemParts(item);
  return { meta, payload: Buffer.concat(chunks, bytes) };
}

/**
 * encodeCaptureItem without joining the bytes: the payload is `chunks` in order (views of the capture's own
 * buffers), `bytes` long. A large payload is written from these as they are, with no copy on the event loop.
 */
export function encodeCaptureItemParts(item: CaptureItem): { meta: string; chunks: Buffer[]; bytes: number } {
  const chunks: Buffer[] = [];
  const tensor = (t: CapturedTensor) => {
    chunks.push(t.data);
    return { name: t.name, dataType: t.dataType, shape: t.shape, bytes: t.data.byteLength };
  };
  const auxiliary = (a: CapturedAuxiliary) => {
    chunks.push(a.data);
    return { contentType: a.contentType, encoding: a.encoding, bytes: a.data.byteLength };
  };
  const meta: CaptureMeta = {
    v: 1,
    captureId: item.captureId,
    model: item.model,
    modelVersion: item.modelVersion,
    inferenceTime: item.inferenceTime,
    receivedAt: item.receivedAt,
    source: item.source,
    inputTensors: item.inputTensors.map(tensor),
    outputTensors: item.outputTensors.map(tensor),
    inputs: item.inputs.map(auxiliary),
    outputs: item.outputs.map(auxiliary),
  };
  return { meta: JSON.stringify(meta), chunks, bytes: captureBytes(item) };
}

/** The inverse of encodeCaptureItem. Throws when the stored form is damaged (meta invalid, bytes missing). */
export function decodeCaptureItem(meta: string, payload: Buffer): CaptureItem {
  const parsed = CaptureMetaSchema.parse(JSON.parse(meta));
  let offset = 0;
  const take = (bytes: number): Buffer => {
    if (offset + bytes > payload.byteLength) {
      throw new Error(
        `stored capture ${parsed.captureId} is damaged: its meta names ${offset + bytes} bytes, its payload has ${payload.byteLength}`,
      );
    }
    const slice = payload.subarray(offset, offset + bytes);
    offset += bytes;
    return slice;
  };
  const item: CaptureItem = {
    captureId: parsed.captureId,
    model: parsed.model,
    modelVersion: parsed.modelVersion,
    inferenceTime: parsed.inferenceTime,
    receivedAt: parsed.receivedAt,
    source: parsed.source,
    inputTensors: parsed.inputTensors.map(({ bytes, ...t }) => ({ ...t, data: take(bytes) })),
    outputTensors: parsed.outputTensors.map(({ bytes, ...t }) => ({ ...t, data: take(bytes) })),
    inputs: parsed.inputs.map(({ bytes, ...a }) => ({ ...a, data: take(bytes) })),
    outputs: parsed.outputs.map(({ bytes, ...a }) => ({ ...a, data: take(bytes) })),
  };
  if (offset !== payload.byteLength) {
    throw new Error(
      `stored capture ${parsed.captureId} is damaged: its payload has ${payload.byteLength} bytes, its meta names ${offset}`,
    );
  }
  return item;
}
