import { z } from 'zod';
import {
  isPathSafeVersion,
  MAX_PACKAGED_MODEL_NAME_LENGTH,
  MAX_PACKAGED_MODEL_VERSION_LENGTH,
  MODEL_NAME_PATTERN,
  PATH_SAFE_VERSION_MESSAGE,
  VERSION_PATTERN,
} from '../contract/field-rules.js';
import { TensorMetadataSchema } from '../tensors/tensor-metadata.js';

/** Model versions: SageMaker's EdgeVersion pattern (letters, digits, space, underscore, dot), at most 30. */
export const MODEL_VERSION_PATTERN = VERSION_PATTERN;

/** A packaged model's name: the agent's model-name rule, at most 63 characters (an EntityName). */
export const ModelNameSchema = z
  .string()
  .max(MAX_PACKAGED_MODEL_NAME_LENGTH, `a model name is at most ${MAX_PACKAGED_MODEL_NAME_LENGTH} characters`)
  .regex(MODEL_NAME_PATTERN, 'a model name is letters and digits, optionally joined by hyphens (no _ or .)');
export const ModelVersionSchema = z
  .string()
  .max(
    MAX_PACKAGED_MODEL_VERSION_LENGTH,
    `a model version is at most ${MAX_PACKAGED_MODEL_VERSION_LENGTH} characters`,
  )
  .regex(MODEL_VERSION_PATTERN, 'a model version is letters, digits, spaces, underscores and dots')
  .refine(isPathSafeVersion, PATH_SAFE_VERSION_MESSAGE);

/** A path inside a package: relative, forward slashes, no `.`/`..` segments. */
export const PackagePathSchema = z
  .string()
  .min(1)
  .max(1024)
  .refine(
    (p) =>
      !p.startsWith('/') &&
      !p.includes('\\') &&
      p.split('/').every((s) => s !== '' && s !== '.' && s !== '..'),
    'a package path is relative, uses forward slashes and has no empty, "." or ".." segments',
  );

/** Names of the files every package has besides the model itself. */
export const MANIFEST_FILE = 'manifest.json';
export const SAGEMAKER_EDGE_MANIFEST_FILE = 'sagemaker_edge_manifest';

/** `manifest.json`: what the package holds, and the tensors the model takes and gives, read from the model. */
export const PackageManifestSchema = z
  .object({
    schemaVersion: z.literal(1),
    name: ModelNameSchema,
    version: ModelVersionSchema,
    framework: z.literal('onnx'),
    model: z.object({
      /** The ONNX file, relative to the package root. */
      file: PackagePathSchema,
      /** Files holding tensors stored outside the ONNX file, relative to the model file's folder. */
      externalData: z.array(PackagePathSchema).default([]),
      irVersion: z.number().int().nonnegative(),
      opsetImports: z.array(z.object({ domain: z.string(), version: z.number().int() })),
      producer: z.string().max(256),
    }),
    inputs: z.array(TensorMetadataSchema).min(1),
    outputs: z.array(TensorMetadataSchema).min(1),
    createdAt: z.iso.datetime(),
    description: z.string().max(800).optional(),
    /** Free-form key/value labels (team, dataset, task, …). */
    labels: z.record(z.string().min(1).max(128), z.string().max(256)).optional(),
  })
  .strict();
export type PackageManifest = z.infer<typeof PackageManifestSchema>;

/** The file applications written for Edge Manager read; we keep its shape and add nothing they could trip on. */
export const SageMakerEdgeManifestSchema = z
  .object({
    metadata: z.object({ model_name: z.string(), model_version: z.string() }).loose(),
  })
  .loose();
export type SageMakerEdgeManifest = z.infer<typeof SageMakerEdgeManifestSchema>;

export function sagemakerEdgeManifestFor(manifest: PackageManifest): SageMakerEdgeManifest {
  return {
    metadata: { model_name: manifest.name, model_version: manifest.version, framework: manifest.framework },
  };
}

/** `<name>-<version>.tar.gz`, the distributable name Edge Manager's packaging jobs used. */
export function archiveFileName(name: string, version: string): string {
  return `${name}-${version}.tar.gz`;
}

/** Describes a zod failure as one line per issue: `inputs.0.shape: expected …`. */
export function describeZodError(error: z.ZodError): string {
  return error.issues
    .map((issue) => `${issue.path.length > 0 ? issue.path.join('.') : '(root)'}: ${issue.message}`)
    .join('; ');
}
