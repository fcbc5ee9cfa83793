import { z } from 'zod';
import { DynamicBatchingRuleSchema } from './batching-rules.js';
import { AutoCaptureRuleSchema } from './capture-rules.js';
import { OrtSessionConfigSchema } from '../inference/session-options.js';
import { offOrWithin } from './fields.js';

/**
 * `edgefleet_keep_freed_memory_bytes` other than 0: less than a few MiB would put common outputs above the mmap
 * threshold (half the value), worse than glibc's adaptive one; more than 256 MiB would make every heap grow by at
 * least that much at a time (the top pad), which a small device may not have.
 */
export const KEEP_FREED_MEMORY_BYTES = { min: 4 * 1024 ** 2, max: 256 * 1024 ** 2 } as const;

/** The agent's configuration once read: every setting resolved (defaults applied, paths absolute). */
export const AgentConfigSchema = z.object({
  device: z.object({
    /** `sagemaker_edge_core_device_name` (or its older alias `…_device_uuid`). */
    name: z.string().max(63).optional(),
    fleetName: z.string().optional(),
    region: z.string().optional(),
    iotThingName: z.string().optional(),
  }),
  trust: z.object({
    /** Folder of PEM root certificates package signatures must chain to. */
    rootCertsPath: z.string().optional(),
    /** Refuse packages whose signature does not verify. True when rootCertsPath is set, unless overridden. */
    requireSignatures: z.boolean(),
  }),
  provider: z.object({
    kind: z.enum(['Aws', 'Custom', 'None']),
    /** Our control plane's URL (`sagemaker_edge_core_endpoint_override`). */
    endpoint: z.string().optional(),
    /** The original's plug-in library: accepted and ignored. */
    pluginPath: z.string().optional(),
    s3BucketName: z.string().optional(),
    caCertFile: z.string().optional(),
    certFile: z.string().optional(),
    certKeyFile: z.string().optional(),
    iotCredentialEndpoint: z.string().optional(),
    /** `edgefleet_heartbeat_interval_seconds`; absent: the fleet client's default (30 s). */
    heartbeatIntervalSeconds: z.number().int().positive().optional(),
  }),
  logging: z.object({
    verbose: z.boolean(),
    /** Accepted and ignored. */
    libsystemdPath: z.string().optional(),
  }),
  capture: z.object({
    destination: z.enum(['Disk', 'Cloud', 'EdgeFleet']),
    diskPath: z.string(),
    folderPrefix: z.string(),
    bufferSize: z.number().int().positive(),
    batchSize: z.number().int().positive(),
    pushPeriodSeconds: z.number().int().positive(),
    base64EmbedLimit: z.number().int().nonnegative(),
    periodicUpload: z.boolean(),
    periodicUploadPeriodSeconds: z.number().int().positive(),
    // EdgeFleet's own capture settings (`edgefleet_capture_*`); the SageMaker config has no keys for them.
    /** Also write each batch in the SageMaker Model Monitor data-capture format. */
    modelMonitorFormat: z.boolean(),
    /** Periodic upload: keep uploaded Disk files (marked) instead of removing them. */
    keepUploadedFiles: z.boolean(),
    /** Disk space the offline spool of Cloud batches may use before it drops the oldest. */
    spoolQuotaBytes: z.number().int().positive(),
    /** Disk space the Disk destination's files may take; past it a batch is not written (FAILURE), nothing removed. */
    diskQuotaBytes: z.number().int().positive(),
    /**
     * Free space captures leave on their file system: past it a Disk batch is not written (FAILURE), and new
     * captures are refused while Cloud/EdgeFleet batches go to the offline spool.
     */
    diskMinFreeBytes: z.number().int().nonnegative(),
    /** S3-compatible endpoint of the bucket; absent: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS. */
    s3Endpoint: z.string().optional(),
    /** Path-style bucket addressing; absent: on when an endpoint is set. */
    s3ForcePathStyle: z.boolean().optional(),
    /** AWS IoT role alias for credentials; absent: `SageMakerEdge-<fleet>`. */
    iotRoleAlias: z.string().optional(),
    /** Automatic capture of Predict traffic. */
    autoCapture: z.array(AutoCaptureRuleSchema),
    /** Most bytes one capture may hold, tensors and auxiliary data (inline or shared memory); absent: `-m`. */
    maxCaptureBytes: z.number().int().positive().optional(),
    /** Most bytes the captures held in memory may hold together; absent: max(256 MiB, 4 × maxCaptureBytes). */
    bufferBytes: z.number().int().positive().optional(),
  }),
  storage: z.object({
    localDataRootPath: z.string(),
    /** The original enabled its database by naming a plug-in; ours is built in, enabled the same way. */
    dbEnabled: z.boolean(),
    /** SQLite `synchronous`: NORMAL (WAL fsynced every second in the background) or FULL (fsync per commit). */
    dbSynchronous: z.enum(['NORMAL', 'FULL']),
  }),
  deployments: z.object({
    enabled: z.boolean(),
    pollIntervalMinutes: z.number().int().positive(),
    /** What the poller uses: edgefleet_deployment_poll_interval_seconds, else the minutes above. */
    pollIntervalSeconds: z.number().int().positive(),
    /** How long a switched model is watched (inference failures) before it is committed. */
    healthWindowSeconds: z.number().int().nonnegative(),
    /** While this file exists the switch to a new version waits (the application's update lock). */
    updateLockPath: z.string(),
    /** After this long held, the deployment is reported HELD and retried at the next poll. */
    maxLockHoldSeconds: z.number().int().positive(),
    /** Largest package downloaded; a deployment announcing a larger Size fails before any download. */
    maxPackageBytes: z.number().int().positive(),
    /** Free space downloads and extractions leave on the package store's file system. */
    minFreeBytes: z.number().int().nonnegative(),
  }),
  /** Memory bounds of the two doors (docs/security.md#limits). */
  limits: z.object({
    /**
     * Request bodies (REST) and messages (gRPC) being received or held, in bytes, across both doors; absent:
     * max(256 MiB, 4 × the largest body or message).
     */
    bodiesInFlightBytes: z.number().int().positive().optional(),
    /**
     * Answers (gRPC response messages, REST responses) waiting for clients that do not read them, in bytes,
     * across both doors; past it, the connection whose answers have waited longest is closed. Absent: as
     * bodiesInFlightBytes's default.
     */
    responsesQueuedBytes: z.number().int().positive().optional(),
    /** A gRPC call whose request message is not complete this long after its headers is cancelled. */
    grpcReceiveTimeoutMs: z.number().int().positive(),
  }),
  inference: z.object({
    workers: z.number().int().positive(),
    instancesPerModel: z.number().int().positive(),
    /** How long UnLoadModel waits for in-flight predictions before failing what is still queued. */
    unloadTimeoutMs: z.number().int().nonnegative(),
    /**
     * How long start-up waits for each model it loads (preloaded or restored) before going on without it; the load
     * goes on in the background.
     */
    startupLoadTimeoutMs: z.number().int().positive(),
    /** Requests for one model waiting for a worker; more are refused with RESOURCE_EXHAUSTED. */
    maxQueuedRequestsPerModel: z.number().int().positive(),
    /**
     * The inline path (fast models on the event loop): per-run ceiling (0 = off), share of event-loop time, and
     * the higher per-run ceiling of idle runs, made only while the agent has nothing else to do (0 = none).
     */
    inline: z.object({
      maxRunMicros: z.number().int().min(0).max(10_000),
      eventLoopShare: z.number().min(0).max(0.9),
      idleMaxRunMicros: z.number().int().min(0).max(10_000),
    }),
    /** How long a worker polls for its next request after a run (0 = it sleeps at once). */
    hotWaitMicros: z.number().int().min(0).max(10_000),
    /**
     * Freed memory the C library keeps for reuse, per heap (glibc's trim threshold and top pad; 0 = glibc's own,
     * adaptive, thresholds): outputs onnxruntime-node copies into new buffers reuse pages instead of faulting fresh
     * ones in. See KEEP_FREED_MEMORY_BYTES for the range.
     */
    keepFreedMemoryBytes: offOrWithin(KEEP_FREED_MEMORY_BYTES.min, KEEP_FREED_MEMORY_BYTES.max),
    /** `edgefleet_dynamic_batching`: the models whose waiting requests are joined into one run (none: off). */
    dynamicBatching: z.array(DynamicBatchingRuleSchema),
    ort: OrtSessionConfigSchema,
    /** `sagemaker_edge_dlr_backend_options` as given, for the record. */
    backendOptions: z.array(z.object({ key: z.string(), value: z.string() })),
  }),
  rest: z.object({
    /** Unix socket for the KServe v2 REST API; null = no Unix listener. */
    socketPath: z.string().nullable(),
    /** Optional TCP listener. */
    tcp: z.object({ host: z.string(), port: z.number().int() }).nullable(),
    /**
     * `edgefleet_rest_tcp_management`: the TCP listener serves the model repository and the agent status too
     * (default false: only on the Unix socket, whose group is the permission; loopback TCP has no caller identity).
     */
    tcpManagement: z.boolean(),
  }),
  /** Permission bits given to the agent's socket files. */
  socketMode: z.number().int().min(0).max(0o7777),
  /** `edgefleet_preload_models`: loaded at start-up, in order (absent: none). */
  preloadModels: z.array(z.object({ url: z.string(), name: z.string() })).optional(),
  metrics: z.object({
    /** Models not loaded (unloaded, or whose loads failed) whose per-model series are kept, most recent first. */
    maxUnloadedModels: z.number().int().nonnegative(),
  }),
});
export type AgentConfig = z.infer<typeof AgentConfigSchema>;
