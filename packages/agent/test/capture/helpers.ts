import { readFile, readdir } from 'node:fs/promises';
import { join, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  AgentDataType,
  AgentEncoding,
  createModelPackage,
  writeTestModel,
  type CaptureDataRequest,
  type Tensor,
  type TestModelName,
} from '@edgefleet/core';
import {
  CaptureSettingsSchema,
  type CaptureSettings,
  type CaptureSettingsInput,
} from '../../src/capture/index.js';

/** Settings for tests: a Disk destination under `root`, small numbers, overridable. */
export function testSettings(root: string, overrides: Partial<CaptureSettingsInput> = {}): CaptureSettings {
  return CaptureSettingsSchema.parse({
    destination: 'Disk',
    diskPath: join(root, 'capture'),
    folderPrefix: 'sme-capture',
    bufferSize: 30,
    batchSize: 10,
    pushPeriodSeconds: 4,
    base64EmbedLimit: 3072,
    periodicUpload: false,
    periodicUploadPeriodSeconds: 8,
    fleetName: 'fleet-a',
    deviceName: 'device-1',
    spool: { dir: join(root, 'spool'), quotaBytes: 64 * 1024 * 1024, retryInitialMs: 50, retryMaxMs: 400 },
    ...overrides,
  } satisfies CaptureSettingsInput);
}

export function floatTensor(name: string, shape: number[], fill = 0.5): Tensor {
  const count = shape.reduce((n, d) => n * d, 1);
  return {
    tensorMetadata: { name: Buffer.from(name), dataType: AgentDataType.FLOAT32, shape },
    byteData: Buffer.from(new Float32Array(count).fill(fill).buffer),
    data: 'byteData',
  };
}

/** A CaptureDataRequest as the gRPC codec decodes one: every field present, proto3 defaults. */
export function captureRequest(
  captureId: string,
  overrides: Partial<CaptureDataRequest> = {},
): CaptureDataRequest {
  return {
    modelName: '',
    modelHandle: 'tiny',
    captureId,
    inferenceTimestamp: null,
    inputTensors: [floatTensor('x', [1, 16], 1)],
    outputTensors: [floatTensor('y', [1, 16], 3)],
    inputs: [],
    outputs: [
      { name: 'json', encoding: AgentEncoding.JSON, byteData: Buffer.from('{"ok":true}'), data: 'byteData' },
    ],
    ...overrides,
  };
}

export interface FoundRecord {
  file: string;
  record: Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any -- records are checked field by field
}

/** Every file under a folder, relative paths with '/' separators. */
export async function listFiles(root: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (dir: string): Promise<void> => {
    let entries;
    try {
      entries = await readdir(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const path = join(dir, e.name);
      if (e.isDirectory()) await walk(path);
      else out.push(relative(root, path).split(sep).join('/'));
    }
  };
  await walk(root);
  return out.sort();
}

/** Every record in every .jsonl manifest under a folder (excluding Model Monitor ones). */
export async function diskRecords(root: string): Promise<FoundRecord[]> {
  const records: FoundRecord[] = [];
  for (const file of await listFiles(root)) {
    if (!file.endsWith('.jsonl') || file.includes('_model-monitor')) continue;
    const text = await readFile(join(root, file), 'utf8');
    for (const line of text.split('\n')) if (line !== '') records.push({ file, record: JSON.parse(line) });
  }
  return records;
}

export async function readDataRef(ref: string): Promise<Buffer> {
  return readFile(fileURLToPath(ref));
}

/** A catalogue model as an extracted package folder under `root`. */
export async function modelPackage(
  root: string,
  model: TestModelName,
  name: string = model,
): Promise<string> {
  const modelPath = await writeTestModel(model, join(root, `src-${name}`));
  const { dir } = await createModelPackage({
    modelPath,
    name,
    version: '1.0',
    outDir: join(root, `pkg-${name}`),
  });
  return dir;
}
