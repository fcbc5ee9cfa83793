import { createHash } from 'node:crypto';
import { DATA_TYPES, type DataTypeName } from '@edgefleet/core';
import type { CaptureItem, CapturedAuxiliary, CapturedTensor } from './capture-item.js';

/**
 * What a rendered file is: a side file (a large item's bytes, named by records' `data-ref`), an Edge Manager
 * manifest (records), or Model Monitor's copy of a group's records. Said when the batch is rendered, not read from
 * the key: a side file's extension is the client's word (an auxiliary input named "jsonl" ends in `.jsonl`).
 */
export const RENDERED_FILE_KINDS = ['side', 'manifest', 'monitor-manifest'] as const;
export type RenderedFileKind = (typeof RENDERED_FILE_KINDS)[number];

/** One object to write: a key below the destination's root ("<prefix>/<fleet>/<model>/YYYY/…"), and its bytes. */
export interface RenderedFile {
  key: string;
  body: Buffer;
  contentType: string;
  kind: RenderedFileKind;
}

/** A batch ready for a destination: side files first, then the manifests that reference them. */
export interface RenderedBatch {
  batchId: string;
  files: RenderedFile[];
  captureIds: string[];
  /** When its oldest capture was received (epoch ms): the spool drops the oldest data first. */
  oldestReceivedAt: number;
}

export interface RenderContext {
  /** `sagemaker_edge_core_folder_prefix`; leading and trailing slashes are ignored, empty means none. */
  folderPrefix: string;
  fleetName: string;
  deviceName: string;
  /** Items with more raw bytes than this go to side files. */
  base64EmbedLimit: number;
  /** Also write each batch in the SageMaker Model Monitor data-capture format. */
  modelMonitorFormat: boolean;
  /** The URL a `data-ref` gives for a key (file:// on disk, s3:// in a bucket). */
  urlFor(key: string): string;
}

/** The sub-tree of the prefix holding Model Monitor records: a name no fleet can have (fleet names start alphanumeric). */
export const MODEL_MONITOR_FOLDER = '_model-monitor';

/** `Tensor[FLOAT32; 1, 3, 224, 224]`; a scalar is `Tensor[FLOAT32]`. */
export function tensorContentType(dataType: DataTypeName, shape: readonly number[]): string {
  return shape.length === 0 ? `Tensor[${dataType}]` : `Tensor[${dataType}; ${shape.join(', ')}]`;
}

/** `YYYY-MM-DDTHH:MM:SS`, UTC, no zone, no fraction. */
export function formatInferenceTime(epochMs: number): string {
  return new Date(epochMs).toISOString().slice(0, 19);
}

/** `<prefix>/<fleet>/<model>/YYYY/MM/DD/HH` for a capture. */
export function hourlyPrefix(
  context: Pick<RenderContext, 'folderPrefix' | 'fleetName'>,
  model: string,
  epochMs: number,
): string {
  return joinKey(normalizePrefix(context.folderPrefix), context.fleetName, model, hourPath(epochMs));
}

/**
 * Renders a batch: captures grouped by model and by the UTC hour of their inference time, one manifest
 * (`<32 hex>.jsonl`, one record per line) per group, large items as side files under `raw-data/`. Every name is
 * derived from the batch id, so rendering the same batch again (after a crash) gives the same keys and bytes.
 */
export function renderBatch(
  batchId: string,
  items: readonly CaptureItem[],
  context: RenderContext,
): RenderedBatch {
  const groups = new Map<string, CaptureItem[]>();
  for (const item of items) {
    const group = `${item.model}\0${Math.floor(item.inferenceTime / 3_600_000)}`;
    const list = groups.get(group);
    if (list) list.push(item);
    else groups.set(group, [item]);
  }
  const sideFiles: RenderedFile[] = [];
  const manifests: RenderedFile[] = [];
  const monitor: RenderedFile[] = [];
  const prefix = normalizePrefix(context.folderPrefix);
  for (const members of groups.values()) {
    const model = members[0]!.model;
    const hour = hourPath(members[0]!.inferenceTime);
    const base = joinKey(prefix, context.fleetName, model, hour);
    const name = createHash('sha256').update(`${batchId}\0${model}\0${hour}`).digest('hex').slice(0, 32);
    const edgeLines: string[] = [];
    const monitorLines: string[] = [];
    const sideKeys = new Set<string>();
    for (const item of members) {
      const refs = new Map<object, string>(); // empty for most captures: everything embedded
      const place = (
        entry: CapturedTensor | CapturedAuxiliary,
        tag: string,
        extension: string,
        contentType: string,
      ) => {
        if (entry.data.byteLength <= context.base64EmbedLimit) return;
        // Under the batch's own name: the application picks capture ids, and they are unique only to it (two
        // devices of a fleet, or one restarted, may reuse one), while an object is written once, by one device.
        const stem = `${safeFileStem(item.captureId)}-${tag}`;
        let key = joinKey(base, 'raw-data', name, `${stem}.${extension}`);
        // The same capture id twice in one batch: each keeps its own file.
        for (let n = 2; sideKeys.has(key); n++)
          key = joinKey(base, 'raw-data', name, `${stem}-${n}.${extension}`);
        sideKeys.add(key);
        sideFiles.push({ key, body: entry.data, contentType, kind: 'side' });
        refs.set(entry, context.urlFor(key));
      };
      item.inputTensors.forEach((t, i) => place(t, `input-${i + 1}`, 'bin', 'application/octet-stream'));
      item.outputTensors.forEach((t, i) => place(t, `output-${i + 1}`, 'bin', 'application/octet-stream'));
      item.inputs.forEach((a, i) =>
        place(a, `aux-input-${i + 1}`, auxiliaryExtension(a), auxiliaryMediaType(a)),
      );
      item.outputs.forEach((a, i) =>
        place(a, `aux-output-${i + 1}`, auxiliaryExtension(a), auxiliaryMediaType(a)),
      );
      edgeLines.push(edgeRecord(item, context, refs));
      if (context.modelMonitorFormat) monitorLines.push(modelMonitorRecord(item, refs));
    }
    manifests.push(jsonl(joinKey(base, `${name}.jsonl`), edgeLines, 'manifest'));
    if (context.modelMonitorFormat) {
      monitor.push(
        jsonl(
          joinKey(prefix, MODEL_MONITOR_FOLDER, model, context.fleetName, hour, `${name}.jsonl`),
          monitorLines,
          'monitor-manifest',
        ),
      );
    }
  }
  return {
    batchId,
    files: [...sideFiles, ...manifests, ...monitor],
    captureIds: items.map((i) => i.captureId),
    oldestReceivedAt: items.reduce((oldest, i) => Math.min(oldest, i.receivedAt), Infinity),
  };
}

/** One line of the Edge Manager format (spec section 7); field order as the spec shows it. */
export function edgeRecord(
  item: CaptureItem,
  context: RenderContext,
  refs: ReadonlyMap<object, string>,
): string {
  // Built as text rather than through JSON.stringify of objects: this runs for every capture, and the field
  // order must be exactly the spec's. Every value that is not base64 or a constant goes through JSON.stringify.
  const entry = (
    name: string,
    contentType: string,
    encoding: string,
    mode: 'Input' | 'Output',
    value: CapturedTensor | CapturedAuxiliary,
  ): string => {
    const ref = refs.get(value);
    const data =
      ref !== undefined ? `"data-ref":${JSON.stringify(ref)}` : `"data":"${value.data.toString('base64')}"`;
    return `{"name":${JSON.stringify(name)},"observedContentType":${JSON.stringify(contentType)},"encoding":"${encoding}","mode":"${mode}",${data}}`;
  };
  const tensors = (list: CapturedTensor[], mode: 'Input' | 'Output') =>
    list.map((t) => entry(t.name, tensorContentType(t.dataType, t.shape), 'BASE64', mode, t)).join(',');
  const auxiliary = (list: CapturedAuxiliary[], mode: 'Input' | 'Output') =>
    list.map((a, i) => entry(`${mode}-${i + 1}`, a.contentType, a.encoding, mode, a)).join(',');
  return (
    `{"eventVersion":"0","eventMetadata":{"deviceFleetName":${JSON.stringify(context.fleetName)},` +
    `"deviceId":${JSON.stringify(context.deviceName)},"eventId":${JSON.stringify(item.captureId)},` +
    `"inferenceTime":"${formatInferenceTime(item.inferenceTime)}","modelName":${JSON.stringify(item.model)},` +
    `"modelVersion":${JSON.stringify(item.modelVersion)}},` +
    `"deviceFleetInputs":[${tensors(item.inputTensors, 'Input')}],` +
    `"deviceFleetOutputs":[${tensors(item.outputTensors, 'Output')}],` +
    `"deviceFleetAuxiliaryInputs":[${auxiliary(item.inputs, 'Input')}],` +
    `"deviceFleetAuxiliaryOutputs":[${auxiliary(item.outputs, 'Output')}]}`
  );
}

/**
 * One line of the SageMaker Model Monitor data-capture format. Tensors are given as a KServe v2 JSON document
 * (`{"inputs":[{"name","datatype","shape","data":[…]}]}`, `"outputs"` for the output side), a tensor above
 * the embed limit as `"parameters":{"data-ref":…}` instead of `data`. A side with no tensors carries its first
 * auxiliary item: CSV and JSON text as is, anything else base64.
 */
export function modelMonitorRecord(item: CaptureItem, refs: ReadonlyMap<object, string>): string {
  const side = (tensors: CapturedTensor[], auxiliary: CapturedAuxiliary[], mode: 'INPUT' | 'OUTPUT') => {
    const first = auxiliary[0];
    if (tensors.length === 0 && first !== undefined) {
      const ref = refs.get(first);
      const text =
        first.encoding === 'CSV' || first.encoding === 'JSON' ? utf8OrUndefined(first.data) : undefined;
      return {
        observedContentType: first.contentType,
        mode,
        ...(ref !== undefined ? { 'data-ref': ref } : { data: text ?? first.data.toString('base64') }),
        encoding: ref !== undefined || text === undefined ? 'BASE64' : first.encoding,
      };
    }
    const document = {
      [mode === 'INPUT' ? 'inputs' : 'outputs']: tensors.map((t) => {
        const ref = refs.get(t);
        return {
          name: t.name,
          datatype: DATA_TYPES[t.dataType].kserve,
          shape: t.shape,
          ...(ref !== undefined
            ? { parameters: { 'data-ref': ref } }
            : { data: tensorValues(t.dataType, t.data) }),
        };
      }),
    };
    return {
      observedContentType: 'application/json',
      mode,
      data: JSON.stringify(document),
      encoding: 'JSON',
    };
  };
  return JSON.stringify({
    captureData: {
      endpointInput: side(item.inputTensors, item.inputs, 'INPUT'),
      endpointOutput: side(item.outputTensors, item.outputs, 'OUTPUT'),
    },
    eventMetadata: {
      eventId: item.captureId,
      inferenceId: item.captureId,
      inferenceTime: `${formatInferenceTime(item.inferenceTime)}Z`,
    },
    eventVersion: '0',
  });
}

/** A tensor's elements as JSON values: numbers, or decimal strings for 64-bit integers beyond 2^53. */
export function tensorValues(dataType: DataTypeName, data: Buffer): (number | string)[] {
  const size = DATA_TYPES[dataType].bytes;
  const count = Math.floor(data.byteLength / size);
  const values: (number | string)[] = new Array(count);
  for (let i = 0; i < count; i++) {
    const at = i * size;
    switch (dataType) {
      case 'UINT8':
        values[i] = data.readUInt8(at);
        break;
      case 'INT16':
        values[i] = data.readInt16LE(at);
        break;
      case 'INT32':
        values[i] = data.readInt32LE(at);
        break;
      case 'INT64': {
        const big = data.readBigInt64LE(at);
        values[i] =
          big >= BigInt(Number.MIN_SAFE_INTEGER) && big <= BigInt(Number.MAX_SAFE_INTEGER)
            ? Number(big)
            : big.toString();
        break;
      }
      case 'FLOAT16':
        values[i] = jsonNumber(halfToNumber(data.readUInt16LE(at)));
        break;
      case 'FLOAT32':
        values[i] = jsonNumber(data.readFloatLE(at));
        break;
      case 'FLOAT64':
        values[i] = jsonNumber(data.readDoubleLE(at));
        break;
    }
  }
  return values;
}

/** JSON has no NaN or infinities; KServe's JSON writes them as strings. */
function jsonNumber(value: number): number | string {
  return Number.isFinite(value) ? value : String(value);
}

function halfToNumber(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 0x1f) return fraction === 0 ? sign * Infinity : NaN;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

function jsonl(key: string, lines: readonly string[], kind: 'manifest' | 'monitor-manifest'): RenderedFile {
  return { key, body: Buffer.from(`${lines.join('\n')}\n`, 'utf8'), contentType: 'application/jsonl', kind };
}

/** A manifest's file name: the group's 32 hex. A side file's always holds its tag (`<id>-input-1.bin`). */
const MANIFEST_NAME = /^[0-9a-f]{32}\.jsonl$/;

/**
 * A file's kind from its key alone, where nothing recorded it: a batch spooled by an agent before kinds were kept
 * in batch.json, and a Disk capture the periodic upload finds. Exact for the keys renderBatch makes: a manifest is
 * named `<32 hex>.jsonl` (a side file's name never is), and Model Monitor's lies seven folders below
 * `_model-monitor` (`_model-monitor/<model>/<fleet>/YYYY/MM/DD/HH/`; an Edge Manager manifest has its folder prefix
 * there, so a prefix ending in `_model-monitor` would read as Model Monitor's: only an old batch's refusal could
 * tell). Not the `.jsonl` ending: an auxiliary input named "jsonl" is a side file that has it.
 */
export function fileKindOfKey(key: string): RenderedFileKind {
  const parts = key.split('/');
  if (!MANIFEST_NAME.test(parts.at(-1)!)) return 'side';
  return parts.at(-8) === MODEL_MONITOR_FOLDER ? 'monitor-manifest' : 'manifest';
}

function hourPath(epochMs: number): string {
  const iso = new Date(epochMs).toISOString();
  return `${iso.slice(0, 4)}/${iso.slice(5, 7)}/${iso.slice(8, 10)}/${iso.slice(11, 13)}`;
}

export function normalizePrefix(prefix: string): string {
  return prefix.replace(/^\/+|\/+$/g, '');
}

function joinKey(...parts: string[]): string {
  return parts.filter((p) => p !== '').join('/');
}

/**
 * A capture id as part of a file name: capture ids are any string, file names are not. Characters other than
 * letters, digits, '.', '_' and '-' become '_'; when anything changed, 8 hex of the id's SHA-256 keep names apart.
 */
export function safeFileStem(captureId: string): string {
  let stem = captureId.replace(/[^A-Za-z0-9._-]/g, '_').replace(/^\./, '_');
  if (stem.length > 100) stem = stem.slice(0, 100);
  if (stem === captureId) return stem;
  return `${stem}-${createHash('sha256').update(captureId).digest('hex').slice(0, 8)}`;
}

const MEDIA_TYPES: Record<string, string> = {
  jpg: 'image/jpeg',
  jpeg: 'image/jpeg',
  png: 'image/png',
  json: 'application/json',
  csv: 'text/csv',
  txt: 'text/plain',
  wav: 'audio/wav',
};

/** A side file's extension: the client's name when it looks like one ("jpg"), else from the encoding. */
function auxiliaryExtension(a: CapturedAuxiliary): string {
  const name = a.contentType.toLowerCase();
  if (/^[a-z0-9]{1,10}$/.test(name)) return name;
  return a.encoding === 'CSV' ? 'csv' : a.encoding === 'JSON' ? 'json' : 'bin';
}

function auxiliaryMediaType(a: CapturedAuxiliary): string {
  return MEDIA_TYPES[auxiliaryExtension(a)] ?? 'application/octet-stream';
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });
function utf8OrUndefined(data: Buffer): string | undefined {
  try {
    return strictUtf8.decode(data);
  } catch {
    return undefined;
  }
}
