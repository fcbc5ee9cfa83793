import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  MODEL_MONITOR_FOLDER,
  decodeCaptureItem,
  encodeCaptureItem,
  fileKindOfKey,
  renderBatch,
  safeFileStem,
  tensorValues,
  type CaptureItem,
  type RenderContext,
} from '../../src/capture/index.js';

const context: RenderContext = {
  folderPrefix: '/sme-capture/',
  fleetName: 'fleet-a',
  deviceName: 'device-1',
  base64EmbedLimit: 3072,
  modelMonitorFormat: false,
  urlFor: (key) => `s3://bucket/${key}`,
};

const at = Date.UTC(2023, 4, 31, 20, 5, 24, 987);

function imageCapture(overrides: Partial<CaptureItem> = {}): CaptureItem {
  return {
    captureId: 'abc-1685563523430',
    model: 'resnet',
    modelVersion: '1.0',
    inferenceTime: at,
    receivedAt: at + 5,
    source: 'api',
    inputTensors: [
      {
        name: 'input',
        dataType: 'FLOAT32',
        shape: [1, 3, 224, 224],
        data: Buffer.alloc(1 * 3 * 224 * 224 * 4, 7),
      },
    ],
    outputTensors: [
      {
        name: 'output',
        dataType: 'FLOAT32',
        shape: [1, 2],
        data: Buffer.from(new Float32Array([0.25, 0.75]).buffer),
      },
    ],
    inputs: [{ contentType: 'jpg', encoding: 'NONE', data: Buffer.alloc(5000, 1) }],
    outputs: [{ contentType: 'json', encoding: 'BASE64', data: Buffer.from('{"label":"cat"}') }],
    ...overrides,
  };
}

describe('Edge Manager records', () => {
  it('writes every field the spec names, in its order, with tensor content types and side files above the limit', () => {
    const batch = renderBatch('0123456789abcdef0123456789abcdef', [imageCapture()], context);
    const base = 'sme-capture/fleet-a/resnet/2023/05/31/20';
    const manifest = batch.files.find((f) => f.key.endsWith('.jsonl'))!;
    expect(manifest.key).toMatch(new RegExp(`^${base}/[0-9a-f]{32}\\.jsonl$`));
    expect(manifest.contentType).toBe('application/jsonl');
    const text = manifest.body.toString('utf8');
    expect(text.endsWith('\n')).toBe(true);
    expect(text.split('\n')).toHaveLength(2);
    const record = JSON.parse(text);
    expect(Object.keys(record)).toEqual([
      'eventVersion',
      'eventMetadata',
      'deviceFleetInputs',
      'deviceFleetOutputs',
      'deviceFleetAuxiliaryInputs',
      'deviceFleetAuxiliaryOutputs',
    ]);
    expect(record.eventVersion).toBe('0');
    expect(record.eventMetadata).toEqual({
      deviceFleetName: 'fleet-a',
      deviceId: 'device-1',
      eventId: 'abc-1685563523430',
      inferenceTime: '2023-05-31T20:05:24',
      modelName: 'resnet',
      modelVersion: '1.0',
    });
    expect(Object.keys(record.eventMetadata)).toEqual([
      'deviceFleetName',
      'deviceId',
      'eventId',
      'inferenceTime',
      'modelName',
      'modelVersion',
    ]);

    const [input] = record.deviceFleetInputs;
    expect(Object.keys(input)).toEqual(['name', 'observedContentType', 'encoding', 'mode', 'data-ref']);
    expect(input).toMatchObject({
      name: 'input',
      observedContentType: 'Tensor[FLOAT32; 1, 3, 224, 224]',
      encoding: 'BASE64',
      mode: 'Input',
    });
    // The parser AWS published for 4-D tensors.
    expect(input.observedContentType).toMatch(/Tensor\[(\w+); (\d+), (\d+), (\d+), (\d+)\]/);
    const name = manifest.key.slice(base.length + 1, -'.jsonl'.length);
    expect(input['data-ref']).toBe(`s3://bucket/${base}/raw-data/${name}/abc-1685563523430-input-1.bin`);

    expect(record.deviceFleetOutputs).toEqual([
      {
        name: 'output',
        observedContentType: 'Tensor[FLOAT32; 1, 2]',
        encoding: 'BASE64',
        mode: 'Output',
        data: Buffer.from(new Float32Array([0.25, 0.75]).buffer).toString('base64'),
      },
    ]);
    expect(record.deviceFleetAuxiliaryInputs).toEqual([
      {
        name: 'Input-1',
        observedContentType: 'jpg',
        encoding: 'NONE',
        mode: 'Input',
        'data-ref': `s3://bucket/${base}/raw-data/${name}/abc-1685563523430-aux-input-1.jpg`,
      },
    ]);
    expect(record.deviceFleetAuxiliaryOutputs).toEqual([
      {
        name: 'Output-1',
        observedContentType: 'json',
        encoding: 'BASE64',
        mode: 'Output',
        data: Buffer.from('{"label":"cat"}').toString('base64'),
      },
    ]);

    // Side files hold the raw bytes and come before the manifest.
    expect(batch.files.map((f) => f.key)).toEqual([
      `${base}/raw-data/${name}/abc-1685563523430-input-1.bin`,
      `${base}/raw-data/${name}/abc-1685563523430-aux-input-1.jpg`,
      manifest.key,
    ]);
    expect(batch.files[0]!.body.equals(imageCapture().inputTensors[0]!.data)).toBe(true);
    expect(batch.files[1]!.contentType).toBe('image/jpeg');
    expect(batch.captureIds).toEqual(['abc-1685563523430']);
  });

  it("names side files after the batch, so that another batch (another device's, or this device's after a restart) reusing a capture id gets its own keys", () => {
    const sideKeys = (batchId: string, items: CaptureItem[]) =>
      renderBatch(batchId, items, context)
        .files.map((f) => f.key)
        .filter((k) => !k.endsWith('.jsonl'));
    const first = sideKeys('1'.repeat(32), [imageCapture()]);
    const second = sideKeys('2'.repeat(32), [imageCapture({ inputs: [], outputs: [] })]);
    expect(first).toHaveLength(2);
    expect(second).toHaveLength(1);
    expect(first).not.toContain(second[0]);
    // One capture id twice in a batch: two files, not one written twice.
    const twice = sideKeys('3'.repeat(32), [imageCapture(), imageCapture()]);
    expect(new Set(twice).size).toBe(4);
    expect(twice[2]).toMatch(/\/abc-1685563523430-input-1-2\.bin$/);
  });

  it('embeds items of exactly the limit, and moves items one byte larger to side files', () => {
    const item = imageCapture({
      inputTensors: [{ name: 'a', dataType: 'UINT8', shape: [3072], data: Buffer.alloc(3072, 2) }],
      outputTensors: [{ name: 'b', dataType: 'UINT8', shape: [3073], data: Buffer.alloc(3073, 3) }],
      inputs: [],
      outputs: [],
    });
    const batch = renderBatch('0'.repeat(32), [item], context);
    const record = JSON.parse(batch.files.at(-1)!.body.toString());
    expect(Buffer.from(record.deviceFleetInputs[0].data, 'base64').equals(Buffer.alloc(3072, 2))).toBe(true);
    expect(record.deviceFleetOutputs[0].data).toBeUndefined();
    expect(record.deviceFleetOutputs[0]['data-ref']).toMatch(
      /raw-data\/[0-9a-f]{32}\/abc-1685563523430-output-1\.bin$/,
    );
    expect(batch.files).toHaveLength(2);
  });

  it('keeps empty lists, writes scalars as Tensor[T], and uses the limit 0 to send everything to side files', () => {
    const scalar = imageCapture({
      inputTensors: [{ name: 's', dataType: 'INT64', shape: [], data: Buffer.alloc(8) }],
      outputTensors: [],
      inputs: [],
      outputs: [],
    });
    const record = JSON.parse(renderBatch('1'.repeat(32), [scalar], context).files.at(-1)!.body.toString());
    expect(record.deviceFleetOutputs).toEqual([]);
    expect(record.deviceFleetAuxiliaryInputs).toEqual([]);
    expect(record.deviceFleetAuxiliaryOutputs).toEqual([]);
    expect(record.deviceFleetInputs[0].observedContentType).toBe('Tensor[INT64]');
    const allSide = renderBatch('1'.repeat(32), [scalar], { ...context, base64EmbedLimit: 0 });
    expect(allSide.files).toHaveLength(2);
  });

  it('groups a batch by model and UTC hour, one manifest per group, names derived from the batch id', () => {
    const hour = 3600_000;
    const items = [
      imageCapture({ captureId: 'a', inputs: [], inputTensors: [] }),
      imageCapture({ captureId: 'b', model: 'other', inputs: [], inputTensors: [] }),
      imageCapture({ captureId: 'c', inferenceTime: at + hour, inputs: [], inputTensors: [] }),
      imageCapture({ captureId: 'd', inputs: [], inputTensors: [] }),
    ];
    const batch = renderBatch('f'.repeat(32), items, { ...context, folderPrefix: '' });
    const keys = batch.files.map((f) => f.key.replace(/[0-9a-f]{32}/, 'H'));
    expect(keys).toEqual([
      'fleet-a/resnet/2023/05/31/20/H.jsonl',
      'fleet-a/other/2023/05/31/20/H.jsonl',
      'fleet-a/resnet/2023/05/31/21/H.jsonl',
    ]);
    const ids = batch.files.map((f) =>
      f.body
        .toString()
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l).eventMetadata.eventId),
    );
    expect(ids).toEqual([['a', 'd'], ['b'], ['c']]);
    // Same batch id: same names and bytes (a batch written again after a crash replaces itself).
    const again = renderBatch('f'.repeat(32), items, { ...context, folderPrefix: '' });
    expect(again.files.map((f) => [f.key, f.body.toString('base64')])).toEqual(
      batch.files.map((f) => [f.key, f.body.toString('base64')]),
    );
    const other = renderBatch('e'.repeat(32), items, { ...context, folderPrefix: '' });
    expect(other.files[0]!.key).not.toBe(batch.files[0]!.key);
  });

  it('writes valid JSON that reads back every string exactly, whatever characters they hold (property)', () => {
    const text = fc.string({ maxLength: 40, unit: 'binary' });
    fc.assert(
      fc.property(
        text,
        text,
        text,
        text,
        text,
        text,
        (captureId, tensorName, contentType, version, fleet, device) => {
          const item = imageCapture({
            captureId,
            modelVersion: version,
            inputTensors: [{ name: tensorName, dataType: 'UINT8', shape: [2], data: Buffer.from([1, 2]) }],
            outputTensors: [],
            inputs: [{ contentType, encoding: 'CSV', data: Buffer.from('a,b') }],
            outputs: [],
          });
          const line = renderBatch('9'.repeat(32), [item], {
            ...context,
            fleetName: fleet || 'f',
            deviceName: device,
          })
            .files.at(-1)!
            .body.toString('utf8');
          expect(line.endsWith('\n')).toBe(true);
          expect(line.slice(0, -1)).not.toContain('\n');
          const record = JSON.parse(line);
          expect(record.eventMetadata).toEqual({
            deviceFleetName: fleet || 'f',
            deviceId: device,
            eventId: captureId,
            inferenceTime: '2023-05-31T20:05:24',
            modelName: 'resnet',
            modelVersion: version,
          });
          expect(record.deviceFleetInputs).toEqual([
            {
              name: tensorName,
              observedContentType: 'Tensor[UINT8; 2]',
              encoding: 'BASE64',
              mode: 'Input',
              data: 'AQI=',
            },
          ]);
          expect(record.deviceFleetAuxiliaryInputs[0].observedContentType).toBe(contentType);
        },
      ),
      { numRuns: 200 },
    );
  });

  it('makes any capture id a safe, distinct file name stem (property)', () => {
    fc.assert(
      fc.property(
        fc.string({ minLength: 1, maxLength: 256, unit: 'grapheme' }),
        fc.string({ minLength: 1, maxLength: 256 }),
        (a, b) => {
          const stem = safeFileStem(a);
          expect(stem).toMatch(/^[A-Za-z0-9_-][A-Za-z0-9._-]*$/);
          expect(stem.length).toBeLessThanOrEqual(109);
          if (a !== b) expect(safeFileStem(b)).not.toBe(stem);
        },
      ),
    );
    expect(safeFileStem('capture1685563523')).toBe('capture1685563523');
    expect(safeFileStem('../etc/passwd')).toMatch(/^_\._etc_passwd-[0-9a-f]{8}$/);
  });
});

describe('file kinds', () => {
  it('says what each rendered file is, and its key alone says the same, whatever the client named an auxiliary item', () => {
    const named = (name: string, id: string) =>
      imageCapture({
        captureId: id,
        inputs: [{ contentType: name, encoding: 'JSON', data: Buffer.alloc(5000, 0x7b) }],
      });
    // The fleet, model or capture id may read like a folder of ours; the extension like a manifest's.
    const batch = renderBatch(
      'c'.repeat(32),
      [named('jsonl', 'a'), named('jsonl', 'c'.repeat(32)), { ...named('jsonl', 'b'), model: 'raw-data' }],
      { ...context, modelMonitorFormat: true },
    );
    const kinds = batch.files.map((f) => f.kind);
    expect(kinds.filter((k) => k === 'manifest')).toHaveLength(2);
    expect(kinds.filter((k) => k === 'monitor-manifest')).toHaveLength(2);
    const sides = batch.files.filter((f) => f.kind === 'side');
    expect(sides.filter((f) => f.key.endsWith('.jsonl'))).toHaveLength(3);
    for (const file of batch.files) expect(fileKindOfKey(file.key)).toBe(file.kind);
    expect(fileKindOfKey(`x/_model-monitor/m/f/2026/01/02/03/${'d'.repeat(32)}.jsonl`)).toBe(
      'monitor-manifest',
    );
    expect(fileKindOfKey(`x/f/_model-monitor/2026/01/02/03/${'d'.repeat(32)}.jsonl`)).toBe('manifest');
  });
});

describe('Model Monitor records', () => {
  it('writes captureData.endpointInput/endpointOutput, eventMetadata and eventVersion under _model-monitor', () => {
    const item = imageCapture({ inputs: [], outputs: [] });
    const batch = renderBatch('a'.repeat(32), [item], { ...context, modelMonitorFormat: true });
    const monitor = batch.files.find((f) => f.key.includes(MODEL_MONITOR_FOLDER))!;
    expect(monitor.key).toMatch(
      /^sme-capture\/_model-monitor\/resnet\/fleet-a\/2023\/05\/31\/20\/[0-9a-f]{32}\.jsonl$/,
    );
    const record = JSON.parse(monitor.body.toString());
    expect(Object.keys(record)).toEqual(['captureData', 'eventMetadata', 'eventVersion']);
    expect(record.eventMetadata).toEqual({
      eventId: item.captureId,
      inferenceId: item.captureId,
      inferenceTime: '2023-05-31T20:05:24Z',
    });
    expect(record.eventVersion).toBe('0');
    const input = record.captureData.endpointInput;
    expect(input).toMatchObject({ observedContentType: 'application/json', mode: 'INPUT', encoding: 'JSON' });
    expect(JSON.parse(input.data)).toEqual({
      inputs: [
        {
          name: 'input',
          datatype: 'FP32',
          shape: [1, 3, 224, 224],
          parameters: {
            'data-ref': expect.stringMatching(/raw-data\/[0-9a-f]{32}\/abc-1685563523430-input-1\.bin$/),
          },
        },
      ],
    });
    const output = record.captureData.endpointOutput;
    expect(output.mode).toBe('OUTPUT');
    expect(JSON.parse(output.data)).toEqual({
      outputs: [{ name: 'output', datatype: 'FP32', shape: [1, 2], data: [0.25, 0.75] }],
    });
  });

  it('uses auxiliary data when a side has no tensors: CSV text as is, binary as base64', () => {
    const item = imageCapture({
      inputTensors: [],
      outputTensors: [],
      inputs: [{ contentType: 'text/csv', encoding: 'CSV', data: Buffer.from('5.1,3.5,1.4,0.2') }],
      outputs: [{ contentType: 'bin', encoding: 'NONE', data: Buffer.from([0, 255]) }],
    });
    const monitor = renderBatch('b'.repeat(32), [item], { ...context, modelMonitorFormat: true }).files.at(
      -1,
    )!;
    const { endpointInput, endpointOutput } = JSON.parse(monitor.body.toString()).captureData;
    expect(endpointInput).toEqual({
      observedContentType: 'text/csv',
      mode: 'INPUT',
      data: '5.1,3.5,1.4,0.2',
      encoding: 'CSV',
    });
    expect(endpointOutput).toEqual({
      observedContentType: 'bin',
      mode: 'OUTPUT',
      data: 'AP8=',
      encoding: 'BASE64',
    });
  });

  it('reads every data type into JSON values', () => {
    const half = Buffer.from(new Uint16Array([0x3c00, 0xc000, 0x7c00, 0x0001]).buffer);
    expect(tensorValues('FLOAT16', half)).toEqual([1, -2, 'Infinity', 2 ** -24]);
    expect(tensorValues('INT64', Buffer.from(new BigInt64Array([5n, -(2n ** 60n)]).buffer))).toEqual([
      5,
      String(-(2n ** 60n)),
    ]);
    expect(tensorValues('UINT8', Buffer.from([1, 255]))).toEqual([1, 255]);
    expect(tensorValues('INT16', Buffer.from(new Int16Array([-3]).buffer))).toEqual([-3]);
    expect(tensorValues('INT32', Buffer.from(new Int32Array([-70000]).buffer))).toEqual([-70000]);
    expect(tensorValues('FLOAT64', Buffer.from(new Float64Array([0.1, NaN]).buffer))).toEqual([0.1, 'NaN']);
  });
});

describe('stored form', () => {
  it('round-trips a capture through encode/decode and refuses damaged payloads', () => {
    const item = imageCapture();
    const { meta, payload } = encodeCaptureItem(item);
    const back = decodeCaptureItem(meta, payload);
    const again = encodeCaptureItem(back);
    expect(again.meta).toBe(meta);
    expect(again.payload.equals(payload)).toBe(true);
    expect(back.inputTensors[0]!.data.equals(item.inputTensors[0]!.data)).toBe(true);
    expect(() => decodeCaptureItem(meta, payload.subarray(1))).toThrow(/damaged/);
    expect(() => decodeCaptureItem(meta, Buffer.concat([payload, Buffer.alloc(1)]))).toThrow(/damaged/);
    expect(() => decodeCaptureItem('{"v":2}', payload)).toThrow();
  });
});
