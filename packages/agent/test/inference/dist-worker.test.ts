import { execFile } from 'node:child_process';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { TEST_MODELS, writeTestModel } from '@edgefleet/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type * as InferenceModule from '../../src/inference/index.js';

const repo = resolve(fileURLToPath(import.meta.url), '../../../../..');
const distIndex = join(repo, 'packages/agent/dist/inference/index.js');
let dir: string;
let dist: typeof InferenceModule;

beforeAll(async () => {
  // The real build, as `npm run build` does it (incremental: it re-emits what changed). Other folders of the
  // package may be mid-edit by others and fail to type-check; ours must not.
  const tsc = join(repo, 'node_modules/.bin/tsc');
  const build = await promisify(execFile)(tsc, ['-b', 'packages/agent'], { cwd: repo }).then(
    () => ({ ok: true, stdout: '' }),
    (error: { stdout?: string }) => ({ ok: false, stdout: error.stdout ?? '' }),
  );
  const ours = /packages\/agent\/src\/(inference|models|config|metrics)\//;
  if (!build.ok && ours.test(build.stdout)) throw new Error(`tsc -b packages/agent failed:\n${build.stdout}`);
  if (!(await stat(join(repo, 'packages/agent/dist/inference/inference-worker.js')).catch(() => undefined))) {
    throw new Error(`tsc -b packages/agent emitted no dist/inference:\n${build.stdout}`);
  }
  dist = (await import(pathToFileURL(distIndex).href)) as typeof InferenceModule;
  dir = await mkdtemp(join(tmpdir(), 'agent-dist-'));
}, 120_000);
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('the compiled inference pool (dist)', () => {
  it('starts dist/inference/inference-worker.js and runs a model with exact outputs', async () => {
    const pool = await dist.InferencePool.start({ workers: 1, session: dist.DEFAULT_ORT_SESSION_CONFIG });
    try {
      await pool.loadModel('tiny', await writeTestModel('tiny', dir), 1);
      const sample = TEST_MODELS.tiny.sampleInputs();
      const x = sample.x!.data;
      const result = await pool.run('tiny', [
        {
          name: 'x',
          dataType: 'FLOAT32',
          shape: [1, 16],
          data: new Uint8Array(x.buffer, x.byteOffset, x.byteLength),
        },
      ]);
      expect(new Float32Array(result.outputs[0]!.data.slice().buffer)).toEqual(
        TEST_MODELS.tiny.reference(sample).y!.data,
      );
      expect(result.outputs[0]!.shape).toEqual([1, 16]);
    } finally {
      await pool.close();
    }
  });
});
