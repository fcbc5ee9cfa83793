import { freemem } from 'node:os';
import { isAbsolute, posix, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  PackageVerificationError,
  dataTypeFromOrt,
  openModelPackage,
  packageFileSize,
  readPackageModel,
  shapeMismatch,
  type OpenedModelPackage,
  type ListingLimits,
  type PackageFileCheck,
  type PackageFolderCheck,
  type SignerDescription,
  type TensorMetadata,
  type TrustPolicy,
} from '@edgefleet/core';
import {
  InferenceError,
  type InferencePool,
  type RunResult,
  type WireTensorInfo,
} from '../inference/index.js';
import type { BatchingOptions } from '../inference/pool-types.js';
import { AgentError } from './agent-error.js';
import { asAgentError, formatBytes, loadFailure, packageFailure } from './model-errors.js';
import type { ModelDescription, RegistryLogger, SignatureStatus } from './model-description.js';
import type { ModelVersion } from './model-version.js';
import { warmUpInputs } from './predict-inputs.js';

const MAX_URL_LENGTH = 4096;

export interface ModelLoaderOptions {
  pool: InferencePool;
  /** Roots/keys package signatures must verify against; null = signatures are not checked (a warning per load). */
  trust: TrustPolicy | null;
  /** With a trust policy: refuse packages that do not verify (default true); false loads them with a warning. */
  requireSignatures?: boolean;
  /** Relative load urls are resolved against this (the agent's working directory). */
  cwd: string;
  /** Sessions per model, on distinct workers (capped at the worker count). Default 1. */
  instancesPerModel?: number;
  /**
   * Dynamic batching, by the name a model is loaded under (`edgefleet_dynamic_batching`); each name at most once.
   * A model without a rule runs its requests one at a time.
   */
  dynamicBatching?: ReadonlyArray<{ model: string; instances?: number } & BatchingOptions>;
  logger?: RegistryLogger;
  /** Bytes of memory available for new sessions. Default: process.availableMemory() (cgroup-aware). */
  availableMemory?: () => number;
}

/** For a caller's load: verification's listing checks each folder for it, bounded (see callerListingOptions). */
interface CallerListing {
  folderCheck: PackageFolderCheck;
  limits: ListingLimits;
}

/** Steps of a load the caller takes part in (the update engine records its WarmingUp state here). */
export interface LoadHooks {
  /** Awaited after the sessions were created and checked against the manifest, before the warm-up runs. */
  beforeWarmUp?: () => Promise<void>;
}

/**
 * Takes one version of a model from a package folder to ready: verify the package, create its sessions from the
 * verified bytes, check them against the manifest, warm them up. The version's state follows along
 * (verifying → creating-sessions → warming-up); the caller makes it ready. A failed or abandoned load leaves no
 * sessions behind.
 */
export class ModelLoader {
  readonly #pool: InferencePool;
  readonly #trust: TrustPolicy | null;
  readonly #requireSignatures: boolean;
  readonly #cwd: string;
  readonly #instances: number;
  /** Dynamic batching by model name, and the rule's sessions of the model (else `#instances`). */
  readonly #batching: ReadonlyMap<string, { batching: BatchingOptions; instances: number | undefined }>;
  readonly #logger: RegistryLogger | undefined;
  readonly #availableMemory: () => number;

  constructor(options: ModelLoaderOptions) {
    this.#pool = options.pool;
    this.#trust = options.trust;
    this.#requireSignatures = options.requireSignatures ?? true;
    this.#cwd = options.cwd;
    this.#instances = Math.max(1, options.instancesPerModel ?? 1);
    this.#batching = new Map(
      (options.dynamicBatching ?? []).map(({ model, maxBatchSize, dimension, instances }) => [
        model,
        { batching: { maxBatchSize, ...(dimension !== undefined && { dimension }) }, instances },
      ]),
    );
    this.#logger = options.logger;
    this.#availableMemory =
      options.availableMemory ??
      (() => (typeof process.availableMemory === 'function' ? process.availableMemory() : freemem()));
  }

  /** The package folder a load url names. INVALID_ARGUMENT when the url is malformed. */
  packageDir(url: unknown): string {
    return this.#packageDir(url);
  }

  /**
   * Loads `version` (its sessions under version.key) from the package at `dir`. `abandoned` is asked between
   * steps: when it returns an error, the load stops, its sessions are released, and that error is thrown.
   * Resolves with the version's description; errors are AgentErrors (see ModelRegistry.load). `hooks.beforeWarmUp`
   * is awaited once the sessions exist, before the warm-up runs; if it throws, the load fails the same way.
   * `shownDir` names the folder in the description, logs and errors where `dir` is not a name for people (a
   * descriptor's /proc path the folder is read through); core's reader and verifier are given it too, so no
   * message (nor any error's cause) holds `dir`. `fileCheck` is asked about each package file on the descriptor
   * it is read from (core's PackageFileCheck): for a caller, only files it could read itself.
   */
  async load(
    version: ModelVersion,
    request: {
      name: string;
      url: string;
      dir: string;
      shownDir?: string;
      fileCheck?: PackageFileCheck;
      listing?: CallerListing;
    },
    abandoned: () => AgentError | undefined,
    hooks: LoadHooks = {},
  ): Promise<ModelDescription> {
    const shownDir = request.shownDir ?? request.dir;
    return this.#load(version, { ...request, shownDir }, abandoned, hooks);
  }

  async #load(
    version: ModelVersion,
    request: {
      name: string;
      url: string;
      dir: string;
      shownDir: string;
      fileCheck?: PackageFileCheck;
      listing?: CallerListing;
    },
    abandoned: () => AgentError | undefined,
    hooks: LoadHooks,
  ): Promise<ModelDescription> {
    const { name, dir, shownDir, fileCheck, listing } = request;
    const check = () => {
      const reason = abandoned();
      if (reason) throw reason;
    };
    let sessionsCreated = false;
    try {
      version.state = 'verifying';
      const { opened, signature } = await this.#openPackage(dir, shownDir, fileCheck, listing);
      check();
      const rule = this.#batching.get(name);
      const instances = rule?.instances ?? this.#instances;
      const accepted = await this.#checkMemory(opened, name, instances);
      // ONNX Runtime gets the bytes that were verified, never the path: a file swapped after verification is
      // refused here rather than run, and none is read past the size the memory check accepted.
      const bytes = await readPackageModel(opened, { maxBytes: accepted }).catch((error: unknown) => {
        throw packageFailure(error, shownDir);
      });
      check();
      version.state = 'creating-sessions';
      const info = await this.#pool
        .loadModel(version.key, bytes, instances, rule ? { batching: rule.batching } : {})
        .catch((error: unknown) => {
          throw loadFailure(error, name, shownDir);
        });
      sessionsCreated = true;
      checkSessionAgainstManifest(name, shownDir, opened, info.inputs, info.outputs);
      check();
      if (info.batching) {
        const { dimension, maxBatchSize } = info.batching;
        this.#logger?.info?.(
          `model ${JSON.stringify(name)} batches its waiting requests along its dimension ${JSON.stringify(dimension)}, up to ${maxBatchSize} per run (edgefleet_dynamic_batching)`,
          { model: name, dimension, maxBatchSize },
        );
      }
      if (hooks.beforeWarmUp) {
        await hooks.beforeWarmUp();
        check();
      }
      version.state = 'warming-up';
      await this.#warmUp(version.key, name, opened);
      check();
      return {
        name,
        url: request.url,
        path: shownDir,
        packageName: opened.manifest.name,
        version: opened.manifest.version,
        inputs: opened.manifest.inputs,
        outputs: opened.manifest.outputs,
        loadedAt: new Date(),
        instances: info.workers.length,
        signature,
        requests: { succeeded: 0, failed: 0 },
      };
    } catch (error) {
      version.state = 'unloaded';
      if (sessionsCreated) await this.#pool.unloadModel(version.key).catch(() => {});
      throw asAgentError(error, `loading model ${JSON.stringify(name)}`);
    }
  }

  #packageDir(url: unknown): string {
    if (typeof url !== 'string' || url.trim() === '') {
      throw new AgentError(
        'INVALID_ARGUMENT',
        'the model url is empty; expected the folder of an extracted model package',
      );
    }
    if (url.length > MAX_URL_LENGTH || url.includes('\0')) {
      throw new AgentError(
        'INVALID_ARGUMENT',
        `the model url is not a usable path (${url.length > MAX_URL_LENGTH ? `${url.length} characters, at most ${MAX_URL_LENGTH}` : 'it contains a NUL byte'}); expected the folder of an extracted model package`,
      );
    }
    if (url.startsWith('file:')) {
      try {
        return fileURLToPath(url);
      } catch (error) {
        throw new AgentError(
          'INVALID_ARGUMENT',
          `the model url ${url} is not a valid file:// URL (${(error as Error).message})`,
        );
      }
    }
    return isAbsolute(url) ? resolve(url) : resolve(this.#cwd, url);
  }

  /**
   * Opens (and with a trust policy verifies) the package at `dir`; every message, the log's and the stored
   * signature reason included, names it `shownDir`.
   */
  async #openPackage(
    dir: string,
    shownDir: string,
    fileCheck: PackageFileCheck | undefined,
    listing: CallerListing | undefined,
  ): Promise<{ opened: OpenedModelPackage; signature: SignatureStatus }> {
    const shown = { ...(shownDir !== dir && { shownDir }), ...(fileCheck && { fileCheck }) };
    // Verification lists every folder: for a caller, through held folders it may list, bounded.
    const listed = listing && { folderCheck: listing.folderCheck, listingLimits: listing.limits };
    if (!this.#trust) {
      const opened = await openModelPackage(dir, { trust: null, ...shown }).catch((error: unknown) => {
        throw packageFailure(error, shownDir);
      });
      const reason = 'the agent has no trust policy (sagemaker_edge_core_root_certs_path is not set)';
      this.#logger?.warn(`loading model package ${shownDir} without checking its signature: ${reason}`);
      return { opened, signature: { verified: false, reason } };
    }
    try {
      const opened = await openModelPackage(dir, { trust: this.#trust, ...shown, ...listed });
      const signature = opened.signature!;
      return {
        opened,
        signature: {
          verified: true,
          method: signature.method,
          signer: describeSigner(signature.signer),
          subjectDigest: signature.subjectDigest,
        },
      };
    } catch (error) {
      if (error instanceof PackageVerificationError && !this.#requireSignatures) {
        const opened = await openModelPackage(dir, { trust: null, ...shown }).catch((e: unknown) => {
          throw packageFailure(e, shownDir);
        });
        this.#logger?.warn(
          `loading model package ${shownDir} although its signature did not verify: ${error.message}`,
          {
            reason: error.reason,
          },
        );
        return { opened, signature: { verified: false, reason: `${error.reason}: ${error.message}` } };
      }
      throw packageFailure(error, shownDir);
    }
  }

  /**
   * A session needs at least its weights in memory; refuse early rather than let ONNX Runtime fail midway.
   * Returns the size accepted for each file (package-relative path): what may then be read of it. Sizes come
   * from packageFileSize, which refuses a link below the package folder as the read will (its size never counts);
   * a file that cannot be opened counts as 0 here and is refused, with its reason, when read.
   */
  async #checkMemory(
    opened: OpenedModelPackage,
    name: string,
    sessions: number,
  ): Promise<Map<string, number>> {
    const modelFile = opened.manifest.model.file;
    const files = [
      modelFile,
      ...opened.manifest.model.externalData.map((file) => posix.join(posix.dirname(modelFile), file)),
    ];
    const accepted = new Map<string, number>();
    let bytes = 0;
    for (const file of files) {
      const size = await packageFileSize(opened.dir, file, file, opened.fileCheck).catch(() => 0);
      accepted.set(file, size);
      bytes += size;
    }
    const instances = Math.min(sessions, this.#pool.workerCount);
    // One copy per session, plus the verified bytes the agent keeps in memory while the model is loaded.
    const needed = bytes * (instances + 1);
    const available = this.#availableMemory();
    if (needed > available) {
      throw new AgentError(
        'RESOURCE_EXHAUSTED',
        `not enough memory to load model ${JSON.stringify(name)}: its weights take ${formatBytes(bytes)} × ${instances + 1} (${instances} session${instances > 1 ? 's' : ''} and the verified copy the agent keeps) and ${formatBytes(available)} is available; unload other models or free memory`,
      );
    }
    return accepted;
  }

  /**
   * One inference per instance before the model serves, so that its first request does not pay for ONNX
   * Runtime's first-run set-up. The inputs are placeholders (zeros of each declared shape, -1 taken as 1), and
   * made-up inputs cannot prove a model wrong: a model may need real values or sizes (Silero VAD takes only its
   * own sample rates and enough samples to pad). So a run that fails is a warning and the model loads; running
   * out of memory still refuses the load (real inputs are no smaller than placeholders). When the run does
   * complete, its outputs must have the manifest's data types and ranks.
   */
  async #warmUp(key: string, name: string, opened: OpenedModelPackage): Promise<void> {
    let results: RunResult[];
    try {
      results = await this.#pool.runOnEveryInstance(key, warmUpInputs(opened.manifest.inputs));
    } catch (error) {
      if (error instanceof InferenceError && error.kind === 'out-of-memory') {
        throw new AgentError(
          'RESOURCE_EXHAUSTED',
          `not enough memory to run model ${JSON.stringify(name)}: ${error.message}`,
          { cause: error },
        );
      }
      if (error instanceof InferenceError && error.kind === 'run-failed') {
        this.#logger?.warn(
          `model ${JSON.stringify(name)} loads without a warm-up: its warm-up inference with placeholder inputs (zeros of the declared input shapes, -1 taken as 1) failed: ${error.message}. Placeholders cannot show that the model is wrong; its first request will set ONNX Runtime up instead`,
          { model: name, reason: error.message },
        );
        return;
      }
      throw error;
    }
    const refuse = (problem: string): never => {
      throw new AgentError(
        'FAILED_PRECONDITION',
        `model ${JSON.stringify(name)}'s warm-up output does not match its manifest (${problem}); expected a package whose manifest was generated from this model`,
      );
    };
    results.forEach((result, instance) => {
      result.outputs.forEach((output, i) => {
        const declared =
          opened.manifest.outputs.find((o) => o.name === output.name) ?? opened.manifest.outputs[i];
        if (!declared)
          return refuse(`it returned an output ${JSON.stringify(output.name)} the manifest does not declare`);
        if (declared.dataType !== output.dataType) {
          refuse(
            `output ${JSON.stringify(declared.name)} is ${output.dataType} where the manifest declares ${declared.dataType}`,
          );
        }
        if (declared.shape.length !== output.shape.length) {
          refuse(
            `output ${JSON.stringify(declared.name)} has rank ${output.shape.length} (shape [${output.shape.join(', ')}]) where the manifest declares rank ${declared.shape.length} ([${declared.shape.join(', ')}])`,
          );
        }
        // A size may follow the placeholder inputs (even a dimension the manifest fixes can depend on input sizes
        // or values), so one that differs is worth a warning only.
        const sizes = shapeMismatch(declared.shape, output.shape);
        if (sizes && instance === 0) {
          this.#logger?.warn(
            `model ${JSON.stringify(name)}: with placeholder inputs, its warm-up output ${JSON.stringify(declared.name)} has a size the manifest does not declare: ${sizes}`,
            { model: name },
          );
        }
      });
    });
  }
}

function describeSigner(signer: SignerDescription): string {
  return signer.method === 'certificate'
    ? `${signer.subject} (issued by ${signer.issuer})`
    : `${signer.keyType} key sha256:${signer.fingerprint}`;
}

/** The sessions ONNX Runtime created must have the manifest's inputs and outputs (names, types, fixed sizes). */
function checkSessionAgainstManifest(
  name: string,
  shownDir: string,
  opened: OpenedModelPackage,
  inputs: readonly WireTensorInfo[],
  outputs: readonly WireTensorInfo[],
): void {
  const compare = (
    kind: 'input' | 'output',
    declared: readonly TensorMetadata[],
    actual: readonly WireTensorInfo[],
  ) => {
    const fail = (problem: string): never => {
      throw new AgentError(
        'FAILED_PRECONDITION',
        `model package ${shownDir} for ${JSON.stringify(name)}: its manifest does not match the model (${problem}); expected a manifest generated from this model`,
      );
    };
    if (declared.length !== actual.length) {
      fail(`the manifest declares ${declared.length} ${kind}s, the model has ${actual.length}`);
    }
    declared.forEach((d, i) => {
      const a = actual[i]!;
      if (a.name !== d.name)
        fail(
          `${kind} ${i + 1} is ${JSON.stringify(a.name)} in the model, ${JSON.stringify(d.name)} in the manifest`,
        );
      const type = dataTypeFromOrt(a.type);
      if (type !== d.dataType)
        fail(`${kind} ${JSON.stringify(d.name)} is ${a.type} in the model, ${d.dataType} in the manifest`);
      const fixed = a.shape.map((dim) => (typeof dim === 'number' && dim >= 0 ? dim : -1));
      const compatible =
        fixed.length === d.shape.length &&
        fixed.every((dim, k) => dim === -1 || d.shape[k] === -1 || d.shape[k] === dim);
      if (!compatible) {
        fail(
          `${kind} ${JSON.stringify(d.name)} has shape [${a.shape.join(', ')}] in the model, [${d.shape.join(', ')}] in the manifest`,
        );
      }
    });
  };
  compare('input', opened.manifest.inputs, inputs);
  compare('output', opened.manifest.outputs, outputs);
}
