import { stat } from 'node:fs/promises';
import { freemem } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  MODEL_NAME_PATTERN,
  PackageInvalidError,
  PackageNotFoundError,
  PackageVerificationError,
  UnsupportedFileError,
  dataTypeFromOrt,
  openModelPackage,
  readPackageModel,
  shapeMismatch,
  type DataTypeName,
  type OpenedModelPackage,
  type SignerDescription,
  type TensorMetadata,
  type TrustPolicy,
} from '@edgefleet/core';
import {
  InferenceError,
  type InferencePool,
  type PoolTensor,
  type RunResult,
  type WireTensorInfo,
} from '../inference/index.js';
import type { AgentMetrics } from '../metrics/index.js';
import { AgentError, type AgentErrorCode } from './agent-error.js';
import { matchPredictInputs, warmUpInputs, type PredictTensor } from './predict-inputs.js';
import { tensorNameBytes } from './tensor-names.js';

/** Longest model name we take; SageMaker's own are at most 63 characters. */
const MAX_MODEL_NAME_LENGTH = 256;
const MAX_URL_LENGTH = 4096;

export interface LoadRequest {
  /** The extracted package folder: absolute, relative to the agent's working directory, or a file:// URL. */
  url: string;
  /** The name (SageMaker "handle") the model is served under. */
  name: string;
}

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
}

/** One output tensor of a prediction. */
export interface PredictOutput {
  /** The model's output name, as bytes (what adapters put in TensorMetadata.name). */
  name: Buffer;
  dataType: DataTypeName;
  /** The tensor's real shape (no -1). */
  shape: number[];
  /** Little-endian, row-major bytes. */
  data: Uint8Array;
}

export interface PredictResult {
  /** In the model's declared output order. */
  outputs: PredictOutput[];
  model: { name: string; version: string };
  timings: { requestMs: number; queueMs: number; computeMs: number };
}

export interface PredictOptions {
  /**
   * The caller gives up the input buffers: tensors whose data fills its whole ArrayBuffer go to the worker
   * without a copy and are detached afterwards. Leave unset when the bytes belong to someone else (a gRPC
   * message, a pooled Buffer); they are then copied once.
   */
  transferInputs?: boolean;
}

/** A successful prediction, as observers see it (automatic capture, activity counters). */
export interface PredictEvent {
  model: string;
  version: string;
  /** In the model's input order, named as the model names them. Belong to the caller: copy what you keep. */
  inputs: readonly PoolTensor[];
  outputs: readonly PredictOutput[];
  /** Epoch milliseconds when the request arrived. */
  at: number;
}

/**
 * Told of what happens to models: loads and unloads (e.g. to restore them after a restart) and predictions
 * (`onPredict` runs as a request starts and returns a listener for it, or undefined). Every method is optional;
 * errors they throw are ignored.
 */
export interface RegistryObserver {
  onPredict?(model: string): PredictListener | undefined;
  onLoaded?(model: ModelDescription): void;
  onUnloaded?(name: string): void;
}

/** An observer of predictions (automatic capture, activity counters). */
export type PredictObserver = RegistryObserver;

export interface PredictListener {
  /** The listener reads the inputs: they are then copied to the worker rather than transferred (detached). */
  readonly readsInputs: boolean;
  /** After a successful run, synchronously. Errors it throws are ignored. */
  predicted(event: PredictEvent): void;
}

export interface RegistryLogger {
  warn(message: string, details?: Record<string, unknown>): void;
  info?(message: string, details?: Record<string, unknown>): void;
}

export interface ModelRegistryOptions {
  pool: InferencePool;
  /** Roots/keys package signatures must verify against; null = signatures are not checked (a warning per load). */
  trust: TrustPolicy | null;
  /** With a trust policy: refuse packages that do not verify (default true); false loads them with a warning. */
  requireSignatures?: boolean;
  /** Relative load urls are resolved against this (the agent's working directory). */
  cwd: string;
  /** Sessions per model, on distinct workers (capped at the worker count). Default 1. */
  instancesPerModel?: number;
  /** How long unload waits for in-flight predictions before failing those still queued. Default 30 s. */
  unloadTimeoutMs?: number;
  metrics?: AgentMetrics;
  logger?: RegistryLogger;
  /** Bytes of memory available for new sessions. Default: process.availableMemory() (cgroup-aware). */
  availableMemory?: () => number;
}

interface ModelRecord {
  state: 'loading' | 'ready' | 'unloading';
  /** Unique per load, so a reload of the same name never meets the old sessions. */
  key: string;
  description?: ModelDescription;
  inflight: number;
  drained?: () => void;
}

/**
 * The agent's models: load, unload, list, describe, predict. Every front door (gRPC, REST, CLI) is a thin
 * adapter over this class; all behaviour, checks and error messages live here. Safe under any mix of
 * concurrent calls: a name is reserved synchronously when its load starts (a second load of it gets
 * ALREADY_EXISTS); a failed load leaves nothing behind; unload stops admitting predictions at once and waits,
 * bounded, for those in flight.
 */
export class ModelRegistry {
  readonly #pool: InferencePool;
  readonly #trust: TrustPolicy | null;
  readonly #requireSignatures: boolean;
  readonly #cwd: string;
  readonly #instances: number;
  readonly #unloadTimeoutMs: number;
  readonly #metrics: AgentMetrics | undefined;
  readonly #logger: RegistryLogger | undefined;
  readonly #availableMemory: () => number;
  readonly #models = new Map<string, ModelRecord>();
  readonly #observers = new Set<RegistryObserver>();
  #generation = 0;
  #closed = false;

  constructor(options: ModelRegistryOptions) {
    this.#pool = options.pool;
    this.#trust = options.trust;
    this.#requireSignatures = options.requireSignatures ?? true;
    this.#cwd = options.cwd;
    this.#instances = Math.max(1, options.instancesPerModel ?? 1);
    this.#unloadTimeoutMs = options.unloadTimeoutMs ?? 30_000;
    this.#metrics = options.metrics;
    this.#logger = options.logger;
    this.#availableMemory =
      options.availableMemory ??
      (() => (typeof process.availableMemory === 'function' ? process.availableMemory() : freemem()));
  }

  /**
   * Loads the package at `url` under `name`: opens (and, with a trust policy, verifies) the package, creates
   * the sessions, and runs a warm-up inference on each (see #warmUp: one that fails with its placeholder inputs
   * is a warning). Errors: INVALID_ARGUMENT (name or url malformed), ALREADY_EXISTS, NOT_FOUND (no package
   * there), FAILED_PRECONDITION (bad manifest, signature not valid, a model ONNX Runtime refuses to create a
   * session from, or whose warm-up outputs have other data types or ranks than its manifest declares),
   * RESOURCE_EXHAUSTED (not enough memory), UNAVAILABLE (shutting down), INTERNAL.
   */
  async load(request: LoadRequest): Promise<ModelDescription> {
    const began = performance.now();
    const name = request.name;
    checkModelName(name);
    const dir = this.#packageDir(request.url);
    if (this.#closed)
      throw new AgentError('UNAVAILABLE', 'the agent is shutting down; no models can be loaded');
    const existing = this.#models.get(name);
    if (existing) {
      throw new AgentError(
        'ALREADY_EXISTS',
        existing.state === 'loading'
          ? `a model named ${JSON.stringify(name)} is already being loaded; unload it first to load another under that name`
          : `a model named ${JSON.stringify(name)} is already loaded (from ${existing.description?.url ?? 'elsewhere'}); unload it first, or load under another name`,
      );
    }
    const record: ModelRecord = { state: 'loading', key: `${name}#${++this.#generation}`, inflight: 0 };
    this.#models.set(name, record);
    let sessionsCreated = false;
    try {
      const { opened, signature } = await this.#openPackage(dir);
      await this.#checkMemory(opened, name);
      // ONNX Runtime gets the bytes that were verified, never the path: a file swapped after verification is
      // refused here rather than run.
      const bytes = await readPackageModel(opened).catch((error: unknown) => {
        throw packageFailure(error, opened.dir);
      });
      const info = await this.#pool.loadModel(record.key, bytes, this.#instances).catch((error: unknown) => {
        throw loadFailure(error, name, opened.dir);
      });
      sessionsCreated = true;
      checkSessionAgainstManifest(name, opened, info.inputs, info.outputs);
      await this.#warmUp(record.key, name, opened);
      if (this.#closed)
        throw new AgentError('UNAVAILABLE', 'the agent is shutting down; the load was abandoned');
      record.description = {
        name,
        url: request.url,
        path: opened.dir,
        packageName: opened.manifest.name,
        version: opened.manifest.version,
        inputs: opened.manifest.inputs,
        outputs: opened.manifest.outputs,
        loadedAt: new Date(),
        instances: info.workers.length,
        signature,
        requests: { succeeded: 0, failed: 0 },
      };
      record.state = 'ready';
      this.#metrics?.observeLoad(name, performance.now() - began);
      this.#metrics?.setModelsLoaded(this.list().length);
      this.#logger?.info?.(`loaded model ${name}`, {
        url: request.url,
        path: opened.dir,
        version: opened.manifest.version,
      });
      this.#notify((observer) => observer.onLoaded?.(snapshot(record.description!)));
      return { ...record.description };
    } catch (error) {
      if (this.#models.get(name) === record) this.#models.delete(name);
      if (sessionsCreated) await this.#pool.unloadModel(record.key).catch(() => {});
      const failure = asAgentError(error, `loading model ${JSON.stringify(name)}`);
      this.#metrics?.observeLoad(name, performance.now() - began, failure.code);
      throw failure;
    }
  }

  /**
   * Unloads a model: predictions for it are refused (NOT_FOUND) from now on; those in flight are waited for,
   * up to the unload timeout, after which those still queued fail. NOT_FOUND when no such model is loaded.
   */
  async unload(name: string): Promise<void> {
    const record = this.#ready(name);
    this.#models.delete(name);
    record.state = 'unloading';
    if (record.inflight > 0) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        new Promise<void>((resolve) => (record.drained = resolve)),
        new Promise<void>((resolve) => (timer = setTimeout(resolve, this.#unloadTimeoutMs))),
      ]);
      clearTimeout(timer);
    }
    await this.#pool.unloadModel(record.key);
    this.#metrics?.setModelsLoaded(this.list().length);
    this.#logger?.info?.(`unloaded model ${name}`);
    if (!this.#closed) this.#notify((observer) => observer.onUnloaded?.(name));
  }

  /** Loaded models, in the order they were loaded (models still loading are not listed). */
  list(): ModelDescription[] {
    const models: ModelDescription[] = [];
    for (const record of this.#models.values()) {
      if (record.state === 'ready' && record.description) models.push(snapshot(record.description));
    }
    return models;
  }

  /** NOT_FOUND when no such model is loaded. */
  describe(name: string): ModelDescription {
    return snapshot(this.#ready(name).description!);
  }

  has(name: string): boolean {
    return this.#models.get(name)?.state === 'ready';
  }

  /** Adds an observer of loads, unloads and successful predictions; returns the function that removes it. */
  observe(observer: RegistryObserver): () => void {
    this.#observers.add(observer);
    return () => this.#observers.delete(observer);
  }

  /**
   * Runs the model. Errors: NOT_FOUND (no such model, or it was unloaded before the request ran),
   * INVALID_ARGUMENT (tensor count, type, shape or byte length does not fit; see matchPredictInputs),
   * RESOURCE_EXHAUSTED (too many requests waiting, or out of memory), UNAVAILABLE (shutting down),
   * INTERNAL (ONNX Runtime failed, or the worker running it stopped; the next request works).
   */
  async predict(
    name: string,
    tensors: readonly PredictTensor[],
    options: PredictOptions = {},
  ): Promise<PredictResult> {
    const began = performance.now();
    const record = this.#ready(name);
    const description = record.description!;
    let inputs: PoolTensor[];
    try {
      if (!Array.isArray(tensors))
        throw new AgentError('INVALID_ARGUMENT', 'expected a list of input tensors');
      inputs = matchPredictInputs(name, description.inputs, tensors);
    } catch (error) {
      this.#countRequest(record, name, began, { errorCode: (error as AgentError).code });
      throw error;
    }
    const listeners = this.#listeners(name);
    record.inflight++;
    try {
      const result = await this.#pool.run(record.key, inputs, {
        transferInputs: options.transferInputs === true && !listeners.some((l) => l.readsInputs),
      });
      const outputs = orderOutputs(description.outputs, result.outputs);
      const requestMs = performance.now() - began;
      this.#countRequest(record, name, began, { queueMs: result.queueMs, computeMs: result.computeMs });
      if (listeners.length > 0) {
        const event = {
          model: name,
          version: description.version,
          inputs,
          outputs,
          at: Date.now() - requestMs,
        };
        for (const listener of listeners) {
          try {
            listener.predicted(event);
          } catch {
            // An observer never fails a prediction.
          }
        }
      }
      return {
        outputs,
        model: { name, version: description.version },
        timings: { requestMs, queueMs: result.queueMs, computeMs: result.computeMs },
      };
    } catch (error) {
      const failure = predictFailure(error, name);
      this.#countRequest(record, name, began, { errorCode: failure.code });
      throw failure;
    } finally {
      record.inflight--;
      if (record.inflight === 0) record.drained?.();
    }
  }

  /** Refuses new loads, unloads every model (each bounded by the unload timeout). The pool is the caller's. */
  async close(): Promise<void> {
    this.#closed = true;
    const names = [...this.#models].filter(([, r]) => r.state === 'ready').map(([name]) => name);
    await Promise.all(names.map((name) => this.unload(name).catch(() => {})));
  }

  // -------------------------------------------------------------------------------------------------------------

  #notify(tell: (observer: RegistryObserver) => void): void {
    for (const observer of this.#observers) {
      try {
        tell(observer);
      } catch {
        // An observer never fails a load or an unload.
      }
    }
  }

  #listeners(name: string): PredictListener[] {
    const listeners: PredictListener[] = [];
    for (const observer of this.#observers) {
      try {
        const listener = observer.onPredict?.(name);
        if (listener) listeners.push(listener);
      } catch {
        // An observer never fails a prediction.
      }
    }
    return listeners;
  }

  #ready(name: string): ModelRecord {
    const record = typeof name === 'string' ? this.#models.get(name) : undefined;
    if (!record || record.state !== 'ready') {
      const loaded = this.list().map((m) => m.name);
      const shown =
        loaded.length === 0 ? 'none' : loaded.slice(0, 10).join(', ') + (loaded.length > 10 ? ', …' : '');
      throw new AgentError(
        'NOT_FOUND',
        record?.state === 'loading'
          ? `model ${JSON.stringify(name)} is still loading; retry once its load has returned`
          : `no model named ${JSON.stringify(name)} is loaded (loaded models: ${shown})`,
      );
    }
    return record;
  }

  #countRequest(
    record: ModelRecord,
    name: string,
    began: number,
    outcome: { errorCode?: AgentErrorCode; queueMs?: number; computeMs?: number },
  ): void {
    const counts = record.description!.requests;
    if (outcome.errorCode === undefined) counts.succeeded++;
    else counts.failed++;
    this.#metrics?.observeRequest({ model: name, requestMs: performance.now() - began, ...outcome });
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

  async #openPackage(dir: string): Promise<{ opened: OpenedModelPackage; signature: SignatureStatus }> {
    if (!this.#trust) {
      const opened = await openModelPackage(dir, { trust: null }).catch((error: unknown) => {
        throw packageFailure(error, dir);
      });
      const reason = 'the agent has no trust policy (sagemaker_edge_core_root_certs_path is not set)';
      this.#logger?.warn(`loading model package ${opened.dir} without checking its signature: ${reason}`);
      return { opened, signature: { verified: false, reason } };
    }
    try {
      const opened = await openModelPackage(dir, { trust: this.#trust });
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
        const opened = await openModelPackage(dir, { trust: null }).catch((e: unknown) => {
          throw packageFailure(e, dir);
        });
        this.#logger?.warn(
          `loading model package ${opened.dir} although its signature did not verify: ${error.message}`,
          {
            reason: error.reason,
          },
        );
        return { opened, signature: { verified: false, reason: `${error.reason}: ${error.message}` } };
      }
      throw packageFailure(error, dir);
    }
  }

  /** A session needs at least its weights in memory; refuse early rather than let ONNX Runtime fail midway. */
  async #checkMemory(opened: OpenedModelPackage, name: string): Promise<void> {
    let bytes = (await stat(opened.modelPath)).size;
    for (const file of opened.manifest.model.externalData) {
      bytes += (await stat(join(dirname(opened.modelPath), file)).catch(() => ({ size: 0 }))).size;
    }
    const instances = Math.min(this.#instances, this.#pool.workerCount);
    // One copy per session, plus the verified bytes the agent keeps in memory while the model is loaded.
    const needed = bytes * (instances + 1);
    const available = this.#availableMemory();
    if (needed > available) {
      throw new AgentError(
        'RESOURCE_EXHAUSTED',
        `not enough memory to load model ${JSON.stringify(name)}: its weights take ${formatBytes(bytes)} × ${instances + 1} (${instances} session${instances > 1 ? 's' : ''} and the verified copy the agent keeps) and ${formatBytes(available)} is available; unload other models or free memory`,
      );
    }
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

/** The model name rule (spec section 3.2). */
export function checkModelName(name: unknown): asserts name is string {
  if (typeof name !== 'string' || name.length === 0) {
    throw new AgentError(
      'INVALID_ARGUMENT',
      'the model name is empty; expected letters and digits, optionally joined by hyphens',
    );
  }
  if (name.length > MAX_MODEL_NAME_LENGTH || !MODEL_NAME_PATTERN.test(name)) {
    throw new AgentError(
      'INVALID_ARGUMENT',
      `model name ${JSON.stringify(name.length > 80 ? `${name.slice(0, 77)}...` : name)} is not valid; expected letters and digits, optionally joined by hyphens (pattern ^[a-zA-Z0-9](-*[a-zA-Z0-9])*$, no "_" or ".", at most ${MAX_MODEL_NAME_LENGTH} characters)`,
    );
  }
}

function snapshot(description: ModelDescription): ModelDescription {
  return { ...description, requests: { ...description.requests } };
}

function describeSigner(signer: SignerDescription): string {
  return signer.method === 'certificate'
    ? `${signer.subject} (issued by ${signer.issuer})`
    : `${signer.keyType} key sha256:${signer.fingerprint}`;
}

/** Puts the pool's outputs in the manifest's order, names as bytes. */
function orderOutputs(declared: readonly TensorMetadata[], outputs: readonly PoolTensor[]): PredictOutput[] {
  const byName = new Map(outputs.map((o) => [o.name, o]));
  const ordered = declared.map((d) => byName.get(d.name)).filter((o): o is PoolTensor => o !== undefined);
  const result = ordered.length === outputs.length ? ordered : outputs;
  return result.map((o) => ({
    name: tensorNameBytes(o.name),
    dataType: o.dataType,
    shape: o.shape,
    data: o.data,
  }));
}

/** The sessions ONNX Runtime created must have the manifest's inputs and outputs (names, types, fixed sizes). */
function checkSessionAgainstManifest(
  name: string,
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
        `model package ${opened.dir} for ${JSON.stringify(name)}: its manifest does not match the model (${problem}); expected a manifest generated from this model`,
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

function packageFailure(error: unknown, dir: string): AgentError {
  if (error instanceof AgentError) return error;
  if (error instanceof PackageNotFoundError) {
    return new AgentError(
      'NOT_FOUND',
      `${error.message}; expected the folder of an extracted model package`,
      { cause: error },
    );
  }
  if (error instanceof PackageVerificationError) {
    return new AgentError(
      'FAILED_PRECONDITION',
      `model package ${dir} failed signature verification (${error.reason}): ${error.message}`,
      { cause: error },
    );
  }
  if (error instanceof PackageInvalidError || error instanceof UnsupportedFileError) {
    return new AgentError('FAILED_PRECONDITION', error.message, { cause: error });
  }
  return asAgentError(error, `opening model package ${dir}`);
}

function loadFailure(error: unknown, name: string, dir: string): AgentError {
  if (error instanceof InferenceError) {
    switch (error.kind) {
      case 'model-rejected':
        return new AgentError(
          'FAILED_PRECONDITION',
          `ONNX Runtime cannot load the model in package ${dir} (for ${JSON.stringify(name)}): ${error.message}`,
          { cause: error },
        );
      case 'out-of-memory':
        return new AgentError(
          'RESOURCE_EXHAUSTED',
          `not enough memory to load model ${JSON.stringify(name)}: ${error.message}`,
          {
            cause: error,
          },
        );
      case 'closed':
        return new AgentError('UNAVAILABLE', 'the agent is shutting down; the load was abandoned', {
          cause: error,
        });
      default:
        return new AgentError('INTERNAL', `loading model ${JSON.stringify(name)} failed: ${error.message}`, {
          cause: error,
        });
    }
  }
  return asAgentError(error, `loading model ${JSON.stringify(name)}`);
}

function predictFailure(error: unknown, name: string): AgentError {
  if (error instanceof AgentError) return error;
  if (error instanceof InferenceError) {
    const code: Record<typeof error.kind, AgentErrorCode> = {
      'unknown-model': 'NOT_FOUND',
      unloaded: 'NOT_FOUND',
      'queue-full': 'RESOURCE_EXHAUSTED',
      'out-of-memory': 'RESOURCE_EXHAUSTED',
      closed: 'UNAVAILABLE',
      'worker-died': 'INTERNAL',
      'run-failed': 'INTERNAL',
      'no-instance': 'INTERNAL',
      'model-rejected': 'INTERNAL',
    };
    const prefix =
      error.kind === 'run-failed'
        ? `ONNX Runtime failed to run model ${JSON.stringify(name)}: `
        : error.kind === 'unloaded' || error.kind === 'unknown-model'
          ? `model ${JSON.stringify(name)} was unloaded before this request ran: `
          : '';
    return new AgentError(code[error.kind], `${prefix}${error.message}`, { cause: error });
  }
  return asAgentError(error, `predicting with model ${JSON.stringify(name)}`);
}

function asAgentError(error: unknown, doing: string): AgentError {
  if (error instanceof AgentError) return error;
  const message = error instanceof Error ? error.message : String(error);
  return new AgentError('INTERNAL', `unexpected failure ${doing}: ${message}`, { cause: error });
}

function formatBytes(bytes: number): string {
  if (bytes >= 1024 ** 3) return `${(bytes / 1024 ** 3).toFixed(1)} GiB`;
  if (bytes >= 1024 ** 2) return `${(bytes / 1024 ** 2).toFixed(1)} MiB`;
  if (bytes >= 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${bytes} bytes`;
}
