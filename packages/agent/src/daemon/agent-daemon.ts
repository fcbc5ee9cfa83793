import { statfs } from 'node:fs/promises';
import { TrustPolicyError, loadTrustFolder, type TrustPolicy } from '@edgefleet/core';
import type { Logger } from 'pino';
import { ConfigError, loadAgentConfig, type AgentConfig, type CommandLineOptions } from '../config/index.js';
import {
  captureSettingsFromConfig,
  defaultMaxCaptureBytesFor,
  lockCaptureFolder,
  modelActivityObserver,
  startCaptureService,
  type RunningCapture,
} from '../capture/index.js';
import { startGrpcServer, type RunningGrpcServer } from '../grpc/index.js';
import { InferencePool, type PoolEvent } from '../inference/index.js';
import { AgentMetrics } from '../metrics/index.js';
import { startDeployments, type RunningDeployments } from '../deployments/index.js';
import { startFleetClient } from '../fleet/index.js';
import { ModelRegistry } from '../models/index.js';
import { DEFAULT_MAX_BODY_BYTES, startRestServer, type RestServer } from '../rest/index.js';
import { SharedMemoryReader, loadSysvShmAddon, type SysvShmAddon } from '../shm/index.js';
import {
  DataRootLock,
  FolderInUseError,
  FolderLockError,
  ModelActivity,
  agentDatabasePath,
  NewerAgentDatabaseError,
  openAgentDatabase,
  recordLoadedModels,
  restoreLoadedModels,
  LoadFailures,
  type AgentDatabase,
  type DatabaseRecovery,
} from '../state/index.js';
import { EXIT_CODES, StartupError } from './exit-codes.js';
import { registryLogger } from './logger.js';
import { bindUnixSocket, removeOwnSocketFile } from '../unix-socket/index.js';
import {
  BodyBudget,
  ResponseBudget,
  bodyBudgetWarning,
  defaultBodyBudgetBytes,
  defaultResponseBudgetBytes,
  responseBudgetWarning,
  slowReaderLog,
} from '../body-budget/index.js';
import { keepFreedMemory, threadCpuClock } from './process-tuning.js';
import { settlesWithin } from '../retry/index.js';
import { prepareSocketPath } from './socket-path.js';
import { BackgroundLoads } from './background-loads.js';

/** How long shutdown lets calls in flight finish before cancelling them. */
export const DEFAULT_SHUTDOWN_GRACE_MS = 10_000;
/** Idle shared memory attachments of removed segments are released at least this often. */
const SHM_SWEEP_INTERVAL_MS = 1_000;

export interface AgentDaemonOptions {
  commandLine: CommandLineOptions;
  /** The agent's working directory: relative paths (config, LoadModel urls) are relative to it. */
  cwd: string;
  logger: Logger;
  /** Cores available (default os.availableParallelism()). */
  cpuCount: number;
  /** The agent's version, for the start-up line. */
  version: string;
  /** Loads the native addon (default loadSysvShmAddon); tests pass one that throws, to run without it. */
  loadNativeAddon?: () => SysvShmAddon;
}

export interface AgentDaemon {
  readonly config: AgentConfig;
  readonly registry: ModelRegistry;
  readonly metrics: AgentMetrics;
  /** The update engine, when deployments are enabled. */
  readonly deployments: RunningDeployments | undefined;
  /** `unix://<path>` of the SageMaker Edge gRPC API. */
  readonly grpcAddress: string;
  /** Where the KServe v2 REST API listens (`unix:<path>`, `http://host:port`). */
  readonly restAddresses: string[];
  /**
   * Stops accepting requests, lets those in flight finish (up to graceMs, then cancels them), unloads every
   * model, stops the workers and removes the socket files. Safe to call more than once (returns the same promise).
   */
  shutdown(graceMs?: number): Promise<void>;
}

/**
 * Starts the agent: reads the config, locks the data root (one agent per data root: see DataRootLock) and a Disk
 * capture folder (one agent per capture folder), checks
 * the socket path, starts the inference workers, loads the preloaded models and those restored from the local
 * database, then listens (gRPC on `-a`, REST per config). Each of those loads is waited for at most
 * edgefleet_startup_load_timeout_seconds, so no package can keep the agent from listening: one still going then
 * finishes in the background, and until every such load has settled the agent says it is not ready
 * (GET /v2/health/ready), so only a client that sees it ready is sure to find them loaded.
 * Throws ConfigError (a key or option at fault) or StartupError (with its exit status); nothing is left running,
 * and the data root is let go.
 */
export async function startAgentDaemon(options: AgentDaemonOptions): Promise<AgentDaemon> {
  const { commandLine, logger } = options;
  const { config, warnings } = await loadAgentConfig(commandLine.configPath, {
    cwd: options.cwd,
    cpuCount: options.cpuCount,
    grpcSocketPath: commandLine.socketPath,
  });
  if (config.logging.verbose) logger.level = 'debug';
  for (const warning of warnings) logger.warn({ config: commandLine.configPath }, warning);
  if ((config.socketMode & 0o002) !== 0) {
    throw new ConfigError(
      'edgefleet_socket_mode',
      `edgefleet_socket_mode: ${config.socketMode.toString(8).padStart(4, '0')} lets every user connect to the agent and load or unload models; expected a mode without "others write", such as 0660 or 0600`,
    );
  }
  // One agent per data root, held until the process ends: taken before anything opens or changes a file there
  // (the database and its recovery, the sweep of orphaned payload files, deployments, the capture spool) and
  // before the socket checks, which a second agent with another socket, or one started while the first is
  // still loading models (its socket not bound yet), would pass.
  const dataRootLock = lockOrRefuse(() => DataRootLock.acquire(config.storage.localDataRootPath));
  logger.debug({ dataRoot: dataRootLock.dataRoot, lock: dataRootLock.path }, 'holding the data root');

  // Everything started from here is stopped again if a later step fails.
  const cleanups: Array<() => Promise<void> | void> = [() => dataRootLock.release()];
  const unwind = async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await Promise.resolve(cleanup()).catch(() => {});
  };
  try {
    // The config carries the capture settings, the `edgefleet_capture_*` ones included. A Disk destination's
    // folder is locked now, like the data root (one agent per capture folder), so that a second agent is refused
    // before it loads any model; the capture owns the lock from its start on.
    const captureSettings = captureSettingsFromConfig(
      config,
      // A capture may hold max(-m, 64 MiB) (shm captures larger than -m), unless edgefleet_capture_max_bytes says.
      { defaultMaxCaptureBytes: defaultMaxCaptureBytesFor(commandLine.maxMessageBytes) },
      process.env,
    );
    const captureFolderLock =
      captureSettings.destination === 'Disk'
        ? lockOrRefuse(() => lockCaptureFolder(captureSettings.diskPath))
        : undefined;
    if (captureFolderLock) cleanups.push(() => captureFolderLock.release());
    const trust = await loadTrust(config, logger);
    await prepareSocketPath(commandLine.socketPath, commandLine.removeStaleSocket).then(
      ({ removedStale }) => {
        if (removedStale) logger.warn({ socket: commandLine.socketPath }, 'removed a stale socket file (-f)');
      },
    );
    const addon = loadNativeAddon(logger, options.loadNativeAddon ?? loadSysvShmAddon);
    keepFreedMemory(config.inference.keepFreedMemoryBytes, logger, addon);
    const metrics = new AgentMetrics({ maxUnloadedModels: config.metrics.maxUnloadedModels });
    const pool = await InferencePool.start({
      workers: config.inference.workers,
      // ONNX Runtime writes its own log lines (ANSI-coloured) to stderr, between the agent's JSON lines, and
      // onnxruntime-node cannot hand them to our logger. Its failures reach us as errors, which we log; its
      // warnings only help when debugging, so they appear with sagemaker_edge_log_verbose only.
      session: { ...config.inference.ort, logSeverityLevel: config.logging.verbose ? 2 : 4 },
      maxQueuedPerModel: config.inference.maxQueuedRequestsPerModel,
      inline: config.inference.inline,
      hotWaitMicros: config.inference.hotWaitMicros,
      onEvent: (event) => onPoolEvent(event, logger, metrics),
      ...threadCpuClock(addon),
    });
    cleanups.push(() => pool.close());
    metrics.watchPool(() => pool.stats());
    const registry = new ModelRegistry({
      pool,
      trust,
      requireSignatures: config.trust.requireSignatures,
      cwd: options.cwd,
      instancesPerModel: config.inference.instancesPerModel,
      dynamicBatching: config.inference.dynamicBatching,
      unloadTimeoutMs: config.inference.unloadTimeoutMs,
      metrics,
      logger: registryLogger(logger),
    });
    cleanups.push(() => registry.close());
    const sharedMemory = addon ? new SharedMemoryReader({ addon }) : null;
    const shmSweeper = sharedMemory
      ? setInterval(() => sharedMemory.sweep(), SHM_SWEEP_INTERVAL_MS).unref()
      : undefined;
    const closeSharedMemory = () => {
      clearInterval(shmSweeper);
      sharedMemory?.close();
    };
    cleanups.push(closeSharedMemory);

    const backgroundLoads = new BackgroundLoads({
      onSettled: () =>
        logger.info(
          { event: 'ready', models: registry.list().map((m) => m.name) },
          'the start-up loads that went on in the background have finished: ready',
        ),
    });
    await preloadModels(config, registry, logger, backgroundLoads);

    // The local database (DbEnable): the capture queue, the models to load again after a restart, counters.
    const opened = config.storage.dbEnabled
      ? refuseNewerDatabase(() =>
          openAgentDatabase({
            path: agentDatabasePath(config.storage.localDataRootPath),
            synchronous: config.storage.dbSynchronous,
          }),
        )
      : undefined;
    if (opened?.recovery) reportRecovery(opened.recovery, logger);
    const database = opened?.database;
    if (database) reportSchema(database, options.version, logger);
    // Why a model restored at start-up did not load: status and heartbeats say it for a deployed handle.
    const loadFailures = new LoadFailures();
    if (database) {
      cleanups.push(() => database.close());
      registry.observe(loadFailures.observer());
      await restoreLoadedModels(registry, database.loadedModels, logger, {
        onFailed: (name, error) => loadFailures.record(name, error),
        deadlineMs: config.inference.startupLoadTimeoutMs,
        onStillLoading: (name, loading) => backgroundLoads.track(name, loading),
      });
      registry.observe(recordLoadedModels(database.loadedModels, Date.now, logger));
    }
    const activity = new ModelActivity({
      ...(database && { repository: database.modelCounters }),
      logger,
    });
    cleanups.push(() => activity.close());
    registry.observe(modelActivityObserver(activity));
    const capture: RunningCapture = await startCaptureService({
      settings: captureSettings,
      ...(captureFolderLock && { folderLock: captureFolderLock }),
      models: registry,
      ...(database && { database }),
      metricsRegistry: metrics.registry,
      activity,
      logger,
      env: process.env,
    });
    cleanups.push(() => capture.close());

    // The update engine (sagemaker_edge_deployment_lib_path): it first resumes what a crash interrupted.
    const deployments: RunningDeployments | undefined = database
      ? await startDeployments({
          config,
          registry,
          repository: database.deployments,
          trust,
          metricsRegistry: metrics.registry,
          logger,
          loadFailure: (handle) => loadFailures.get(handle),
        })
      : undefined;
    if (deployments) cleanups.push(() => deployments.stop());

    // One byte budget for request bodies and messages in flight, across both doors (docs/security.md#limits).
    const maxBodyBytes = Math.max(DEFAULT_MAX_BODY_BYTES, commandLine.maxMessageBytes);
    const bodyBudget = new BodyBudget(
      config.limits.bodiesInFlightBytes ?? defaultBodyBudgetBytes(maxBodyBytes),
    );
    const budgetWarning = bodyBudgetWarning(bodyBudget.limitBytes, maxBodyBytes, commandLine.maxMessageBytes);
    if (budgetWarning !== undefined) logger.warn({ config: commandLine.configPath }, budgetWarning);
    // And one for answers waiting for clients that do not read them (docs/security.md#limits).
    const responseLimitBytes = config.limits.responsesQueuedBytes ?? defaultResponseBudgetBytes(maxBodyBytes);
    const responseBudget = new ResponseBudget(responseLimitBytes, {
      onSlowReaderClosed: slowReaderLog(logger, responseLimitBytes, (door) => metrics.slowReaderClosed(door)),
    });
    const responseWarning = responseBudgetWarning(responseLimitBytes, commandLine.maxMessageBytes);
    if (responseWarning !== undefined) logger.warn({ config: commandLine.configPath }, responseWarning);
    let grpc: RunningGrpcServer | undefined;
    const socketInode = await bindUnixSocket(commandLine.socketPath, config.socketMode, async (bindPath) => {
      const started = await startGrpcServer({
        registry,
        sharedMemory,
        logger,
        socketPath: bindPath,
        maxMessageBytes: commandLine.maxMessageBytes,
        capture: capture.service,
        bodyBudget,
        responseBudget,
        receiveTimeoutMs: config.limits.grpcReceiveTimeoutMs,
        metrics,
      });
      cleanups.push(() => started.close(0).then(() => undefined));
      grpc = started;
    }).catch((error: Error) => {
      throw new StartupError(EXIT_CODES.SOCKET_UNAVAILABLE, error.message, { cause: error });
    });
    cleanups.push(() => removeOwnSocketFile(commandLine.socketPath, socketInode));
    const grpcServer = grpc!;
    // The server was bound in a private folder and moved into place: clients use the path asked for.
    const grpcAddress = `unix://${commandLine.socketPath}`;

    let rest: RestServer | undefined;
    if (config.rest.socketPath !== null || config.rest.tcp !== null) {
      rest = await startRestServer({
        registry,
        metrics,
        logger,
        version: options.version,
        maxBodyBytes,
        bodyBudget,
        responseBudget,
        socketMode: config.socketMode,
        closeTimeoutMs: DEFAULT_SHUTDOWN_GRACE_MS,
        sharedMemory,
        notReadyBecause: () =>
          backgroundLoads.settled
            ? undefined
            : `still loading in the background, past edgefleet_startup_load_timeout_seconds: ${backgroundLoads.pending.join(', ')}`,
        agentStatus: () => ({
          deployments: deployments
            ? {
                enabled: true,
                models: deployments.engine.status(),
                storageFull: deployments.engine.storageFull(),
              }
            : { enabled: false },
        }),
        ...(config.rest.socketPath !== null && { unixSocketPath: config.rest.socketPath }),
        ...(config.rest.tcp !== null && { tcp: config.rest.tcp }),
        tcpManagement: config.rest.tcpManagement,
      }).catch((error: Error) => {
        throw new StartupError(EXIT_CODES.SOCKET_UNAVAILABLE, error.message, { cause: error });
      });
      cleanups.push(() => rest!.close());
    }
    const restAddresses = rest?.addresses ?? [];
    // Heartbeats to the control plane (a no-op handle when the config names none).
    const fleet = await startFleetClient({
      ...(deployments && { deployments: deployments.engine }),
      storage: {
        read: async () => {
          const spool = capture.service.spoolState();
          return {
            dataRootFreeBytes: await statfs(dataRootLock.dataRoot).then((fs) => fs.bavail * fs.bsize),
            ...(spool && { captureSpoolBytes: spool.bytes, captureSpoolBatches: spool.batches }),
          };
        },
      },
      config,
      registry,
      metrics,
      activity,
      logger,
      agentVersion: options.version,
    });
    cleanups.push(() => fleet.stop());

    logger.info(
      {
        event: 'listening',
        version: options.version,
        dataRoot: dataRootLock.dataRoot,
        grpc: grpcAddress,
        rest: restAddresses,
        models: registry.list().map((m) => m.name),
        loadingInBackground: backgroundLoads.pending,
        maxMessageBytes: commandLine.maxMessageBytes,
        workers: config.inference.workers,
        sharedMemory: sharedMemory !== null,
      },
      `edgefleet-agent ${options.version} listening: gRPC ${grpcAddress}${restAddresses.length > 0 ? `, REST ${restAddresses.join(', ')}` : ''}`,
    );

    let stopping: Promise<void> | undefined;
    return {
      config,
      registry,
      metrics,
      deployments,
      grpcAddress,
      restAddresses,
      shutdown(graceMs = DEFAULT_SHUTDOWN_GRACE_MS) {
        stopping ??= (async () => {
          const began = Date.now();
          logger.info(
            { event: 'stopping', inflight: grpcServer.inflight, graceMs },
            'stopping: no new requests; finishing those in flight',
          );
          cleanups.length = 0; // this path stops everything itself, in order
          const [{ forced }] = await Promise.all([
            grpcServer.close(graceMs),
            rest?.close(),
            fleet.stop(),
            deployments?.stop(),
          ]);
          if (forced)
            logger.warn({ graceMs }, 'requests still running after the grace period were cancelled');
          await removeOwnSocketFile(commandLine.socketPath, socketInode);
          // Write what capture holds (with the database, what does not make it stays queued for the next start).
          const captureLeft = Math.max(0, graceMs - (Date.now() - began));
          let captureClosed = false;
          const closingCapture = capture.close();
          closingCapture.then(
            () => (captureClosed = true),
            () => (captureClosed = true),
          );
          await Promise.race([
            closingCapture,
            new Promise((resolve) => setTimeout(resolve, captureLeft).unref()),
          ]);
          const left = Math.max(0, graceMs - (Date.now() - began));
          await Promise.race([registry.close(), new Promise((resolve) => setTimeout(resolve, left).unref())]);
          await pool.close();
          closeSharedMemory();
          activity.close();
          database?.close();
          // Last: everything that writes in the data root has stopped. A capture write still running past the
          // grace period keeps the data root until it ends, so that another daemon in this process (an embedding,
          // a test) cannot sweep its payload files beside it; the binary exits at once, which cuts it off.
          if (captureClosed) dataRootLock.release();
          else {
            logger.warn(
              { graceMs },
              'capture still writing after the grace period: the data root stays held until it ends',
            );
            closingCapture.finally(() => dataRootLock.release()).catch(() => {});
          }
          logger.info({ event: 'stopped', ms: Date.now() - began }, 'stopped');
        })();
        return stopping;
      },
    };
  } catch (error) {
    await unwind();
    throw error;
  }
}

/**
 * Takes a folder's lock (the data root's, state/data-root-lock.ts, or the Disk capture folder's,
 * capture/disk-folder-lock.ts), refused alike: held by another agent, a StartupError with exit 4; not lockable
 * for a reason a person must fix (permissions, the mount, an unsafe lock file), a ConfigError naming the folder's
 * key (exit 2); for one that may pass (a full disk, an I/O error, too many open files), a StartupError with exit
 * 1, which the unit restarts. The lock's error is the cause.
 */
function lockOrRefuse<Lock>(acquire: () => Lock): Lock {
  try {
    return acquire();
  } catch (error) {
    if (error instanceof FolderInUseError)
      throw new StartupError(EXIT_CODES.DATA_ROOT_IN_USE, error.message, { cause: error });
    if (error instanceof FolderLockError) {
      const message = `${error.kind.configKey}: ${error.message}`;
      if (error.problem === 'failed') throw new StartupError(EXIT_CODES.FAILURE, message, { cause: error });
      throw new ConfigError(error.kind.configKey, message, { cause: error });
    }
    throw error;
  }
}

/** A newer agent's database: a StartupError a person must act on (not restarted), its message said once. */
function refuseNewerDatabase<T>(open: () => T): T {
  try {
    return open();
  } catch (error) {
    if (error instanceof NewerAgentDatabaseError)
      throw new StartupError(EXIT_CODES.NEWER_DATABASE, error.message, { cause: error });
    throw error;
  }
}

/** A damaged database was replaced: loud, with where the damaged copy is and what could not be saved. */
/** After an upgrade, the log says which schema the agent runs on and what changed it: one line per migration. */
function reportSchema(database: AgentDatabase, agentVersion: string, logger: Logger): void {
  logger.info(
    {
      event: 'database-opened',
      database: database.path,
      agentVersion,
      schemaVersion: database.schema.version,
      migrationsApplied: database.schema.applied.length,
    },
    `agent database ${database.path}: schema version ${database.schema.version} (edgefleet-agent ${agentVersion})`,
  );
  for (const migration of database.schema.applied) {
    logger.info(
      { event: 'migration-applied', database: database.path, version: migration.version },
      `applied agent database migration ${migration.version}: ${migration.description}`,
    );
  }
}

function reportRecovery(recovery: DatabaseRecovery, logger: Logger): void {
  const { salvaged, lostCaptureIds } = recovery;
  const lost =
    lostCaptureIds.length > 0
      ? `${lostCaptureIds.length} acknowledged capture(s) could not be read back and are reported FAILURE`
      : 'no acknowledged capture is known to be lost';
  const maybeMore = recovery.captureQueueComplete
    ? ''
    : ' (damaged pages stopped the read of the capture queue: captures without a readable status may be lost too)';
  logger.error(
    {
      event: 'database-recovered',
      database: recovery.path,
      damagedCopy: recovery.damagedCopy,
      reason: recovery.reason,
      salvaged,
      lostCaptures: lostCaptureIds.length,
      lostCaptureIds: lostCaptureIds.slice(0, 100),
      captureQueueComplete: recovery.captureQueueComplete,
    },
    `the agent database ${recovery.path} is damaged (${recovery.reason}); moved it to ${recovery.damagedCopy} for inspection and started a fresh one; salvaged ${salvaged.capture_queue} queued capture(s) and ${salvaged.loaded_models} loaded model record(s); ${lost}${maybeMore}`,
  );
}

async function loadTrust(config: AgentConfig, logger: Logger): Promise<TrustPolicy | null> {
  const folder = config.trust.rootCertsPath;
  if (folder === undefined) {
    logger.warn(
      'model package signatures are NOT verified: sagemaker_edge_core_root_certs_path is not set (fine for development; set it on devices)',
    );
    return null;
  }
  try {
    return await loadTrustFolder(folder);
  } catch (error) {
    if (error instanceof TrustPolicyError) {
      throw new ConfigError(
        'sagemaker_edge_core_root_certs_path',
        `sagemaker_edge_core_root_certs_path: ${error.message}`,
      );
    }
    throw error;
  }
}

/** The native addon (shm/sysv-shm-addon.ts), or null, saying what is lost without it. */
function loadNativeAddon(logger: Logger, load: () => SysvShmAddon): SysvShmAddon | null {
  try {
    return load();
  } catch (error) {
    logger.warn(
      { err: error },
      'the native addon did not load: System V shared memory is not available (Predict requests with shared_memory_handle will be refused, FAILED_PRECONDITION), inline runs are judged by the process CPU time, and glibc keeps its own malloc thresholds',
    );
    // A line of its own: this one is a security property, not a feature or a tuning lost.
    logger.warn(
      { event: 'caller_check_off', reason: 'native addon missing' },
      "model loads are not checked against the caller's rights: the caller's identity (SO_PEERCRED on the agent's Unix sockets) is read by the native addon, so gRPC LoadModel and REST model loads take any folder the agent can read from any caller that can reach the sockets (root, the agent's user and the sockets' group members), and every caller of /edgefleet/v1/status gets the answer for non-operators; build the addon (`npm run build:native -w @edgefleet/agent`) to check callers",
    );
    return null;
  }
}

/** `edgefleet_preload_models`, in order. A model that fails to load is logged; the agent serves the others. */
async function preloadModels(
  config: AgentConfig,
  registry: ModelRegistry,
  logger: Logger,
  backgroundLoads: BackgroundLoads,
): Promise<void> {
  const deadlineMs = config.inference.startupLoadTimeoutMs;
  for (const { url, name } of config.preloadModels ?? []) {
    const failed = (error: unknown): void => {
      logger.error(
        { err: error, model: name, url, code: (error as { code?: string }).code },
        `edgefleet_preload_models: could not load ${JSON.stringify(name)} from ${url}: ${(error as Error).message}`,
      );
    };
    const loading = registry.load({ url, name });
    // A load that takes longer than the deadline finishes in the background: no package can hold start-up.
    const inTime = await settlesWithin(loading, deadlineMs).catch((error: unknown) => {
      failed(error);
      return true;
    });
    if (inTime) continue;
    logger.warn(
      { model: name, url, deadlineMs },
      `edgefleet_preload_models: ${JSON.stringify(name)} (from ${url}) is still loading after ${deadlineMs / 1000} s; start-up goes on, and it keeps loading in the background (edgefleet_startup_load_timeout_seconds)`,
    );
    backgroundLoads.track(name, loading);
    loading.catch(failed);
  }
}

function onPoolEvent(event: PoolEvent, logger: Logger, metrics: AgentMetrics): void {
  switch (event.type) {
    case 'worker-exit':
      metrics.workerExited();
      logger.error(event, `inference worker ${event.worker} stopped (${event.reason}); replacing it`);
      break;
    case 'worker-restarted':
      logger.warn(event, `inference worker ${event.worker} restarted`);
      break;
    case 'instance-lost':
      logger.error(event, `model instance ${event.key} lost on worker ${event.worker}: ${event.reason}`);
      break;
    case 'inline-unavailable':
      logger.warn(
        event,
        `model ${event.key} stays on the inference workers: its session on the event loop could not be created (${event.reason})`,
      );
      break;
    case 'inline-parked':
      logger.warn(
        event,
        `model ${event.key} runs on the inference workers only for the next ${event.parkMs / 1000} s: ${event.demotions} of its runs on the event loop took far longer than its ceiling, none more than 10 minutes after the one before or the end of a park`,
      );
      break;
    case 'batching-unavailable':
      logger.warn(
        event,
        `model ${event.key} runs its requests one at a time from now on: a batched run's outputs could not be split along its batch dimension (${event.reason}); batching stays off for this load of the model`,
      );
      break;
  }
}
