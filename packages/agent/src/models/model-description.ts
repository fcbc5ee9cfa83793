/** What the registry tells about a model and its loads; shared by the registry, the loader and each version. */
import type { TensorMetadata } from '@edgefleet/core';

/**
 * Where one load of a model stands. A load goes verifying → creating-sessions → warming-up → ready; a ready
 * version that stops taking requests is draining (those in flight finish), then unloaded. A failed or aborted
 * load goes straight to unloaded.
 */
export const MODEL_VERSION_STATES = [
  'verifying',
  'creating-sessions',
  'warming-up',
  'ready',
  'draining',
  'unloaded',
] as const;
export type ModelVersionState = (typeof MODEL_VERSION_STATES)[number];

export type SignatureStatus =
  | { verified: true; method: 'key' | 'certificate'; signer: string; subjectDigest: string }
  | { verified: false; reason: string };

export interface ModelDescription {
  /** The name it was loaded under. */
  name: string;
  /** The url as given to load. */
  url: string;
  /** Absolute path of the package folder. */
  path: string;
  /** The package's own name and version (from its manifest). */
  packageName: string;
  version: string;
  inputs: TensorMetadata[];
  outputs: TensorMetadata[];
  loadedAt: Date;
  /** Sessions of the model, each on its own worker. */
  instances: number;
  signature: SignatureStatus;
  /** Requests since it was loaded. */
  requests: { succeeded: number; failed: number };
  /** From describe only: a version staged beside this one (see ModelRegistry.stage), until promoted or aborted. */
  staged?: StagedVersionDescription;
}

/** A version loading or loaded beside the serving one, taking no requests until it is promoted. */
export interface StagedVersionDescription {
  name: string;
  /** The url as given to stage. */
  url: string;
  /** verifying, creating-sessions or warming-up while it loads; ready once it can be promoted. */
  state: ModelVersionState;
  /** The pool key of this load (each load has its own). */
  key: string;
  /** Once ready: the package's version, path, signature and so on, as for a loaded model. */
  model?: ModelDescription;
}

export interface RegistryLogger {
  warn(message: string, details?: Record<string, unknown>): void;
  info?(message: string, details?: Record<string, unknown>): void;
}
