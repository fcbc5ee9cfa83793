import type { Registry } from 'prom-client';
import type { AgentConfig } from '../config/index.js';
import type { PredictObserver } from '../models/index.js';
import type { AgentDatabase, FolderLock, ModelActivity } from '../state/index.js';
import type { CaptureLogger } from './capture-metrics.js';
import { MemoryCaptureQueue, SqliteCaptureQueue, type CaptureQueue } from './capture-queue.js';
import type { CaptureModelCatalog } from './capture-request.js';
import { CaptureService } from './capture-service.js';
import { DiskQuota } from './disk-quota.js';
import { DiskDestination, ObjectStoreDestination, type CaptureDestination } from './destinations.js';
import { lockCaptureFolder } from './disk-folder-lock.js';
import { EdgeFleetObjectStore } from './edgefleet-store.js';
import { S3ObjectStore, type ObjectStore } from './object-store.js';
import { captureSettingsFromConfig, type CaptureExtras, type CaptureSettings } from './settings.js';

export interface StartCaptureOptions {
  /** The agent's config (its `edgefleet_capture_*` settings included); or settings built already (tests, embedding). */
  config?: AgentConfig;
  settings?: CaptureSettings;
  /** Overrides of the config's `edgefleet_capture_*` settings (embedding). */
  extras?: CaptureExtras;
  /** The loaded models; with `observe` (ModelRegistry), automatic capture is attached to Predict. */
  models: CaptureModelCatalog & { observe?(observer: PredictObserver): () => void };
  /** The local database when enabled (config.storage.dbEnabled): the queue and the upload ledger live there. */
  database?: AgentDatabase;
  metricsRegistry?: Registry;
  activity?: ModelActivity;
  logger?: CaptureLogger;
  /** Environment for AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL (default: none read). */
  env?: Readonly<Record<string, string | undefined>>;
  /**
   * The Disk folder's lock, when the caller took it already (the daemon takes it at start, before loading models);
   * the capture then owns it and releases it on close. Otherwise a Disk destination's folder is locked here.
   */
  folderLock?: FolderLock;
}

export interface RunningCapture {
  service: CaptureService;
  /** Writes what is buffered, stops, detaches from Predict. */
  close(): Promise<void>;
}

/**
 * Wires capture from the agent's configuration: the queue (SQLite with the local database, else memory), the
 * destination (Disk folder, or the bucket for Cloud), the bucket client for the spool and the periodic upload,
 * and automatic capture on the registry's Predict path. Resumes what an earlier run left. What the daemon calls.
 * A Disk destination's folder is locked first (lockCaptureFolder: FolderInUseError when another agent
 * holds it, FolderLockError when it cannot be locked) and held until close.
 */
export async function startCaptureService(options: StartCaptureOptions): Promise<RunningCapture> {
  const settings =
    options.settings ??
    captureSettingsFromConfig(
      options.config ??
        (() => {
          throw new Error('startCaptureService needs config or settings');
        })(),
      options.extras,
      options.env,
    );
  // Before anything reads or changes a file there (the sweep, the quota's walk, writes, the periodic upload).
  const folderLock =
    options.folderLock ??
    (settings.destination === 'Disk' ? lockCaptureFolder(settings.diskPath) : undefined);
  try {
    return await startLocked(options, settings, folderLock);
  } catch (error) {
    folderLock?.release();
    throw error;
  }
}

async function startLocked(
  options: StartCaptureOptions,
  settings: CaptureSettings,
  folderLock: FolderLock | undefined,
): Promise<RunningCapture> {
  const cloud = settings.cloud;
  const store: (ObjectStore & { close(): void }) | undefined = settings.edgefleet
    ? new EdgeFleetObjectStore({ ...settings.edgefleet, ...(options.logger && { logger: options.logger }) })
    : cloud &&
      new S3ObjectStore({
        bucket: cloud.bucket,
        region: cloud.region,
        ...(cloud.endpoint !== undefined && { endpoint: cloud.endpoint }),
        ...(cloud.forcePathStyle !== undefined && { forcePathStyle: cloud.forcePathStyle }),
        ...(cloud.caFile !== undefined && { caFile: cloud.caFile }),
        credentials: cloud.credentials,
      });
  const destination: CaptureDestination =
    (settings.destination === 'Cloud' || settings.destination === 'EdgeFleet') && store
      ? new ObjectStoreDestination(store)
      : new DiskDestination(settings.diskPath, {
          quota: new DiskQuota({
            root: settings.diskPath,
            quotaBytes: settings.diskQuotaBytes,
            minFreeBytes: settings.diskMinFreeBytes,
          }),
        });
  const { logger, database } = options;
  const queue: CaptureQueue = database
    ? new SqliteCaptureQueue({
        repository: database.captureQueue,
        onDamaged: (captureId, error) =>
          logger?.error(
            { err: error, captureId },
            'capture: a queued capture could not be read back from its stored form (its row or payload file); marked FAILURE',
          ),
        onPayloadFolder: (problem) =>
          problem
            ? logger?.warn(
                { err: problem },
                'capture: the payload folder is unsafe; large captures are kept in the local database (on the event loop) until it is fixed',
              )
            : logger?.info(
                {},
                'capture: the payload folder is safe again; large captures are written as files',
              ),
        onReadTriesRecording: (problem) =>
          problem
            ? logger?.warn(
                { err: problem },
                'capture: the failed reads of queued captures cannot be recorded in the local database; they are counted in memory, so a restart counts them again from the last recorded try',
              )
            : logger?.info({}, 'capture: the failed reads of queued captures are recorded again'),
      })
    : new MemoryCaptureQueue();
  const service = new CaptureService({
    settings,
    models: options.models,
    queue,
    destination,
    ...(store && { store }),
    ...(database && { ledger: database.uploadLedger }),
    ...(options.metricsRegistry && { metricsRegistry: options.metricsRegistry }),
    ...(options.activity && { activity: options.activity }),
    ...(logger && { logger }),
    ...(folderLock && { folderLock }),
  });
  if (destination instanceof DiskDestination) {
    const swept = await destination.sweep().catch((error: unknown) => {
      logger?.warn({ err: error, folder: destination.root }, 'capture: could not sweep temporary files');
      return 0;
    });
    if (swept > 0) {
      logger?.info(
        { folder: destination.root, files: swept },
        `capture: removed ${swept} temporary file(s) left by writes that were interrupted`,
      );
    }
  }
  await service.start();
  const detach = settings.autoCapture.length > 0 ? options.models.observe?.(service.autoCapture) : undefined;
  logger?.info(
    {
      destination: destination.description,
      durable: queue.durable,
      bufferSize: settings.bufferSize,
      batchSize: settings.batchSize,
      pushPeriodSeconds: settings.pushPeriodSeconds,
      periodicUpload: settings.destination === 'Disk' && settings.periodicUpload,
      modelMonitorFormat: settings.modelMonitorFormat,
      automaticRules: settings.autoCapture.length,
    },
    'capture started',
  );
  return {
    service,
    async close() {
      detach?.();
      try {
        await service.close();
        store?.close();
      } finally {
        // Last: nothing of this capture writes in the folder any more.
        folderLock?.release();
      }
    },
  };
}
