import { access } from 'node:fs/promises';
import {
  LineLimiter,
  MAX_MODELS_PER_HEARTBEAT,
  PackageVerificationError,
  openModelPackage,
  type DeployedModelNotLoadedInput,
  type DeploymentResultInput,
  type EdgeDeployment,
  type TrustPolicy,
} from '@edgefleet/core';
import type {
  LoadHooks,
  ModelDescription,
  RegistryObserver,
  StagedVersionDescription,
} from '../models/index.js';
import {
  isStorageFull,
  storageFullWords,
  type DeploymentModelRow,
  type DeploymentsRepository,
} from '../state/index.js';
import { sleepUnlessAborted } from '../retry/index.js';
import type { DeploymentMetrics } from './deployment-metrics.js';
import {
  FINAL_STATES,
  canTransition,
  compareVersions,
  isDeploymentState,
  type DeploymentState,
} from './deployment-state.js';
import { PackageDownloadError, sha256File, type PackageStore } from './package-store.js';

/** The registry calls the engine needs (ModelRegistry's). */
export interface DeployableRegistry {
  load(request: { url: string; name: string }): Promise<ModelDescription>;
  stage(name: string, url: string, hooks?: LoadHooks): Promise<StagedVersionDescription>;
  promote(name: string): Promise<ModelDescription>;
  abortStaged(name: string): Promise<void>;
  unload(name: string): Promise<void>;
  has(name: string): boolean;
  describe(name: string): ModelDescription;
}

export interface EngineLogger {
  info(fields: object, message: string): void;
  warn(fields: object, message: string): void;
  error(fields: object, message: string): void;
}

/** The application's hold on updates (a file, like balena's updates.lock): the switch waits while it exists. */
export interface UpdateLock {
  path: string;
  /** After this long held, the staged version is dropped and the deployment reported HELD (retried later). */
  maxHoldMs: number;
}

export interface UpdateEngineOptions {
  registry: DeployableRegistry;
  repository: DeploymentsRepository;
  store: PackageStore;
  /** The device's trust roots (null: signatures not checked, as for LoadModel). */
  trust: TrustPolicy | null;
  requireSignatures: boolean;
  /** How long a switched model is watched before it is committed. */
  healthWindowMs: number;
  /** Restarts of the agent during one update after which it is rolled back (a crash loop). Default 3. */
  maxRestarts?: number;
  updateLock?: UpdateLock;
  logger: EngineLogger;
  metrics?: DeploymentMetrics;
  now?: () => number;
  /**
   * Called when a model reaches a final state (Committed, RolledBack, Failed): a deployment's final result may be
   * ready to report (result-reporter.ts sends it at once, not at the next heartbeat). Must not throw.
   */
  onFinal?: () => void;
  /** Why the handle's model did not load at the agent's start (LoadFailures), when it did not. */
  loadFailure?: (handle: string) => { reason: string; category: string; at: number } | undefined;
}

/** One model handle's update, as `edgefleet agent status` shows it. */
export interface DeploymentModelStatus {
  handle: string;
  deployment: string;
  state: DeploymentState;
  desired: 'DEPLOY' | 'UNDEPLOY';
  version: string | null;
  previousVersion: string | null;
  committedVersion: string | null;
  held: boolean;
  reason: string | null;
  rollbackFailureReason: string | null;
  startedAt: string;
  updatedAt: string;
  endedAt: string | null;
  /**
   * Whether the handle serves a model now. False for a Committed deployment means its model was taken out of
   * service afterwards: `notLoadedReason` says how.
   */
  loaded: boolean;
  /** Why a deployed (Committed, DEPLOY) handle serves nothing; null when it serves or was not deployed. */
  notLoadedReason: string | null;
  /**
   * With notLoadedReason: the error of the handle's load at the agent's start (a refused signature names the
   * file that changed); null when it did not fail. For operators only: it may name files.
   */
  loadFailure: string | null;
  /** When an application unloaded the deployed model (ISO 8601); null unless it did. */
  unloadedByApplicationAt: string | null;
  /**
   * The handle's last deployment that ended RolledBack or Failed, when that is not this one: it stays visible
   * after the server gave up on it and the handle is back on (or moved past) what was committed.
   */
  lastFailure: DeploymentFailureStatus | null;
}

/** A deployed handle serving nothing (SendHeartbeat.DeployedModelsNotLoaded, EdgeFleet's). */
export type DeployedModelNotLoaded = DeployedModelNotLoadedInput;

/** A failed deployment of a handle, as the status keeps it. */
export interface DeploymentFailureStatus {
  deployment: string;
  state: 'RolledBack' | 'Failed';
  version: string | null;
  reason: string | null;
  rollbackFailureReason: string | null;
  startedAt: string;
  endedAt: string;
}

/**
 * An update the engine could not record because the device's storage is full (SQLITE_FULL, ENOSPC): kept in
 * memory only, so status and heartbeats can say why it does not move. Nothing durable claims a state for it.
 */
export interface StorageFullStatus {
  /** The deployment held up; null when the pass had named none yet (the agent's start, before any update). */
  deployment: string | null;
  /** What the failed write said (SQLite's "database or disk is full", ENOSPC's message). */
  reason: string;
  /** The whole sentence status and the deployment result carry. */
  message: string;
  /** When the first write of this run of failures failed (ISO 8601). */
  since: string;
}

/**
 * Thrown by apply and resume when the device's storage is full: the update is neither started nor failed (a
 * state that cannot be written is not claimed), and the next pass tries again. The poller logs it without a
 * stack, at most once a minute.
 */
export class DeploymentStorageFullError extends Error {
  override readonly name = 'DeploymentStorageFullError';
}

/** One deployment's models as the engine works on them, for what it says when its storage is full. */
interface WorkingOn {
  deployment: string;
  models: {
    handle: string;
    modelName: string | null;
    version: string | null;
    desired: 'DEPLOY' | 'UNDEPLOY';
  }[];
}

/** The last pass could not write for want of space: the deployment it was writing when it knew one. */
interface StorageFull extends Omit<WorkingOn, 'deployment'> {
  deployment: string | undefined;
  /** The failed write's own message (may name a file): the agent's log and operator status. */
  reason: string;
  /** The same without local paths (storageFullWords): the heartbeat. */
  publicReason: string;
  since: number;
}

/** A step's outcome: go on, wait for the next pass (download retry, lock held), or stop (a final state). */
type Step = 'next' | 'wait' | 'done';

class DeploymentFailure extends Error {}

const UNNAMED = 'unnamed-deployment';
/** Final states that are a failure of the model's update. */
const FAILED_STATES: ReadonlySet<DeploymentState> = new Set(['Failed', 'RolledBack']);
/** States in which the old version still serves and nothing of the new one is in use. */
const BEFORE_SWITCH: ReadonlySet<DeploymentState> = new Set([
  'Downloading',
  'Verifying',
  'Loading',
  'WarmingUp',
]);
/**
 * States in which the new version's own code runs beside the old one (its sessions created, then warmed up): a
 * restart found there may be the version's doing (a native crash, an OOM kill), so it counts.
 */
const STAGING: ReadonlySet<DeploymentState> = new Set(['Loading', 'WarmingUp']);
const LOCK_POLL_MS = 500;

/**
 * Why a healthy model goes back: another model of its ROLLBACK_ON_FAILURE deployment failed (the row's
 * rolledBackWithDeployment says so; the schema 6 migration recognised rows written before it by these words).
 */
const ROLLED_BACK_WITH_DEPLOYMENT = 'rolled back with the deployment (ROLLBACK_ON_FAILURE)';

/** What entering each state of the life cycle means, for its log line (the final states log their own). */
const STEP_WORDS: Partial<Record<DeploymentState, (row: DeploymentModelRow) => string>> = {
  Downloading: () => 'received; downloading the package',
  Verifying: () => 'downloaded; verifying the package',
  Loading: () => 'verified; loading it',
  WarmingUp: () => 'loaded beside the serving version; warming up',
  Switching: (row) =>
    row.desired === 'UNDEPLOY' ? 'received; unloading the model' : 'ready; switching to it',
  HealthCheck: () => 'switched; serving it, health window open',
  RollingBack: (row) => `rolling back${row.reason === null ? '' : `: ${row.reason}`}`,
};

/**
 * The crash-safe update engine: applies GetDeployments answers to the model registry through the persisted
 * state machine of deployment-state.ts (one row per model handle in the local database). One pass at a time:
 * `apply` (after each poll) and `resume` (at start-up) never overlap; a later call waits for the one running.
 */
export class UpdateEngine {
  readonly #o: UpdateEngineOptions;
  readonly #now: () => number;
  readonly #maxRestarts: number;
  readonly #held = new Set<string>();
  readonly #abort = new AbortController();
  #running: Promise<void> = Promise.resolve();
  /** The deployment the pass under way works on (what a storage-full failure is about). */
  #workingOn: WorkingOn | undefined;
  /** Set while the last pass failed for want of space; cleared by the next pass that does not. */
  #storageFull: StorageFull | undefined;
  /** Lines about best-effort writes outside a pass (a result marked reported, an application's unload). */
  readonly #writeFailureLines: LineLimiter;

  constructor(options: UpdateEngineOptions) {
    this.#o = options;
    this.#now = options.now ?? Date.now;
    this.#maxRestarts = options.maxRestarts ?? 3;
    this.#writeFailureLines = new LineLimiter({ now: this.#now });
    for (const row of options.repository.list())
      if (isDeploymentState(row.state)) options.metrics?.setState(row.handle, row.state);
  }

  /**
   * After a restart: every update that was not final is driven on to a final state. The restart counts against
   * an update when its new version serves the handle (restored as it served before the restart) or was being
   * staged (Loading, WarmingUp: its code was running). One while downloading, verifying or waiting on the update
   * lock is no sign of a bad version: the old version serves then, and the update goes on.
   */
  resume(): Promise<void> {
    return this.#serialWriting(async () => {
      const open = this.#o.repository.list().filter((row) => !FINAL_STATES.has(state(row)));
      for (const row of open) {
        if (!this.#newVersionServes(row) && !STAGING.has(state(row))) continue;
        row.restarts += 1;
        // A full disk here is reported for this row's deployment, not a nameless one.
        this.#workingOn = workingOnRows(open.filter((other) => other.deploymentName === row.deploymentName));
        this.#o.repository.save(row);
      }
      await this.#driveOpen();
    });
  }

  /** Applies the deployments of a GetDeployments answer (updates already applied or final are left alone). */
  apply(deployments: readonly EdgeDeployment[]): Promise<void> {
    return this.#serialWriting(async () => {
      await this.#driveOpen();
      for (const deployment of deployments) {
        if (this.#abort.signal.aborted) return;
        this.#workingOn = {
          deployment: deployment.DeploymentName ?? UNNAMED,
          models: (deployment.Definitions ?? []).flatMap((d) =>
            d.ModelHandle === undefined
              ? []
              : [
                  {
                    handle: d.ModelHandle,
                    modelName: d.ModelName ?? null,
                    version: d.ModelVersion ?? null,
                    desired: d.State ?? 'DEPLOY',
                  },
                ],
          ),
        };
        await this.#applyDeployment(deployment);
      }
    });
  }

  /**
   * Why updates do not move when the device's storage is full (the last pass could not write the state of
   * `deployment`), or null. Only in memory: the condition is the device's now, and a restart finds it again.
   */
  storageFull(): StorageFullStatus | null {
    const full = this.#storageFull;
    if (!full) return null;
    return {
      deployment: full.deployment ?? null,
      reason: full.reason,
      message: storageFullMessage(full.deployment, full.reason),
      since: new Date(full.since).toISOString(),
    };
  }

  /** Every handle's update, newest first. */
  status(): DeploymentModelStatus[] {
    return this.#o.repository
      .list()
      .sort((a, b) => b.updatedAt - a.updatedAt)
      .map((row) => ({
        handle: row.handle,
        deployment: row.deploymentName,
        state: state(row),
        desired: row.desired,
        version: row.version,
        previousVersion: row.previousVersion,
        committedVersion: row.committedVersion,
        held: this.#held.has(row.handle),
        loaded: this.#o.registry.has(row.handle),
        notLoadedReason: this.#notLoadedReason(row),
        loadFailure: this.#loadFailure(row),
        unloadedByApplicationAt:
          row.unloadedByApplicationAt == null ? null : new Date(row.unloadedByApplicationAt).toISOString(),
        reason: row.reason,
        rollbackFailureReason: row.rollbackFailureReason,
        startedAt: new Date(row.startedAt).toISOString(),
        updatedAt: new Date(row.updatedAt).toISOString(),
        endedAt: row.endedAt === null ? null : new Date(row.endedAt).toISOString(),
        lastFailure: this.#lastFailure(row),
      }));
  }

  /**
   * Deployed handles (their deployment Committed, desired DEPLOY) that serve nothing now, and why: what the
   * heartbeat's DeployedModelsNotLoaded carries, so the server can tell "deployed" from "serving".
   */
  deployedModelsNotLoaded(): DeployedModelNotLoaded[] {
    return this.#o.repository.list().flatMap((row) => {
      const words = this.#notLoadedReason(row);
      if (words === null) return [];
      // Leaves the device: the failure's category, without the local paths its message may name (status has them).
      const failure = this.#loadFailureCategory(row);
      const reason = failure === null ? words : `${words}: ${failure}`;
      return [
        {
          ModelHandle: row.handle,
          DeploymentName: row.deploymentName,
          ...(row.modelName !== null && { ModelName: row.modelName }),
          ...(row.version !== null && { ModelVersion: row.version }),
          UnloadedByApplication: row.unloadedByApplicationAt != null,
          ...(row.unloadedByApplicationAt != null && { Since: row.unloadedByApplicationAt / 1000 }),
          Reason: truncate(reason),
        },
      ];
    });
  }

  /**
   * The registry's observer for what applications do to deployed handles (startDeployments registers it). An
   * application's UnLoadModel (or REST unload) of a deployed model is obeyed, as Edge Manager's agent did: apps
   * written for it unload models themselves. The handle's row remembers it, so status and heartbeats say the
   * deployed model is not loaded, and why; the local database then no longer lists the model, so it stays
   * unloaded across restarts, until something loads the handle again (LoadModel, or its next deployment).
   * The engine's own unloads are of rows not Committed-DEPLOY (undeploy, rollback), so they are not taken for
   * an application's.
   */
  registryObserver(): RegistryObserver {
    return {
      onUnloaded: (name) => {
        const row = this.#o.repository.get(name);
        if (!row || state(row) !== 'Committed' || row.desired !== 'DEPLOY') return;
        row.unloadedByApplicationAt = this.#now();
        this.#bestEffortSave(() => this.#o.repository.save(row), `the unload of ${name} by an application`);
        this.#o.logger.warn(
          { event: 'deployment-model-unloaded', model: name, deployment: row.deploymentName },
          `an application unloaded ${name}, deployed by ${row.deploymentName} (version ${row.version ?? 'unknown'}): the device serves nothing under that handle until it is loaded again or deployed anew; status and heartbeats say so`,
        );
      },
      onLoaded: (model) => {
        const row = this.#o.repository.get(model.name);
        if (row?.unloadedByApplicationAt == null) return;
        row.unloadedByApplicationAt = null;
        this.#bestEffortSave(() => this.#o.repository.save(row), `the load of ${model.name}`);
      },
    };
  }

  #notLoadedReason(row: DeploymentModelRow): string | null {
    if (state(row) !== 'Committed' || row.desired !== 'DEPLOY' || this.#o.registry.has(row.handle))
      return null;
    if (row.unloadedByApplicationAt != null)
      return `unloaded by an application (UnLoadModel or the REST unload) at ${new Date(row.unloadedByApplicationAt).toISOString()}; not loaded again, also after a restart, until the handle is loaded or deployed again`;
    if (this.#o.loadFailure?.(row.handle) !== undefined)
      return `its load at the agent's start failed, so the handle serves nothing (no other version is loaded in its place); to put it back, deploy the version again: the agent downloads and verifies its package anew`;
    return 'not loaded since the agent started: still loading, or its load failed (the agent log says why)';
  }

  /** The error of a deployed handle's failed load at the agent's start, while it serves nothing. */
  #loadFailure(row: DeploymentModelRow): string | null {
    if (state(row) !== 'Committed' || row.desired !== 'DEPLOY' || this.#o.registry.has(row.handle))
      return null;
    return this.#o.loadFailure?.(row.handle)?.reason ?? null;
  }

  #loadFailureCategory(row: DeploymentModelRow): string | null {
    if (this.#loadFailure(row) === null) return null;
    return this.#o.loadFailure?.(row.handle)?.category ?? null;
  }

  #lastFailure(row: DeploymentModelRow): DeploymentFailureStatus | null {
    const failure = this.#o.repository.outcome(row.handle, 'failed');
    if (!failure || (failure.deploymentName === row.deploymentName && failure.startedAt === row.startedAt))
      return null;
    return {
      deployment: failure.deploymentName,
      state: failure.state === 'RolledBack' ? 'RolledBack' : 'Failed',
      version: failure.version,
      reason: failure.reason,
      rollbackFailureReason: failure.rollbackFailureReason,
      startedAt: new Date(failure.startedAt).toISOString(),
      endedAt: new Date(failure.endedAt).toISOString(),
    };
  }

  /**
   * The DeploymentResult for the next heartbeat: the most recently changed deployment whose final result the
   * server has not yet accepted (in progress or held ones too), or undefined. A final result the server accepted
   * (through the result route or a heartbeat) is not sent again: the server records the device's last result
   * from either.
   */
  deploymentResult(): DeploymentResultInput | undefined {
    const rows = this.#o.repository.list();
    const full = this.#storageFull;
    if (full) {
      // A final result the server has not accepted goes first (its stage waits on it); the heartbeat carries one.
      const final = this.finalResults(1)[0];
      if (final !== undefined && final.DeploymentName !== full.deployment) return final;
      if (full.deployment !== undefined)
        return this.#storageFullResult(rows, { ...full, deployment: full.deployment });
    }
    const pending = rows.filter((row) => !row.reported).sort((a, b) => b.updatedAt - a.updatedAt)[0];
    if (pending) return this.#resultFor(rows.filter((row) => row.deploymentName === pending.deploymentName));
    return undefined;
  }

  /**
   * Final results the server has not yet accepted, every model of their deployment final, oldest first (at most
   * `limit`): what result-reporter.ts sends at once.
   */
  finalResults(limit: number): DeploymentResultInput[] {
    const rows = this.#o.repository.list();
    const byDeployment = new Map<string, DeploymentModelRow[]>();
    for (const row of rows) {
      const models = byDeployment.get(row.deploymentName) ?? [];
      models.push(row);
      byDeployment.set(row.deploymentName, models);
    }
    return [...byDeployment.values()]
      .filter(
        (models) =>
          models.some((row) => !row.reported) && models.every((row) => FINAL_STATES.has(state(row))),
      )
      .sort((a, b) => latest(a) - latest(b))
      .slice(0, limit)
      .map((models) => this.#resultFor(models));
  }

  /**
   * The deployment whose state cannot be written, as INPROGRESS with the reason: not FAIL, which the agent has
   * not recorded and would contradict once space returns and the update goes on (a crash-safe state is only one
   * the database holds). Its models as recorded when some are; else as the deployment defines them, on what
   * serves them now.
   */
  #storageFullResult(
    rows: DeploymentModelRow[],
    full: StorageFull & { deployment: string },
  ): DeploymentResultInput {
    // Leaves the device: words without the local paths a file system error names (status keeps them).
    const message = truncate(storageFullMessage(full.deployment, full.publicReason));
    const recorded = rows.filter((row) => row.deploymentName === full.deployment);
    if (recorded.length > 0 && !recorded.every((row) => FINAL_STATES.has(state(row))))
      return {
        ...this.#resultFor(recorded),
        DeploymentStatus: 'INPROGRESS',
        DeploymentStatusMessage: message,
      };
    return {
      DeploymentName: full.deployment,
      DeploymentStatus: 'INPROGRESS',
      DeploymentStatusMessage: message,
      DeploymentStartTime: full.since / 1000,
      DeploymentModels: full.models.slice(0, MAX_MODELS_PER_HEARTBEAT).map((model) => {
        // State is of the model at this version: another version serving the handle is not it.
        const serving = this.#o.registry.has(model.handle)
          ? this.#o.registry.describe(model.handle).version
          : undefined;
        const deployed = serving !== undefined && serving === model.version;
        return {
          ModelHandle: model.handle,
          ...(model.modelName !== null && { ModelName: model.modelName }),
          ...(model.version !== null && { ModelVersion: model.version }),
          DesiredState: model.desired,
          State: deployed ? ('DEPLOY' as const) : ('UNDEPLOY' as const),
          StatusReason: truncate(
            serving === undefined || deployed
              ? message
              : `version ${serving} serves the handle until this version can be recorded: ${message}`,
          ),
        };
      }),
    };
  }

  #resultFor(models: DeploymentModelRow[]): DeploymentResultInput {
    const final = models.every((row) => FINAL_STATES.has(state(row)));
    const failed = models.filter((row) => FAILED_STATES.has(state(row)));
    const held = models.some((row) => this.#held.has(row.handle));
    const status = !final ? (held ? 'HELD' : 'INPROGRESS') : failed.length > 0 ? 'FAIL' : 'SUCCESS';
    const ended = models.map((row) => row.endedAt).filter((t): t is number => t !== null);
    return {
      DeploymentName: models[0]!.deploymentName,
      DeploymentStatus: status,
      DeploymentStatusMessage: truncate(
        failed.length > 0
          ? failed.map((row) => `${row.handle}: ${row.reason ?? state(row)}`).join('; ')
          : held
            ? 'the update lock holds the switch'
            : final
              ? 'every model is on its new version'
              : 'in progress',
      ),
      DeploymentStartTime: Math.min(...models.map((row) => row.startedAt)) / 1000,
      ...(final && ended.length > 0 && { DeploymentEndTime: Math.max(...ended) / 1000 }),
      DeploymentModels: models.slice(0, MAX_MODELS_PER_HEARTBEAT).map((row) => ({
        ModelHandle: row.handle,
        ...(row.modelName !== null && { ModelName: row.modelName }),
        ...(row.version !== null && { ModelVersion: row.version }),
        DesiredState: row.desired,
        State: deployedState(row),
        ...(FINAL_STATES.has(state(row)) && {
          Status: state(row) === 'Committed' ? ('SUCCESS' as const) : ('FAIL' as const),
        }),
        ...(FAILED_STATES.has(state(row)) && { FailedAfterSwitch: failedAfterSwitch(row) }),
        ...(row.reason !== null && { StatusReason: truncate(row.reason) }),
        ...(row.rollbackFailureReason !== null && {
          RollbackFailureReason: truncate(row.rollbackFailureReason),
        }),
      })),
    };
  }

  /**
   * The server accepted `result`, in a heartbeat or on its own (the device API's result route): a final result is
   * not sent again, by either. One composed before its deployment started over (the server's retry) marks nothing.
   */
  reported(result: DeploymentResultInput): void {
    if (result.DeploymentStatus === 'INPROGRESS' || result.DeploymentStatus === 'HELD') return;
    const rows = this.#o.repository
      .list()
      .filter((row) => row.deploymentName === result.DeploymentName && !row.reported);
    if (rows.length === 0 || !rows.every((row) => FINAL_STATES.has(state(row)))) return;
    // A result composed before the deployment started over (the server's retry) is not the new attempt's.
    const endedBy =
      typeof result.DeploymentEndTime === 'number' ? Math.round(result.DeploymentEndTime * 1000) : Infinity;
    if (rows.some((row) => row.endedAt === null || row.endedAt > endedBy)) return;
    // Not written (a full disk): the result is sent again later, which the server takes as the same result.
    this.#bestEffortSave(
      () => this.#o.repository.saveAll(rows.map((row) => ({ ...row, reported: true }))),
      `that the server accepted the result of deployment ${result.DeploymentName}`,
    );
  }

  /**
   * A write no update's safety depends on, made outside a pass (from the heartbeat, the result reporter, the
   * registry): a failure is logged, at most once a minute with a count, and never thrown at the caller.
   */
  #bestEffortSave(write: () => void, what: string): void {
    try {
      write();
    } catch (error) {
      const admitted = this.#writeFailureLines.admit('best-effort');
      if (admitted === undefined) return;
      const message = (error as Error).message;
      this.#o.logger.warn(
        {
          event: 'deployment-state-unwritable',
          reason: message,
          ...(admitted.leftOut > 0 && { failuresNotLogged: admitted.leftOut }),
          ...(!isStorageFull(error) && { err: error }),
        },
        `cannot record ${what} in the local database: ${message}` +
          (admitted.leftOut > 0 ? ` (${admitted.leftOut} more such failure(s) since the last line)` : ''),
      );
      return;
    }
    this.#writeFailureLines.forget('best-effort');
  }

  /** Stops at the next step (waits are cut short); what is in progress resumes at the next start. */
  async close(): Promise<void> {
    this.#abort.abort();
    await this.#running.catch(() => {});
  }

  /**
   * A pass that writes the update's state: one that fails for want of space is remembered (storageFull) and
   * thrown as DeploymentStorageFullError; one that does not clears it.
   */
  #serialWriting(work: () => Promise<void>): Promise<void> {
    return this.#serial(async () => {
      this.#workingOn = undefined;
      try {
        await work();
      } catch (error) {
        if (!isStorageFull(error)) throw error;
        // Set by `work` (TypeScript keeps the narrowing of the reset above across the call).
        const working = this.#workingOn as WorkingOn | undefined;
        const reason = (error as Error).message;
        const since =
          this.#storageFull?.deployment === working?.deployment
            ? (this.#storageFull?.since ?? this.#now())
            : this.#now();
        // Only a write of a known deployment names one: a heartbeat never carries a made-up deployment.
        this.#storageFull = {
          deployment: working?.deployment,
          models: working?.models ?? [],
          reason,
          publicReason: storageFullWords(error),
          since,
        };
        throw new DeploymentStorageFullError(storageFullMessage(working?.deployment, reason), {
          cause: error,
        });
      }
      this.#storageFull = undefined;
    });
  }

  #serial(work: () => Promise<void>): Promise<void> {
    const run = this.#running.then(work);
    this.#running = run.catch(() => {});
    return run;
  }

  /** Drives every deployment with a model not yet final, with all its models (final ones decide a rollback too). */
  async #driveOpen(): Promise<void> {
    const all = this.#o.repository.list();
    const open = new Set(all.filter((row) => !FINAL_STATES.has(state(row))).map((row) => row.deploymentName));
    for (const name of open) {
      if (this.#abort.signal.aborted) return;
      const rows = all.filter((row) => row.deploymentName === name);
      this.#workingOn = workingOnRows(rows);
      await this.#drive(rows[0]!.failurePolicy, rows);
    }
  }

  async #applyDeployment(deployment: EdgeDeployment): Promise<void> {
    const name = deployment.DeploymentName ?? UNNAMED;
    const policy = deployment.FailureHandlingPolicy ?? 'ROLLBACK_ON_FAILURE';
    const rows: DeploymentModelRow[] = [];
    for (const definition of deployment.Definitions ?? []) {
      const handle = definition.ModelHandle;
      if (handle === undefined) {
        this.#o.logger.warn(
          { event: 'deployment-definition-skipped', deployment: name },
          `deployment ${name}: a model definition has no ModelHandle; skipped`,
        );
        continue;
      }
      const desired = definition.State ?? 'DEPLOY';
      const existing = this.#o.repository.get(handle);
      if (
        existing &&
        existing.deploymentName === name &&
        existing.desired === desired &&
        existing.sha256 === (definition.Sha256 ?? null) &&
        !(existing.reported && FAILED_STATES.has(state(existing)))
      ) {
        rows.push(existing);
        continue;
      }
      // Offered again after the server accepted its failure: the server's retry (a plan's maxRetries, the
      // device back to READYTODEPLOY), so the model starts over; a FAILED device is not offered it again.
      if (existing && !FINAL_STATES.has(state(existing))) {
        // Still waiting (a download to retry, the lock). Not switched yet: a newer deployment replaces it.
        if (!BEFORE_SWITCH.has(state(existing))) continue;
        await this.#fail(existing, `superseded by deployment ${name} before it was switched`);
      }
      const served = this.#served(handle);
      const now = this.#now();
      const row: DeploymentModelRow = {
        handle,
        deploymentName: name,
        state: existing?.state ?? 'Idle',
        desired,
        failurePolicy: policy,
        allowDowngrade: deployment.AllowDowngrade === true,
        modelName: definition.ModelName ?? null,
        version: definition.ModelVersion ?? null,
        packageUrl: definition.PackageUrl ?? null,
        sha256: definition.Sha256 ?? null,
        size: definition.Size ?? null,
        packageDir: null,
        previousUrl: served?.url ?? null,
        previousVersion: served?.version ?? null,
        committedVersion: existing?.committedVersion ?? served?.version ?? null,
        reason: null,
        rollbackFailureReason: null,
        rolledBackWithDeployment: false,
        restarts: 0,
        startedAt: now,
        updatedAt: now,
        endedAt: null,
        reported: false,
      };
      if (desired === 'UNDEPLOY') {
        this.#transition(row, 'Switching');
      } else if (!row.packageUrl || !row.sha256 || !row.version) {
        this.#transition(row, 'Failed', {
          ended: true,
          reason: `the deployment gives no ${[!row.packageUrl && 'PackageUrl', !row.sha256 && 'Sha256', !row.version && 'ModelVersion'].filter(Boolean).join(', ')} for ${handle}; expected EdgeFleet's download members`,
        });
      } else {
        row.packageDir = this.#o.store.packageDir(handle, row.version, row.sha256);
        if (served?.url === row.packageDir) {
          // Already serving exactly this package (another plan naming it again): nothing to install, and its
          // folder must not be extracted over.
          const committed = this.#o.repository.outcome(handle, 'committed');
          if (committed?.deploymentName === name && committed.packageDir === row.packageDir) {
            // The deployment committed before, offered again (the server's choice once it gave up on a newer
            // one): it is that commit still, with its own times and previous version, not a new one.
            row.previousUrl = committed.previousUrl;
            row.previousVersion = committed.previousVersion;
            row.startedAt = committed.startedAt;
            this.#transition(row, 'Committed', {
              ended: true,
              committedVersion: row.version,
              at: committed.endedAt,
            });
          } else {
            const keepPrevious = existing?.packageDir === row.packageDir;
            row.previousUrl = keepPrevious ? existing.previousUrl : null;
            row.previousVersion = keepPrevious ? existing.previousVersion : null;
            this.#transition(row, 'Committed', { ended: true, committedVersion: row.version });
          }
        } else this.#transition(row, 'Downloading');
      }
      rows.push(row);
    }
    if (rows.length > 0) await this.#drive(policy, rows);
  }

  /**
   * Drives a deployment's models through their states. Each stops at HealthCheck (switched) or a final state,
   * or waits (download to retry, update lock held); when none waits, the health window decides, and the
   * deployment is committed or, under ROLLBACK_ON_FAILURE, rolled back as a whole.
   */
  async #drive(policy: string, rows: DeploymentModelRow[]): Promise<void> {
    let waiting = false;
    for (const row of rows) {
      if (this.#abort.signal.aborted) return;
      if (await this.#tooManyRestarts(row)) continue;
      if ((await this.#advance(row)) === 'wait') waiting = true;
    }
    if (waiting || this.#abort.signal.aborted) return;
    const switched = rows.filter((row) => state(row) === 'HealthCheck');
    if (switched.length > 0) {
      await this.#sleep(this.#o.healthWindowMs);
      if (this.#abort.signal.aborted) return;
      for (const row of switched) {
        const problem = this.#health(row);
        if (problem) await this.#rollBack(row, problem);
      }
    }
    const failed = rows.filter((row) => FAILED_STATES.has(state(row)));
    const healthy = rows.filter((row) => state(row) === 'HealthCheck');
    if (failed.length > 0 && policy === 'ROLLBACK_ON_FAILURE') {
      const why = `${ROLLED_BACK_WITH_DEPLOYMENT}: ${failed.map((row) => `${row.handle} failed`).join(', ')}`;
      for (const row of healthy) await this.#rollBack(row, why, { withDeployment: true });
    } else if (healthy.length > 0) {
      const now = this.#now();
      const committed = healthy.map((row) => {
        const next: DeploymentModelRow = { ...row, committedVersion: row.version, reason: null };
        this.#check(row, 'Committed');
        return { ...next, state: 'Committed', updatedAt: now, endedAt: now };
      });
      this.#o.repository.saveAll(committed);
      this.#o.onFinal?.();
      for (const row of committed) {
        Object.assign(rows[rows.findIndex((r) => r.handle === row.handle)]!, row);
        this.#o.metrics?.setState(row.handle, 'Committed');
        this.#o.logger.info(
          {
            event: 'deployment-committed',
            model: row.handle,
            version: row.version,
            deployment: row.deploymentName,
          },
          `deployment ${row.deploymentName}: ${row.handle} committed on version ${row.version}`,
        );
      }
    }
    await this.collectGarbage();
  }

  /** Removes packages and downloads no update needs: kept are the committed and previous versions, and those in progress. */
  async collectGarbage(): Promise<void> {
    const keep = new Set<string>();
    for (const row of this.#o.repository.list()) {
      const final = FINAL_STATES.has(state(row));
      if (row.packageDir && (!final || state(row) === 'Committed')) keep.add(row.packageDir);
      if (row.previousUrl) keep.add(row.previousUrl);
      if (!final && row.sha256) keep.add(this.#o.store.downloadPath(row.sha256));
      const served = this.#served(row.handle);
      if (served) keep.add(served.path);
    }
    await this.#o.store
      .collectGarbage(keep)
      .catch((error: unknown) =>
        this.#o.logger.warn(
          { event: 'deployment-gc-failed', err: error },
          `package store clean-up failed: ${(error as Error).message}`,
        ),
      );
  }

  /**
   * A version that keeps taking the agent down (counted restarts, see resume) is not given another chance: one
   * that served is rolled back (a failure after its switch); one being staged ends Failed before its switch (the
   * old version serves; the server may retry).
   */
  async #tooManyRestarts(row: DeploymentModelRow): Promise<boolean> {
    const s = state(row);
    if (row.restarts <= this.#maxRestarts || FINAL_STATES.has(s) || s === 'RollingBack') return false;
    const loop = `the agent restarted ${row.restarts} times while version ${row.version} of ${row.handle}`;
    if (this.#newVersionServes(row)) await this.#rollBack(row, `${loop} served (a crash loop)`);
    else if (STAGING.has(s)) await this.#fail(row, `${loop} was being staged (a crash loop)`);
    else return false;
    return true;
  }

  /** Whether the update's new version is the one serving its handle (it was switched in). */
  #newVersionServes(row: DeploymentModelRow): boolean {
    return row.packageDir !== null && this.#served(row.handle)?.url === row.packageDir;
  }

  /** Takes one model as far as it goes before the health window. */
  async #advance(row: DeploymentModelRow): Promise<Step> {
    for (;;) {
      if (this.#abort.signal.aborted) return 'wait';
      const step = await this.#step(row).catch(async (error: unknown) => {
        if (error instanceof DeploymentFailure) {
          await this.#fail(row, error.message);
          return 'done' as const;
        }
        throw error;
      });
      if (step !== 'next') return step;
    }
  }

  async #step(row: DeploymentModelRow): Promise<Step> {
    switch (state(row)) {
      case 'Downloading':
        return this.#download(row);
      case 'Verifying':
        return this.#verify(row);
      case 'Loading':
        return this.#load(row);
      case 'WarmingUp':
        // A crash during the warm-up lost the staged version: stage it again, from Loading.
        this.#transition(row, 'Loading');
        return 'next';
      case 'Switching':
        return this.#switch(row);
      case 'RollingBack':
        await this.#rollBack(row, row.reason ?? 'rolling back');
        return 'done';
      default:
        return 'done';
    }
  }

  async #download(row: DeploymentModelRow): Promise<Step> {
    try {
      await this.#o.store.download(
        { url: row.packageUrl!, sha256: row.sha256!, ...(row.size !== null && { size: row.size }) },
        this.#abort.signal,
      );
    } catch (error) {
      if (error instanceof PackageDownloadError && error.outcome === 'retry') {
        row.reason = error.message;
        row.updatedAt = this.#now();
        this.#o.repository.save(row);
        this.#o.logger.warn(
          { event: 'deployment-download-retry', model: row.handle, reason: error.message },
          `deployment ${row.deploymentName}: ${row.handle}: ${error.message}; the download resumes at the next poll`,
        );
        return 'wait';
      }
      throw new DeploymentFailure((error as Error).message);
    }
    this.#transition(row, 'Verifying', { reason: null });
    return 'next';
  }

  async #verify(row: DeploymentModelRow): Promise<Step> {
    const file = this.#o.store.downloadPath(row.sha256!);
    const digest = await sha256File(file).catch(() => undefined);
    if (digest !== row.sha256) {
      // The download went away or changed on disk since it was checked: fetch it again.
      this.#transition(row, 'Downloading');
      return 'next';
    }
    let dir: string;
    try {
      dir = await this.#o.store.extract(file, row.packageDir!);
    } catch (error) {
      throw new DeploymentFailure(
        `the package of ${row.handle} cannot be extracted: ${(error as Error).message}`,
      );
    }
    let manifest: { name: string; version: string };
    try {
      manifest = (await openModelPackage(dir, { trust: this.#o.trust })).manifest;
    } catch (error) {
      if (!(error instanceof PackageVerificationError) || this.#o.requireSignatures)
        throw new DeploymentFailure(`the package of ${row.handle} was refused: ${(error as Error).message}`);
      manifest = (await openModelPackage(dir, { trust: null })).manifest;
      this.#o.logger.warn(
        { event: 'deployment-unverified', model: row.handle },
        `deployment ${row.deploymentName}: the package of ${row.handle} does not verify (${error.message}); installing it as edgefleet_require_signatures is off`,
      );
    }
    if (row.modelName !== null && manifest.name !== row.modelName)
      throw new DeploymentFailure(
        `the package is model ${JSON.stringify(manifest.name)}; the deployment names ${JSON.stringify(row.modelName)} (a package for another model)`,
      );
    if (manifest.version !== row.version)
      throw new DeploymentFailure(
        `the package is version ${JSON.stringify(manifest.version)}; the deployment names ${JSON.stringify(row.version)}`,
      );
    if (
      row.committedVersion !== null &&
      !row.allowDowngrade &&
      compareVersions(manifest.version, row.committedVersion) < 0
    )
      throw new DeploymentFailure(
        `anti-rollback: version ${manifest.version} is older than the committed version ${row.committedVersion}; only a deployment plan marked as a rollback may install it (AllowDowngrade: "edgefleet deployment create … --allow-downgrade", or the console's "Allow downgrade" box)`,
      );
    this.#transition(row, 'Loading');
    return 'next';
  }

  async #load(row: DeploymentModelRow): Promise<Step> {
    const served = this.#served(row.handle);
    if (served?.url === row.packageDir) {
      this.#transition(row, 'HealthCheck');
      return 'done';
    }
    try {
      if (!served) {
        // A first install: nothing serves the handle, so there is no old version to keep beside it.
        await this.#o.registry.load({ name: row.handle, url: row.packageDir! });
        this.#transition(row, 'HealthCheck');
        return 'done';
      }
      if (served.staged) await this.#o.registry.abortStaged(row.handle);
      // The sessions exist beside the old version's; WarmingUp is recorded before the warm-up runs.
      await this.#o.registry.stage(row.handle, row.packageDir!, {
        beforeWarmUp: async () => this.#transition(row, 'WarmingUp'),
      });
    } catch (error) {
      throw new DeploymentFailure(
        `version ${row.version} of ${row.handle} did not load: ${(error as Error).message}`,
      );
    }
    this.#transition(row, 'Switching');
    return 'next';
  }

  async #switch(row: DeploymentModelRow): Promise<Step> {
    if (row.desired === 'UNDEPLOY') {
      if (this.#o.registry.has(row.handle))
        await this.#o.registry.unload(row.handle).catch((error: unknown) => {
          throw new DeploymentFailure(`unloading ${row.handle} failed: ${(error as Error).message}`);
        });
      this.#transition(row, 'Committed', { ended: true, committedVersion: null });
      return 'done';
    }
    const served = this.#served(row.handle);
    if (served?.url === row.packageDir) {
      this.#transition(row, 'HealthCheck');
      return 'done';
    }
    if (!served?.staged || served.staged.url !== row.packageDir || served.staged.state !== 'ready') {
      // After a restart the staged version is gone: load it beside the old one again.
      this.#transition(row, 'Loading');
      return 'next';
    }
    if (!(await this.#lockReleased(row))) return 'wait';
    try {
      await this.#o.registry.promote(row.handle);
    } catch (error) {
      throw new DeploymentFailure(
        `switching ${row.handle} to version ${row.version} failed: ${(error as Error).message}`,
      );
    }
    this.#transition(row, 'HealthCheck');
    return 'done';
  }

  /** Waits while the update lock is held, at most its maximum hold; false when it is still held then. */
  async #lockReleased(row: DeploymentModelRow): Promise<boolean> {
    const lock = this.#o.updateLock;
    if (!lock) return true;
    const began = this.#now();
    while (await exists(lock.path)) {
      if (this.#abort.signal.aborted) return false;
      if (this.#now() - began >= lock.maxHoldMs) {
        this.#held.add(row.handle);
        row.reason = `held: the update lock ${lock.path} was held for more than ${Math.round(lock.maxHoldMs / 1000)} s; the switch is retried at the next poll`;
        await this.#o.registry.abortStaged(row.handle).catch(() => {});
        this.#transition(row, 'Loading', { reason: row.reason });
        this.#o.logger.warn({ event: 'deployment-held', model: row.handle }, row.reason);
        return false;
      }
      await this.#sleep(LOCK_POLL_MS);
    }
    this.#held.delete(row.handle);
    return true;
  }

  /** Why a switched model failed its health window, or undefined when it passed. */
  #health(row: DeploymentModelRow): string | undefined {
    const served = this.#served(row.handle);
    if (!served || served.url !== row.packageDir)
      return `version ${row.version} of ${row.handle} stopped serving during its health window`;
    const { succeeded, failed } = served.requests;
    if (failed > 0 && failed >= succeeded)
      return `version ${row.version} of ${row.handle} failed its health window: ${failed} of ${failed + succeeded} requests failed`;
    return undefined;
  }

  /** `withDeployment`: healthy, it goes back only because another model of its deployment failed. */
  async #rollBack(
    row: DeploymentModelRow,
    why: string,
    options: { withDeployment?: boolean } = {},
  ): Promise<void> {
    if (state(row) !== 'RollingBack') {
      // Recorded with the state (a rollback resumed after a crash keeps it).
      row.rolledBackWithDeployment = options.withDeployment === true;
      this.#transition(row, 'RollingBack', { reason: why });
    }
    try {
      const served = this.#served(row.handle);
      if (row.previousUrl) {
        if (served?.url !== row.previousUrl) {
          if (served) {
            if (served.staged) await this.#o.registry.abortStaged(row.handle);
            await this.#o.registry.stage(row.handle, row.previousUrl);
            await this.#o.registry.promote(row.handle);
          } else await this.#o.registry.load({ name: row.handle, url: row.previousUrl });
        }
      } else if (served) await this.#o.registry.unload(row.handle);
      this.#transition(row, 'RolledBack', {
        ended: true,
        committedVersion: row.previousVersion ?? row.committedVersion,
      });
      this.#o.logger.warn(
        { event: 'deployment-rolled-back', model: row.handle, reason: why },
        `deployment ${row.deploymentName}: ${row.handle} rolled back to ${row.previousVersion ?? 'nothing (first install)'}: ${why}`,
      );
    } catch (error) {
      this.#transition(row, 'Failed', {
        ended: true,
        rollbackFailureReason: (error as Error).message,
      });
      this.#o.logger.error(
        { event: 'deployment-rollback-failed', model: row.handle, err: error },
        `deployment ${row.deploymentName}: rolling ${row.handle} back failed: ${(error as Error).message}`,
      );
    }
  }

  /** A failure before the switch: the old version never stopped serving; nothing half-installed stays. */
  async #fail(row: DeploymentModelRow, reason: string): Promise<void> {
    const served = this.#served(row.handle);
    if (served?.url === row.packageDir) {
      await this.#rollBack(row, reason);
      return;
    }
    if (served?.staged?.url === row.packageDir)
      await this.#o.registry.abortStaged(row.handle).catch(() => {});
    this.#transition(row, 'Failed', { reason, ended: true });
    await this.#o.store.discard([row.packageDir, row.sha256 && this.#o.store.downloadPath(row.sha256)]);
    this.#o.logger.error(
      { event: 'deployment-failed', model: row.handle, deployment: row.deploymentName, reason },
      `deployment ${row.deploymentName}: ${row.handle} FAILED: ${reason}`,
    );
  }

  #check(row: DeploymentModelRow, to: DeploymentState): void {
    const from = state(row);
    if (!canTransition(from, to))
      throw new Error(`update engine bug: ${row.handle} cannot go from ${from} to ${to}`);
  }

  /** Writes the new state (committed to the database) before the caller acts on it. */
  #transition(
    row: DeploymentModelRow,
    to: DeploymentState,
    changes: {
      reason?: string | null;
      ended?: boolean;
      rollbackFailureReason?: string;
      committedVersion?: string | null;
      /** When it happened, when not now (a commit restored as it was). */
      at?: number;
    } = {},
  ): void {
    this.#check(row, to);
    const now = changes.at ?? this.#now();
    row.state = to;
    row.updatedAt = now;
    if (changes.reason !== undefined) row.reason = changes.reason;
    if (changes.rollbackFailureReason !== undefined)
      row.rollbackFailureReason = changes.rollbackFailureReason;
    if (changes.committedVersion !== undefined) row.committedVersion = changes.committedVersion;
    if (changes.ended) row.endedAt = now;
    if (FINAL_STATES.has(to)) row.reported = false;
    this.#o.repository.save(row);
    this.#o.metrics?.setState(row.handle, to);
    const step = STEP_WORDS[to];
    if (step !== undefined) {
      // Each step of the life cycle, so that the journal shows a deployment from its arrival, not only its end
      // (the final states have lines of their own).
      this.#o.logger.info(
        {
          event: 'deployment-step',
          deployment: row.deploymentName,
          model: row.handle,
          version: row.version,
          state: to,
        },
        `deployment ${row.deploymentName}: ${row.handle}${row.version === null ? '' : ` ${row.version}`}: ${step(row)}`,
      );
    }
    if (FINAL_STATES.has(to)) this.#o.onFinal?.();
  }

  #served(handle: string): ModelDescription | undefined {
    return this.#o.registry.has(handle) ? this.#o.registry.describe(handle) : undefined;
  }

  /** Cut short by close() (the callers check the signal after it). */
  #sleep(ms: number): Promise<void> {
    return sleepUnlessAborted(ms, this.#abort.signal);
  }
}

/** When a deployment's models last ended (or changed). */
function latest(models: readonly DeploymentModelRow[]): number {
  return Math.max(...models.map((row) => row.endedAt ?? row.updatedAt));
}

/**
 * Whether a failed model's own new version served and failed (health window, crash loop, a failure after
 * its switch), or could not be rolled back: the server then does not retry, which would switch the failing
 * version in again. A model that failed before its switch (the old version kept serving), or a healthy one
 * rolled back only because another model of the deployment failed, is not.
 */
function failedAfterSwitch(row: DeploymentModelRow): boolean {
  if (row.rollbackFailureReason !== null) return true;
  return state(row) === 'RolledBack' && !row.rolledBackWithDeployment;
}

function state(row: DeploymentModelRow): DeploymentState {
  return isDeploymentState(row.state) ? row.state : 'Failed';
}

/** Whether the handle runs the deployment's model now (the DeploymentResult's State). */
function deployedState(row: DeploymentModelRow): 'DEPLOY' | 'UNDEPLOY' {
  const s = state(row);
  if (row.desired === 'UNDEPLOY') return s === 'Committed' ? 'UNDEPLOY' : 'DEPLOY';
  return s === 'Committed' || s === 'HealthCheck' ? 'DEPLOY' : row.previousUrl ? 'DEPLOY' : 'UNDEPLOY';
}

/** The rows' deployment as the pass writing it names it (what a storage-full result reports). */
function workingOnRows(rows: DeploymentModelRow[]): WorkingOn {
  return {
    deployment: rows[0]!.deploymentName,
    models: rows.map((row) => ({
      handle: row.handle,
      modelName: row.modelName,
      version: row.version,
      desired: row.desired,
    })),
  };
}

function storageFullMessage(deployment: string | undefined, reason: string): string {
  if (deployment === undefined)
    return `the device's storage is full: ${reason}; the state of the updates cannot be recorded, so they do not go on (what served before still serves); they go on by themselves once space is freed on the agent's data root`;
  return `the device's storage is full: ${reason}; the state of deployment ${deployment} cannot be recorded, so it does not go on (what served before still serves, and nothing is claimed that the agent has not recorded); it goes on by itself once space is freed on the agent's data root`;
}

function truncate(text: string): string {
  return text.length > 1000 ? `${text.slice(0, 997)}…` : text;
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}
