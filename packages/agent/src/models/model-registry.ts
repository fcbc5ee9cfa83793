import {
  MAX_MODEL_NAME_LENGTH,
  MODEL_NAME_PATTERN,
  PackageNotFoundError,
  notAFolderDetail,
  type DataTypeName,
  type TensorMetadata,
} from '@edgefleet/core';
import type { InferencePool, OutputSegment, PoolTensor } from '../inference/index.js';
import type { AgentMetrics } from '../metrics/index.js';
import { AgentError, type AgentErrorCode } from './agent-error.js';
import { asAgentError, packageFailure, predictFailure } from './model-errors.js';
import { ModelLoader, type LoadHooks, type ModelLoaderOptions } from './model-loader.js';
import {
  CallerCheckLimitError,
  DescriptorPathsUnavailableError,
  MAX_CHECKED_DEPTH,
  MAX_CHECKED_ENTRIES,
  agentSideFailure,
  callerCanReadFolder,
  openFolderForCaller,
  type CallerFolder,
  type CallerIdentity,
  type OpenedFolderDeps,
} from './caller-access.js';
import { ModelVersion } from './model-version.js';
import type { ModelDescription, RegistryLogger, StagedVersionDescription } from './model-description.js';
import { matchPredictInputs, type PredictTensor } from './predict-inputs.js';
import { declaredNameBytes, tensorNameBytes } from './tensor-names.js';

export interface LoadRequest {
  /** The extracted package folder: absolute, relative to the agent's working directory, or a file:// URL. */
  url: string;
  /** The name (SageMaker "handle") the model is served under. */
  name: string;
  /**
   * Who asked, where the agent knows (SO_PEERCRED on its Unix socket): the package is then loaded only from a
   * folder the caller could read itself; any other answers one NOT_FOUND that says nothing of what is there.
   * Absent or null: the agent's own loads (deployments, preloads), or a caller the agent cannot tell.
   */
  caller?: CallerIdentity | null;
}

/** One output tensor of a prediction. */
export interface PredictOutput {
  /** The model's output name, as bytes (what adapters put in TensorMetadata.name). */
  name: Buffer;
  dataType: DataTypeName;
  /** The tensor's real shape (no -1). */
  shape: number[];
  /** Little-endian, row-major bytes; empty when `writtenToSegment`. */
  data: Uint8Array;
  /** Written by the worker into the place PredictOptions.outputSegments gave it; `data` is then empty. */
  writtenToSegment?: boolean;
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
  /**
   * An ArrayBuffer the caller gives up in full (its gRPC request message): input tensors that are views into it
   * go to the worker inside it, transferred once without a copy. The caller must treat it as gone (it is detached
   * when the run goes to a worker; an inline run, or an observer reading the inputs, leaves it as it is).
   */
  ownedBuffer?: ArrayBuffer;
  /**
   * Outputs (by model output name) to write straight into System V shared memory, where the caller checked the
   * requester may write. Only a best effort: an output not written there (the model ran inline, or an observer
   * reads the outputs) comes back with its bytes, and the caller writes it.
   */
  outputSegments?: OutputSegment[];
}

/** A successful prediction, as observers see it (automatic capture, activity counters). */
export interface PredictEvent {
  model: string;
  version: string;
  /**
   * In the model's input order, named as the model names them. Belong to the caller: copy what you keep, except
   * the bytes that lie in ownedBuffer.
   */
  inputs: readonly PoolTensor[];
  /**
   * The request's own memory (PredictOptions.ownedBuffer, kept whole: not given up to a worker, as a listener reads
   * the inputs), which nothing writes again: inputs that are views into it may be kept as views.
   */
  ownedBuffer?: ArrayBuffer;
  /**
   * Belong to this request alone: buffers made for it (a worker's, transferred; or ONNX Runtime's own on the
   * event loop, fresh for each run, see outputToWire), each exactly its output's bytes, which nothing writes
   * again: they may be kept as views.
   */
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
  /**
   * `loadedFor`: the caller whose rights the load was checked against (see LoadRequest.caller); absent for a load
   * with the agent's own rights (its own loads, root's, its user's).
   */
  onLoaded?(model: ModelDescription, loadedFor?: CallerIdentity): void;
  onUnloaded?(name: string): void;
}

/** An observer of predictions (automatic capture, activity counters). */
export type PredictObserver = RegistryObserver;

export interface PredictListener {
  /** The listener reads the inputs: they are then copied to the worker rather than transferred (detached). */
  readonly readsInputs: boolean;
  /** The listener reads the outputs' bytes: none is then written straight into shared memory by a worker. */
  readonly readsOutputs: boolean;
  /** After a successful run, synchronously. Errors it throws are ignored. */
  predicted(event: PredictEvent): void;
}

export interface ModelRegistryOptions extends ModelLoaderOptions {
  /** How long unload (and promote, for the version it replaces) waits for in-flight predictions before failing those still queued. Default 30 s. */
  unloadTimeoutMs?: number;
  metrics?: AgentMetrics;
  /** The agent's own uid: a caller with it may load any folder, as root may. Default: this process's. */
  agentUid?: number;
  /** How a caller's access to a package folder is read and the folder opened (tests); default: the file system. */
  callerAccess?: OpenedFolderDeps;
}

/** A name's versions: the one serving (or, before its first load completes, being loaded) and any staged. */
interface NameEntry {
  current: ModelVersion;
  staged?: ModelVersion;
  /** Settles when the staged version's load has finished, whichever way. */
  stagedLoad?: Promise<unknown>;
}

/**
 * The agent's models: load, unload, list, describe, predict, and stage/promote/abortStaged to replace a model
 * in place. Every front door (gRPC, REST, CLI) is a thin adapter over this class; all behaviour, checks and
 * error messages live here (loading itself in ModelLoader, each load's state in ModelVersion). Safe under any
 * mix of concurrent calls: a name is reserved synchronously when its load starts (a second load of it gets
 * ALREADY_EXISTS); a failed load leaves nothing behind; unload stops admitting predictions at once and waits,
 * bounded, for those in flight. A prediction runs entirely on the version serving when it started.
 */
/** Loads for a caller (checked against its rights) at once; more are refused RESOURCE_EXHAUSTED. */
export const MAX_CALLER_LOADS_AT_ONCE = 8;

export class ModelRegistry {
  readonly #pool: InferencePool;
  readonly #loader: ModelLoader;
  readonly #unloadTimeoutMs: number;
  readonly #metrics: AgentMetrics | undefined;
  readonly #logger: RegistryLogger | undefined;
  readonly #models = new Map<string, NameEntry>();
  readonly #observers = new Set<RegistryObserver>();
  /** Versions replaced by promote, still draining. */
  readonly #retiring = new Set<Promise<void>>();
  readonly #agentUid: number | undefined;
  readonly #callerAccess: OpenedFolderDeps | undefined;
  #generation = 0;
  #closed = false;
  /** Loads for a caller in progress (MAX_CALLER_LOADS_AT_ONCE). */
  #callerLoads = 0;

  constructor(options: ModelRegistryOptions) {
    this.#pool = options.pool;
    this.#loader = new ModelLoader(options);
    this.#unloadTimeoutMs = options.unloadTimeoutMs ?? 30_000;
    this.#metrics = options.metrics;
    this.#logger = options.logger;
    this.#agentUid = options.agentUid ?? process.getuid?.();
    this.#callerAccess = options.callerAccess;
  }

  /**
   * Loads the package at `url` under `name`: opens (and, with a trust policy, verifies) the package, creates
   * the sessions, and runs a warm-up inference on each (see ModelLoader: one that fails with its placeholder
   * inputs is a warning). Errors: INVALID_ARGUMENT (name or url malformed), ALREADY_EXISTS, NOT_FOUND (no
   * package there, or, for a request's `caller`, none the caller could read itself), FAILED_PRECONDITION (bad manifest, signature not valid, a model ONNX Runtime refuses to
   * create a session from, or whose warm-up outputs have other data types or ranks than its manifest declares;
   * for a caller, a folder too large to check), RESOURCE_EXHAUSTED (not enough memory, or for a caller's check
   * no descriptors left), UNAVAILABLE (shutting down, or an I/O error opening a caller's folder), INTERNAL.
   */
  async load(request: LoadRequest): Promise<ModelDescription> {
    const began = performance.now();
    const name = request.name;
    checkModelName(name);
    const dir = this.#loader.packageDir(request.url);
    // Cheap refusals first: a caller's check opens and walks its folder. #load asks again after the await.
    this.#refuseLoadUnder(name);
    const checked = this.#checksCaller(request);
    if (checked) {
      // Each holds descriptors (one per level of its folder during the check, then the folder until the load
      // ends) and file-system threads: many at once from one local user would starve the agent of both.
      if (this.#callerLoads >= MAX_CALLER_LOADS_AT_ONCE)
        throw new AgentError(
          'RESOURCE_EXHAUSTED',
          `${MAX_CALLER_LOADS_AT_ONCE} model loads for callers are already in progress; expected at most that many at once: try again when one has finished`,
        );
      this.#callerLoads++;
    }
    try {
      const callerFolder = await this.#openForCaller(dir, request);
      try {
        return await this.#load(name, dir, callerFolder, request, began);
      } finally {
        await callerFolder?.close();
      }
    } finally {
      if (checked) this.#callerLoads--;
    }
  }

  /** Whether a load is checked against its caller's rights (see #openForCaller). */
  #checksCaller(request: LoadRequest): boolean {
    const caller = request.caller;
    return caller !== undefined && caller !== null && caller.uid !== 0 && caller.uid !== this.#agentUid;
  }

  async #load(
    name: string,
    dir: string,
    callerFolder: CallerFolder | undefined,
    request: LoadRequest,
    began: number,
  ): Promise<ModelDescription> {
    this.#refuseLoadUnder(name);
    const version = new ModelVersion(this.#nextKey(name), request.url);
    const entry: NameEntry = { current: version };
    this.#models.set(name, entry);
    try {
      // For a caller, the folder its check passed on, held open: a name swapped since cannot change what loads.
      // Each file is checked again on the descriptor it is read from: one moved in after the check is refused.
      const source = callerFolder
        ? {
            dir: callerFolder.path,
            shownDir: dir,
            fileCheck: callerFolder.fileCheck,
            listing: callerFolder.listing,
          }
        : { dir };
      version.description = await this.#loader.load(version, { name, url: request.url, ...source }, () =>
        this.#closed ? shuttingDown() : undefined,
      );
      version.state = 'ready';
      this.#metrics?.observeLoad(name, performance.now() - began);
      this.#metrics?.setModelsLoaded(this.list().length);
      this.#logger?.info?.(`loaded model ${name}`, {
        event: 'model-loaded',
        model: name,
        url: request.url,
        path: version.description.path,
        version: version.description.version,
      });
      const loadedFor = callerFolder && request.caller ? request.caller : undefined;
      this.#notify((observer) => observer.onLoaded?.(snapshot(version.description!), loadedFor));
      return snapshot(version.description);
    } catch (error) {
      if (this.#models.get(name) === entry) this.#models.delete(name);
      const failure = asAgentError(error, `loading model ${JSON.stringify(name)}`);
      this.#metrics?.observeLoad(name, performance.now() - began, failure.code);
      throw failure;
    }
  }

  /**
   * Loads another version of a loaded model beside the one serving, from the package at `url`, with the same
   * checks as load. It takes no requests until promote(name). Resolves once it is ready to be promoted. Errors:
   * as load, and NOT_FOUND (no model of that name is loaded), ALREADY_EXISTS (a version is already staged),
   * FAILED_PRECONDITION (abortStaged or unload was called before the load completed). `hooks.beforeWarmUp` is
   * awaited once the sessions exist, before the warm-up (an error it throws fails the stage, as an AgentError).
   */
  async stage(name: string, url: string, hooks: LoadHooks = {}): Promise<StagedVersionDescription> {
    checkModelName(name);
    const dir = this.#loader.packageDir(url);
    if (this.#closed)
      throw new AgentError('UNAVAILABLE', 'the agent is shutting down; no models can be loaded');
    const entry = this.#ready(name);
    if (entry.staged) {
      throw new AgentError(
        'ALREADY_EXISTS',
        `a version of model ${JSON.stringify(name)} is already staged (from ${entry.staged.url}, ${entry.staged.state}); promote it or abort it first`,
      );
    }
    const version = new ModelVersion(this.#nextKey(name), url);
    entry.staged = version;
    const abandoned = (): AgentError | undefined =>
      this.#closed
        ? shuttingDown()
        : entry.staged !== version
          ? new AgentError(
              'FAILED_PRECONDITION',
              `the staged version of model ${JSON.stringify(name)} was aborted (or the model unloaded) before its load completed`,
            )
          : undefined;
    const loading = this.#loader.load(version, { name, url, dir }, abandoned, hooks);
    entry.stagedLoad = loading.catch(() => {});
    try {
      const description = await loading;
      const reason = abandoned(); // an abort may have come between the loader's last check and now
      if (reason) {
        version.state = 'unloaded';
        await this.#pool.unloadModel(version.key).catch(() => {});
        throw reason;
      }
      version.description = description;
      version.state = 'ready';
      this.#logger?.info?.(`staged model ${name}`, {
        event: 'model-staged',
        model: name,
        url,
        version: description.version,
        key: version.key,
      });
      return stagedDescription(name, version);
    } catch (error) {
      if (entry.staged === version) entry.staged = undefined;
      throw asAgentError(error, `staging model ${JSON.stringify(name)}`);
    }
  }

  /**
   * Makes the staged version the one serving `name`, at once: every prediction that starts after this call runs
   * on it, those in flight finish on the version they started on, which is then unloaded (waiting for them at
   * most the unload timeout). Resolves with the new version's description once the old one is unloaded. Errors:
   * NOT_FOUND (no such model), FAILED_PRECONDITION (nothing staged, or the staged version is still loading).
   */
  async promote(name: string): Promise<ModelDescription> {
    const entry = this.#ready(name);
    const staged = entry.staged;
    if (!staged) {
      throw new AgentError(
        'FAILED_PRECONDITION',
        `model ${JSON.stringify(name)} has no staged version to promote; stage one first`,
      );
    }
    if (staged.state !== 'ready') {
      throw new AgentError(
        'FAILED_PRECONDITION',
        `the staged version of model ${JSON.stringify(name)} is still loading (${staged.state}); promote it once stage has returned`,
      );
    }
    const previous = entry.current;
    entry.current = staged;
    delete entry.staged;
    delete entry.stagedLoad;
    const description = staged.description!;
    this.#logger?.info?.(`promoted model ${name}`, {
      event: 'model-promoted',
      model: name,
      url: staged.url,
      version: description.version,
      replaced: previous.description?.version,
    });
    this.#notify((observer) => observer.onLoaded?.(snapshot(description)));
    const retiring = this.#retire(previous);
    this.#retiring.add(retiring);
    await retiring.finally(() => this.#retiring.delete(retiring));
    return snapshot(description);
  }

  /**
   * Drops the staged version of `name`: a ready one is unloaded; one still loading stops at its next step (its
   * stage call fails) and this waits until it has released what it created. Errors: NOT_FOUND (no such model),
   * FAILED_PRECONDITION (nothing is staged).
   */
  async abortStaged(name: string): Promise<void> {
    const entry = this.#ready(name);
    const staged = entry.staged;
    if (!staged) {
      throw new AgentError(
        'FAILED_PRECONDITION',
        `model ${JSON.stringify(name)} has no staged version to abort`,
      );
    }
    const loading = entry.stagedLoad;
    delete entry.staged;
    delete entry.stagedLoad;
    await this.#discardStaged(staged, loading);
    this.#logger?.info?.(`aborted the staged version of model ${name}`, { url: staged.url });
  }

  /**
   * Unloads a model (and any version staged for it): predictions for it are refused (NOT_FOUND) from now on;
   * those in flight are waited for, up to the unload timeout, after which those still queued fail. NOT_FOUND
   * when no such model is loaded.
   */
  async unload(name: string): Promise<void> {
    const entry = this.#ready(name);
    this.#models.delete(name);
    const { current, staged, stagedLoad } = entry;
    delete entry.staged;
    delete entry.stagedLoad;
    await Promise.all([this.#retire(current), staged && this.#discardStaged(staged, stagedLoad)]);
    this.#metrics?.setModelsLoaded(this.list().length);
    this.#metrics?.modelUnloaded(name);
    this.#logger?.info?.(`unloaded model ${name}`, { event: 'model-unloaded', model: name });
    if (!this.#closed) this.#notify((observer) => observer.onUnloaded?.(name));
  }

  /** Loaded models, in the order they were loaded (models still loading are not listed). */
  list(): ModelDescription[] {
    const models: ModelDescription[] = [];
    for (const { current } of this.#models.values()) {
      if (current.state === 'ready' && current.description) models.push(snapshot(current.description));
    }
    return models;
  }

  /** The model serving `name`, and the version staged beside it if any. NOT_FOUND when no such model is loaded. */
  describe(name: string): ModelDescription {
    const entry = this.#ready(name);
    const description = snapshot(entry.current.description!);
    if (entry.staged) description.staged = stagedDescription(name, entry.staged);
    return description;
  }

  has(name: string): boolean {
    return this.#models.get(name)?.current.state === 'ready';
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
    const version = this.#ready(name).current;
    const description = version.description!;
    let inputs: PoolTensor[];
    try {
      if (!Array.isArray(tensors))
        throw new AgentError('INVALID_ARGUMENT', 'expected a list of input tensors');
      inputs = matchPredictInputs(name, description.inputs, tensors);
    } catch (error) {
      this.#countRequest(description, name, began, { errorCode: (error as AgentError).code });
      throw error;
    }
    const listeners = this.#listeners(name);
    version.enter();
    try {
      const outputSegments =
        options.outputSegments && !listeners.some((l) => l.readsOutputs) ? options.outputSegments : undefined;
      // An observer that reads the inputs after the run needs them where they are: nothing is given up then.
      const giveUp = !listeners.some((l) => l.readsInputs);
      const result = await this.#pool.run(version.key, inputs, {
        transferInputs: options.transferInputs === true && giveUp,
        ...(giveUp && options.ownedBuffer && { ownedBuffer: options.ownedBuffer }),
        ...(outputSegments && { outputSegments }),
      });
      const outputs = orderOutputs(description.outputs, result.outputs);
      const requestMs = performance.now() - began;
      this.#countRequest(description, name, began, { queueMs: result.queueMs, computeMs: result.computeMs });
      if (listeners.length > 0) {
        const event: PredictEvent = {
          model: name,
          version: description.version,
          inputs,
          ...(!giveUp && options.ownedBuffer && { ownedBuffer: options.ownedBuffer }),
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
      this.#countRequest(description, name, began, { errorCode: failure.code });
      throw failure;
    } finally {
      version.leave();
    }
  }

  /** Refuses new loads, unloads every model (each bounded by the unload timeout). The pool is the caller's. */
  async close(): Promise<void> {
    this.#closed = true;
    const names = [...this.#models].filter(([, e]) => e.current.state === 'ready').map(([name]) => name);
    await Promise.all([
      ...names.map((name) => this.unload(name).catch(() => {})),
      ...[...this.#retiring].map((retiring) => retiring.catch(() => {})),
    ]);
  }

  // -------------------------------------------------------------------------------------------------------------

  /** UNAVAILABLE while shutting down, ALREADY_EXISTS where `name` is loaded or being loaded. */
  #refuseLoadUnder(name: string): void {
    if (this.#closed)
      throw new AgentError('UNAVAILABLE', 'the agent is shutting down; no models can be loaded');
    const existing = this.#models.get(name);
    if (existing) {
      throw new AgentError(
        'ALREADY_EXISTS',
        existing.current.state === 'ready'
          ? `a model named ${JSON.stringify(name)} is already loaded (from ${existing.current.url}); unload it first, or load under another name`
          : `a model named ${JSON.stringify(name)} is already being loaded; unload it first to load another under that name`,
      );
    }
  }

  /**
   * The agent opens packages with its own rights: for a caller it knows, only a folder the caller could read
   * itself, and one error for every other, so that the agent's distinct errors ("is a file", "does not exist",
   * "has no manifest.json") tell the caller nothing of folders only the agent may look into. A check by name
   * refuses first, before anything is opened; then the folder is opened once and checked on that descriptor
   * (openFolderForCaller), and the load reads through it, so a name swapped after either check changes nothing.
   * "Does not exist" and "is a file" are said only where openFolderForCaller's walk, which follows no link, found
   * so in a folder the caller may search. Undefined: no caller to check for (the agent's own loads, root, the
   * agent's user): the load opens `dir` by name.
   */
  async #openForCaller(dir: string, request: LoadRequest): Promise<CallerFolder | undefined> {
    const caller = request.caller;
    if (!caller || !this.#checksCaller(request)) return undefined;
    const deps = this.#callerAccess;
    const refused = () =>
      new AgentError(
        'NOT_FOUND',
        `no model package at ${request.url} that you can read; expected the folder of an extracted model package that your user (uid ${caller.uid}) may read and search, on a path it may search`,
      );
    if (!(await callerCanReadFolder(dir, caller, deps))) throw refused();
    let found;
    try {
      found = await openFolderForCaller(dir, caller, deps);
    } catch (error) {
      if (error instanceof DescriptorPathsUnavailableError)
        throw new AgentError(
          'FAILED_PRECONDITION',
          `${error.message}; expected root or the agent's own user to load on this system`,
        );
      if (error instanceof CallerCheckLimitError)
        throw new AgentError(
          'FAILED_PRECONDITION',
          `model package ${dir} is too large to check for you: ${error.message}; expected an extracted model package of at most ${MAX_CHECKED_ENTRIES} files and folders, ${MAX_CHECKED_DEPTH} levels deep`,
        );
      const failure = agentSideFailure(error);
      if (failure) {
        // The agent's own trouble, not the caller's rights: say so, and leave a trace for whoever runs it.
        this.#logger?.warn(
          `could not open model package ${dir} for a caller (uid ${caller.uid}): ${failure.code}`,
          { event: 'caller-open-failed', url: request.url, code: failure.code },
        );
        throw new AgentError(
          failure.code === 'EIO' ? 'UNAVAILABLE' : 'RESOURCE_EXHAUSTED',
          failure.code === 'EIO'
            ? `the agent could not read model package ${request.url} (an I/O error); try again later`
            : `the agent has run out of ${failure.code === 'ENOMEM' ? 'memory' : 'file descriptors'} opening model package ${request.url}; try again later`,
          { cause: failure },
        );
      }
      // Anything else the check could not get past says nothing the caller may learn: the one refusal.
      throw refused();
    }
    if (found.kind === 'opened') return found.folder;
    if (found.kind === 'refused') throw refused();
    throw packageFailure(
      new PackageNotFoundError(
        dir,
        found.kind === 'file' ? notAFolderDetail(dir) : 'the folder does not exist',
      ),
      dir,
    );
  }

  #nextKey(name: string): string {
    return `${name}#${++this.#generation}`;
  }

  /** A version that took requests: drain it (bounded), then release its sessions. */
  async #retire(version: ModelVersion): Promise<void> {
    await version.drain(this.#unloadTimeoutMs);
    version.state = 'unloaded';
    await this.#pool.unloadModel(version.key);
  }

  /** A staged version (it never took requests): wait for its load to stop, then release its sessions. */
  async #discardStaged(version: ModelVersion, loading: Promise<unknown> | undefined): Promise<void> {
    await loading;
    version.state = 'unloaded';
    await this.#pool.unloadModel(version.key).catch(() => {});
  }

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

  #ready(name: string): NameEntry {
    const entry = typeof name === 'string' ? this.#models.get(name) : undefined;
    if (!entry || entry.current.state !== 'ready') {
      const loaded = this.list().map((m) => m.name);
      const shown =
        loaded.length === 0 ? 'none' : loaded.slice(0, 10).join(', ') + (loaded.length > 10 ? ', …' : '');
      throw new AgentError(
        'NOT_FOUND',
        entry
          ? `model ${JSON.stringify(name)} is still loading; retry once its load has returned`
          : `no model named ${JSON.stringify(name)} is loaded (loaded models: ${shown})`,
      );
    }
    return entry;
  }

  #countRequest(
    description: ModelDescription,
    name: string,
    began: number,
    outcome: { errorCode?: AgentErrorCode; queueMs?: number; computeMs?: number },
  ): void {
    const counts = description.requests;
    if (outcome.errorCode === undefined) counts.succeeded++;
    else counts.failed++;
    this.#metrics?.observeRequest({ model: name, requestMs: performance.now() - began, ...outcome });
  }
}

function shuttingDown(): AgentError {
  return new AgentError('UNAVAILABLE', 'the agent is shutting down; the load was abandoned');
}

function stagedDescription(name: string, version: ModelVersion): StagedVersionDescription {
  return {
    name,
    url: version.url,
    state: version.state,
    key: version.key,
    ...(version.state === 'ready' && version.description && { model: snapshot(version.description) }),
  };
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

/** Puts the pool's outputs in the manifest's order, names as bytes. */
function orderOutputs(declared: readonly TensorMetadata[], outputs: readonly PoolTensor[]): PredictOutput[] {
  let result = outputs;
  // The pool returns them in the session's order, which is the manifest's for every model packaged here.
  if (!outputs.every((o, i) => declared[i]?.name === o.name)) {
    const byName = new Map(outputs.map((o) => [o.name, o]));
    const ordered = declared.map((d) => byName.get(d.name)).filter((o): o is PoolTensor => o !== undefined);
    if (ordered.length === outputs.length) result = ordered;
  }
  const names = declaredNameBytes(declared);
  return result.map((o, i) => {
    const output: PredictOutput = {
      // In the manifest's order (the usual case) its name is made already; else (an output it lacks) made here.
      name: declared[i]?.name === o.name ? names[i]! : tensorNameBytes(o.name),
      dataType: o.dataType,
      shape: o.shape,
      data: o.data,
    };
    if (o.writtenToSegment) output.writtenToSegment = true;
    return output;
  });
}
