import { mkdtemp } from 'node:fs/promises';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { afterEach, describe, expect, it } from 'vitest';
import {
  CaptureService,
  DiskDestination,
  MemoryCaptureQueue,
  modelActivityObserver,
  topScore,
  type AutoCaptureRule,
} from '../../src/capture/index.js';
import { type PredictTensor } from '../../src/models/index.js';
import { ModelActivity } from '../../src/state/index.js';
import { diskRecords, testSettings, useModelRegistry } from './helpers.js';

const loaded = useModelRegistry('edgefleet-auto-capture-', { tiny: 'tiny', mlp: 'flowers' });
const detach: (() => void)[] = [];
const services: CaptureService[] = [];

afterEach(async () => {
  for (const d of detach.splice(0)) d();
  for (const s of services.splice(0)) await s.close();
});

async function autoService(
  rules: AutoCaptureRule[],
  options: { random?: () => number; bufferSize?: number; batchSize?: number; metrics?: Registry } = {},
) {
  const work = await mkdtemp(join(loaded.root, 'case-'));
  const settings = testSettings(work, {
    autoCapture: rules,
    batchSize: options.batchSize ?? 1,
    pushPeriodSeconds: 3600,
    bufferSize: options.bufferSize ?? 30,
  });
  const service = new CaptureService({
    settings,
    models: loaded.registry,
    queue: new MemoryCaptureQueue(),
    destination: new DiskDestination(settings.diskPath),
    ...(options.random && { random: options.random }),
    ...(options.metrics && { metricsRegistry: options.metrics }),
  });
  await service.start();
  services.push(service);
  detach.push(loaded.registry.observe(service.autoCapture));
  return { service, settings };
}

/** The float32 values of a record's base64 data. */
function floats(base64: string): Float32Array {
  const bytes = Buffer.from(base64, 'base64');
  return new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
}

function tinyInput(value: number): PredictTensor {
  return {
    name: Buffer.from('x'),
    dataType: 'FLOAT32',
    shape: [1, 16],
    data: new Uint8Array(new Float32Array(16).fill(value).buffer),
  };
}

function flower(features: number[]): PredictTensor {
  return {
    name: Buffer.from('features'),
    dataType: 'FLOAT32',
    shape: [1, 4],
    data: new Uint8Array(new Float32Array(features).buffer),
  };
}

describe('automatic capture', () => {
  it('captures every prediction at sampleRate 1: the model inputs and outputs, named as the model names them', async () => {
    const { service, settings } = await autoService([{ model: 'tiny', sampleRate: 1 }]);
    for (const v of [1, 2, 3]) await loaded.registry.predict('tiny', [tinyInput(v)]);
    await service.flush();
    const records = (await diskRecords(settings.diskPath)).map((r) => r.record);
    expect(records).toHaveLength(3);
    const byInput = records.map((r) => [
      floats(r.deviceFleetInputs[0].data)[0],
      floats(r.deviceFleetOutputs[0].data)[0],
    ]);
    expect(byInput.sort()).toEqual([
      [1, 3],
      [2, 5],
      [3, 7],
    ]);
    expect(records[0]).toMatchObject({
      eventMetadata: {
        eventId: expect.stringMatching(/^auto-[0-9a-f-]{36}$/),
        modelName: 'tiny',
        modelVersion: '1.0',
      },
      deviceFleetInputs: [{ name: 'x', observedContentType: 'Tensor[FLOAT32; 1, 16]' }],
      deviceFleetOutputs: [{ name: 'y', observedContentType: 'Tensor[FLOAT32; 1, 16]' }],
      deviceFleetAuxiliaryInputs: [],
    });
  });

  it('samples at the configured rate (decided as the request starts) and leaves other models alone', async () => {
    const draws = [0.05, 0.5, 0.01, 0.99, 0.0999];
    let i = 0;
    const { service, settings } = await autoService([{ model: 'tiny', sampleRate: 0.1 }], {
      random: () => draws[i++ % draws.length]!,
    });
    for (let k = 0; k < 5; k++) await loaded.registry.predict('tiny', [tinyInput(k)]);
    await loaded.registry.predict('flowers', [flower([5.1, 3.5, 1.4, 0.2])]);
    await service.flush();
    const records = await diskRecords(settings.diskPath);
    const captured = records.map((r) => floats(r.record.deviceFleetInputs[0].data)[0]).sort();
    expect(captured).toEqual([0, 2, 4]);
  });

  it('keeps what was predicted though the caller reuses its input buffer at once; keeps views of the request’s own memory', async () => {
    const { service, settings } = await autoService([{ model: 'tiny', sampleRate: 1 }], { batchSize: 10 });
    // An embedding caller's buffer, filled again for its next frame as soon as predict resolves: copied.
    const reused = tinyInput(1);
    await loaded.registry.predict('tiny', [reused]);
    new Float32Array(reused.data.buffer).fill(9);
    // A request's own memory (a gRPC message, PredictOptions.ownedBuffer): kept as a view, so a write into it
    // (which nothing does) would show in the capture.
    const message = new ArrayBuffer(64);
    new Float32Array(message).fill(2);
    await loaded.registry.predict('tiny', [{ ...tinyInput(0), data: new Uint8Array(message) }], {
      ownedBuffer: message,
    });
    new Float32Array(message).fill(4);
    expect(service.held).toBe(2);
    await service.flush();
    const captured = (await diskRecords(settings.diskPath)).map((r) => [
      floats(r.record.deviceFleetInputs[0].data)[0],
      floats(r.record.deviceFleetOutputs[0].data)[0],
    ]);
    expect(captured.sort()).toEqual([
      [1, 3],
      [4, 5],
    ]);
  });

  it('copies the inputs of a request message that carries far more than its inputs (a view would hold the whole message, counted as the inputs alone)', async () => {
    const { service, settings } = await autoService([{ model: 'tiny', sampleRate: 1 }]);
    // 64 bytes of input in a message of 1 MiB (the rest, say, an unknown field the codec skipped).
    const message = new ArrayBuffer(1024 * 1024);
    const input = new Uint8Array(message, 0, 64);
    new Float32Array(message, 0, 16).fill(2);
    await loaded.registry.predict('tiny', [{ ...tinyInput(0), data: input }], { ownedBuffer: message });
    new Float32Array(message, 0, 16).fill(4);
    await service.flush();
    const [found] = await diskRecords(settings.diskPath);
    expect(floats(found!.record.deviceFleetInputs[0].data)[0]).toBe(2);
  });

  it('keeps transferred inputs intact only while a rule needs them (transfer otherwise stays zero-copy)', async () => {
    const { service } = await autoService([{ model: 'tiny', sampleRate: 1 }]);
    const sampled = tinyInput(1);
    await loaded.registry.predict('tiny', [sampled], { transferInputs: true });
    expect(sampled.data.byteLength).toBe(64);
    const other = flower([5.1, 3.5, 1.4, 0.2]);
    await loaded.registry.predict('flowers', [other], { transferInputs: true });
    expect(other.data.byteLength).toBe(0);
    await service.flush();
  });

  it('captures when the top score is below the threshold: the flowers the model is unsure of', async () => {
    const { service, settings } = await autoService([
      { model: 'flowers', topScoreBelow: 0.9, output: 'probabilities' },
    ]);
    const flowers = [
      [5.1, 3.5, 1.4, 0.2],
      [5.9, 3.0, 4.2, 1.5],
      [6.5, 3.0, 5.8, 2.2],
      [6.3, 2.8, 5.1, 1.5],
    ];
    const unsure: number[] = [];
    for (const [k, features] of flowers.entries()) {
      const result = await loaded.registry.predict('flowers', [flower(features)]);
      if (topScore(result.outputs)! < 0.9) unsure.push(k);
    }
    expect(unsure.length).toBeGreaterThan(0);
    expect(unsure.length).toBeLessThan(flowers.length);
    await service.flush();
    const captured = (await diskRecords(settings.diskPath)).map((r) => {
      const first = floats(r.record.deviceFleetInputs[0].data)[0]!;
      return flowers.findIndex((f) => Math.fround(f[0]!) === first);
    });
    expect(captured.sort()).toEqual(unsure);
  });

  it('never fails or slows a prediction when the buffer is full: the sample is skipped and counted', async () => {
    const metrics = new Registry();
    const { service } = await autoService([{ model: 'tiny', sampleRate: 1 }], { bufferSize: 2, metrics });
    const results = await Promise.all(
      Array.from({ length: 6 }, (_, k) => loaded.registry.predict('tiny', [tinyInput(k)])),
    );
    expect(results).toHaveLength(6);
    await service.flush();
    const text = await metrics.metrics();
    const accepted = Number(
      /edgefleet_capture_accepted_total\{model="tiny",source="auto"\} (\d+)/.exec(text)?.[1],
    );
    const skipped = Number(
      /edgefleet_capture_auto_skipped_total\{model="tiny",reason="buffer-full"\} (\d+)/.exec(text)?.[1] ?? 0,
    );
    expect(accepted + skipped).toBe(6);
    expect(skipped).toBeGreaterThan(0);
  });

  it('counts inferences per model for the heartbeat through the same hook', async () => {
    const activity = new ModelActivity();
    detach.push(loaded.registry.observe(modelActivityObserver(activity)));
    await loaded.registry.predict('tiny', [tinyInput(1)]);
    await loaded.registry.predict('tiny', [tinyInput(2)]);
    const tiny = activity.snapshot().find((c) => c.model === 'tiny')!;
    expect(tiny.inferences).toBe(2);
    expect(tiny.lastInferenceAt).toBeGreaterThan(Date.now() - 60_000);
  });

  it('an observer that throws never fails the prediction', async () => {
    detach.push(
      loaded.registry.observe({
        onPredict: () => {
          throw new Error('observer bug');
        },
      }),
      loaded.registry.observe({
        onPredict: () => ({
          readsInputs: false,
          readsOutputs: false,
          predicted: () => {
            throw new Error('listener bug');
          },
        }),
      }),
    );
    const result = await loaded.registry.predict('tiny', [tinyInput(1)]);
    expect(result.outputs).toHaveLength(1);
  });
});
