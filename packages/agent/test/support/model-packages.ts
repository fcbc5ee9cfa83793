import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createModelPackage, writeTestModel, type TestModelName } from '@edgefleet/core';

/**
 * A scratch folder with helpers that build real model packages in it: the set-up the agent's models, gRPC,
 * REST and door tests share (one copy, rather than one per folder).
 */
export async function scratch(prefix: string) {
  const root = await mkdtemp(join(tmpdir(), prefix));
  let counter = 0;
  return {
    root,
    /** A package folder of a catalogue model; returns its absolute path. */
    async catalogue(model: TestModelName, packageName: string = model, version = '1.0'): Promise<string> {
      const work = join(root, `src-${++counter}`);
      const modelPath = await writeTestModel(model, work);
      const { dir } = await createModelPackage({
        modelPath,
        name: packageName,
        version,
        outDir: join(root, `pkg-${counter}-${packageName}`),
      });
      return dir;
    },
    /** A package folder of a model given as ONNX bytes. */
    async custom(onnx: Uint8Array, packageName: string, version = '2.0'): Promise<string> {
      const work = join(root, `src-${++counter}`);
      await mkdir(work, { recursive: true });
      await writeFile(join(work, 'model.onnx'), onnx);
      const { dir } = await createModelPackage({
        modelPath: join(work, 'model.onnx'),
        name: packageName,
        version,
        outDir: join(root, `pkg-${counter}-${packageName}`),
      });
      return dir;
    },
    async cleanup(): Promise<void> {
      await rm(root, { recursive: true, force: true });
    },
  };
}

/** A typed array's bytes, as a Buffer view (no copy). */
export function bytesOf(data: ArrayBufferView): Buffer {
  return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}
