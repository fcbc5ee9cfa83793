import { copyFile, lstat, mkdir, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { basename, dirname, join, resolve } from 'node:path';
import { z } from 'zod';
import { readOnnxModelInfo } from '../onnx/index.js';
import {
  MANIFEST_FILE,
  ModelNameSchema,
  ModelVersionSchema,
  PackageManifestSchema,
  SAGEMAKER_EDGE_MANIFEST_FILE,
  describeZodError,
  sagemakerEdgeManifestFor,
  type PackageManifest,
} from './manifest.js';
import { PackageInvalidError } from './errors.js';

export const CreatePackageOptionsSchema = z.object({
  modelPath: z.string().min(1),
  name: ModelNameSchema,
  version: ModelVersionSchema,
  /** The package folder to create; it must not exist, or be empty. */
  outDir: z.string().min(1),
  description: z.string().max(800).optional(),
  labels: z.record(z.string().min(1).max(128), z.string().max(256)).optional(),
  /** Fixed creation time, for reproducible packages. */
  createdAt: z.date().optional(),
});
export type CreatePackageOptions = z.input<typeof CreatePackageOptionsSchema>;

/** The name the ONNX file gets inside every package. */
export const PACKAGE_MODEL_FILE = 'model.onnx';

/**
 * Builds an unsigned package folder from an ONNX model: the model (and any external-data files it names), a
 * `manifest.json` whose tensor metadata is read from the model itself, and the `sagemaker_edge_manifest` that
 * Edge Manager applications read. The folder appears whole or not at all (built aside, then renamed).
 */
export async function createModelPackage(
  options: CreatePackageOptions,
  /**
   * `signal`: aborts the build (a stopping server) between its steps (reading the model, each file copied):
   * rejects with its reason, leaving no folder behind. A copy under way runs to its end (copyFile).
   */
  control: { signal?: AbortSignal } = {},
): Promise<{ dir: string; manifest: PackageManifest }> {
  const { signal } = control;
  signal?.throwIfAborted();
  const parsed = CreatePackageOptionsSchema.safeParse(options);
  if (!parsed.success)
    throw new PackageInvalidError(options.outDir ?? '(no folder)', describeZodError(parsed.error));
  const opts = parsed.data;

  const info = await readOnnxModelInfo(opts.modelPath);
  signal?.throwIfAborted();
  const manifest = PackageManifestSchema.parse({
    schemaVersion: 1,
    name: opts.name,
    version: opts.version,
    framework: 'onnx',
    model: {
      file: PACKAGE_MODEL_FILE,
      externalData: info.externalDataFiles,
      irVersion: info.irVersion,
      opsetImports: info.opsetImports,
      producer: [info.producerName, info.producerVersion].filter(Boolean).join(' '),
    },
    inputs: info.inputs,
    outputs: info.outputs,
    createdAt: (opts.createdAt ?? new Date()).toISOString(),
    ...(opts.description !== undefined && { description: opts.description }),
    ...(opts.labels !== undefined && { labels: opts.labels }),
  } satisfies PackageManifest);

  const outDir = resolve(opts.outDir);
  await ensureFree(outDir);
  const tmp = join(dirname(outDir), `.${basename(outDir)}.partial-${randomBytes(6).toString('hex')}`);
  await mkdir(tmp, { recursive: true });
  try {
    await copyFile(opts.modelPath, join(tmp, PACKAGE_MODEL_FILE));
    const modelDir = dirname(resolve(opts.modelPath));
    for (const file of info.externalDataFiles) {
      signal?.throwIfAborted();
      const from = join(modelDir, file);
      const fromStat = await lstat(from).catch(() => undefined);
      if (!fromStat?.isFile()) {
        throw new PackageInvalidError(
          outDir,
          `the model stores tensors in ${file}, which is not a file next to ${opts.modelPath}`,
        );
      }
      await mkdir(dirname(join(tmp, file)), { recursive: true });
      await copyFile(from, join(tmp, file));
    }
    signal?.throwIfAborted();
    await writeFile(join(tmp, MANIFEST_FILE), `${JSON.stringify(manifest, null, 2)}\n`);
    await writeFile(
      join(tmp, SAGEMAKER_EDGE_MANIFEST_FILE),
      `${JSON.stringify(sagemakerEdgeManifestFor(manifest), null, 2)}\n`,
    );
    await rm(outDir, { recursive: true, force: true });
    await rename(tmp, outDir);
  } catch (error) {
    await rm(tmp, { recursive: true, force: true });
    throw error;
  }
  return { dir: outDir, manifest };
}

async function ensureFree(dir: string): Promise<void> {
  const st = await stat(dir).catch(() => undefined);
  if (!st) return;
  if (!st.isDirectory())
    throw new PackageInvalidError(dir, 'a file is already there; choose another output folder');
  if ((await readdir(dir)).length > 0) {
    throw new PackageInvalidError(
      dir,
      'the output folder already exists and is not empty; choose another or remove it',
    );
  }
}
