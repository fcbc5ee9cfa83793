import { join, resolve } from 'node:path';
import { z } from 'zod';
import { defaultRestSocketPath } from '@edgefleet/core';
import {
  DEFAULT_CAPTURE_DISK_QUOTA_BYTES,
  DEFAULT_CAPTURE_MIN_FREE_BYTES,
  DEFAULT_SPOOL_QUOTA_BYTES,
} from './capture-rules.js';
import { MAX_INSTANCES } from './batching-rules.js';
import { DEFAULT_ORT_SESSION_CONFIG, type ExecutionProviderConfig } from '../inference/session-options.js';
import {
  IOT_CREDENTIAL_ENDPOINT_FORMS,
  IOT_ROLE_ALIAS_FORM,
  IOT_ROLE_ALIAS_PATTERN,
  parseIotCredentialEndpoint,
} from '../capture/iot-credentials.js';
import { AgentConfigSchema, KEEP_FREED_MEMORY_BYTES, type AgentConfig } from './agent-config.js';
import { BACKEND_OPTIONS_KEY, mapBackendOptions, parseBackendOptions } from './backend-options.js';
import { MAX_UNIX_SOCKET_PATH_BYTES } from './command-line.js';
import { ConfigError, describeValue } from './errors.js';
import {
  autoCaptureRules,
  byteSize,
  byteSizeOrOff,
  choice,
  dynamicBatchingRules,
  endpoint,
  executionProviders,
  fileMode,
  flag,
  httpUrl,
  integer,
  listenAddress,
  matching,
  modelList,
  path,
  socketPathOrNone,
  text,
  type FieldKind,
} from './fields.js';

/** Every key the config file may hold: those of the SageMaker Edge agent, then ours (`edgefleet_…`). */
export const CONFIG_FIELDS = {
  sagemaker_edge_core_device_name: text(63),
  sagemaker_edge_core_device_uuid: text(63),
  sagemaker_edge_core_device_fleet_name: text(),
  sagemaker_edge_core_region: text(),
  sagemaker_edge_core_root_certs_path: path(),
  sagemaker_edge_core_endpoint_override: httpUrl(),
  sagemaker_edge_core_iot_thing_name: text(),
  sagemaker_edge_provider_provider: choice(['Aws', 'Custom', 'None']),
  sagemaker_edge_provider_provider_path: path(),
  sagemaker_edge_provider_s3_bucket_name: text(),
  sagemaker_edge_provider_aws_ca_cert_file: path(),
  sagemaker_edge_provider_aws_cert_file: path(),
  sagemaker_edge_provider_aws_cert_pk_file: path(),
  sagemaker_edge_provider_aws_iot_cred_endpoint: endpoint(),
  sagemaker_edge_log_verbose: flag(),
  sagemaker_edge_telemetry_libsystemd_path: path(),
  sagemaker_edge_core_capture_data_destination: choice(['Disk', 'Cloud', 'EdgeFleet']),
  sagemaker_edge_core_capture_data_disk_path: path(),
  sagemaker_edge_core_folder_prefix: text(),
  sagemaker_edge_core_capture_data_buffer_size: integer(2, 100_000, 30),
  sagemaker_edge_core_capture_data_batch_size: integer(1, 100_000, 10),
  sagemaker_edge_core_capture_data_push_period_seconds: integer(1, 86_400, 4),
  sagemaker_edge_core_capture_data_base64_embed_limit: integer(0, 1_048_576, 3072),
  sagemaker_edge_core_capture_data_periodic_upload: flag(),
  sagemaker_edge_core_capture_data_periodic_upload_period_seconds: integer(1, 604_800, 8),
  sagemaker_edge_db_module_path: path(),
  sagemaker_edge_local_data_root_path: path(),
  sagemaker_edge_deployment_lib_path: path(),
  sagemaker_edge_model_deployment_poll_interval: integer(1, 525_600, 1440),
  sagemaker_edge_dlr_backend_options: text(8192),

  edgefleet_inference_workers: integer(1, 256, 4),
  edgefleet_instances_per_model: integer(1, MAX_INSTANCES, 1),
  edgefleet_ort_intra_op_threads: integer(0, 1024, 1),
  edgefleet_ort_inter_op_threads: integer(0, 1024, 1),
  edgefleet_ort_graph_optimization_level: choice(['disabled', 'basic', 'extended', 'layout', 'all']),
  edgefleet_ort_execution_providers: executionProviders(),
  edgefleet_unload_timeout_seconds: integer(0, 3600, 30),
  edgefleet_startup_load_timeout_seconds: integer(1, 86_400, 60),
  edgefleet_metrics_unloaded_models: integer(0, 100_000, 64),
  edgefleet_max_queued_requests: integer(1, 1_000_000, 256),
  edgefleet_inline_max_run_micros: integer(0, 10_000, 200),
  edgefleet_inline_event_loop_percent: integer(0, 90, 25),
  edgefleet_inline_idle_max_run_micros: integer(0, 10_000, 1000),
  edgefleet_hot_wait_micros: integer(0, 10_000, 0),
  edgefleet_keep_freed_memory_bytes: byteSizeOrOff(
    KEEP_FREED_MEMORY_BYTES.min,
    KEEP_FREED_MEMORY_BYTES.max,
    '64MiB',
  ),
  edgefleet_dynamic_batching: dynamicBatchingRules(),
  edgefleet_rest_socket_path: socketPathOrNone(),
  edgefleet_rest_tcp: listenAddress(),
  edgefleet_rest_tcp_management: flag(),
  edgefleet_socket_mode: fileMode(),
  edgefleet_require_signatures: flag(),
  edgefleet_preload_models: modelList(),
  edgefleet_heartbeat_interval_seconds: integer(1, 86_400, 30),
  edgefleet_capture_model_monitor_format: flag(),
  edgefleet_capture_keep_uploaded_files: flag(),
  edgefleet_capture_spool_quota_bytes: byteSize(1024 ** 2, 1024 ** 5, '512MiB'),
  edgefleet_capture_disk_quota_bytes: byteSize(1024 ** 2, 1024 ** 5, '4GiB'),
  edgefleet_capture_min_free_bytes: byteSize(0, 1024 ** 5, '64MiB'),
  edgefleet_capture_s3_endpoint: httpUrl(),
  edgefleet_capture_s3_force_path_style: flag(),
  edgefleet_capture_iot_role_alias: matching(
    IOT_ROLE_ALIAS_PATTERN,
    `an AWS IoT role alias: ${IOT_ROLE_ALIAS_FORM} (e.g. "SageMakerEdge-line-1")`,
  ),
  edgefleet_capture_auto: autoCaptureRules(),
  edgefleet_db_synchronous: choice(['NORMAL', 'FULL']),
  edgefleet_deployment_poll_interval_seconds: integer(1, 86_400, 60),
  edgefleet_deployment_health_window_seconds: integer(0, 3600, 30),
  edgefleet_deployment_update_lock_path: path(),
  edgefleet_deployment_max_lock_hold_seconds: integer(1, 604_800, 3600),
  edgefleet_deployment_max_package_bytes: byteSize(1024, 1024 ** 4, '4GiB'),
  edgefleet_deployment_min_free_bytes: byteSize(0, 1024 ** 5, '64MiB'),
  edgefleet_max_bodies_in_flight_bytes: byteSize(1024 ** 2, 1024 ** 4, '256MiB'),
  edgefleet_max_responses_queued_bytes: byteSize(1024 ** 2, 1024 ** 4, '256MiB'),
  edgefleet_grpc_receive_timeout_seconds: integer(1, 3600, 30),
  edgefleet_capture_max_bytes: byteSize(1024, 4 * 1024 ** 3, '4MiB'),
  edgefleet_capture_buffer_bytes: byteSize(1024 ** 2, 1024 ** 4, '256MiB'),
} satisfies Record<string, FieldKind<unknown>>;

export type ConfigKey = keyof typeof CONFIG_FIELDS;
export const CONFIG_KEYS = Object.keys(CONFIG_FIELDS) as ConfigKey[];

/** The file's keys once read leniently and checked; every key optional ("unset"). */
type ConfigFile = { [K in ConfigKey]?: z.infer<(typeof CONFIG_FIELDS)[K]['schema']> };
const ConfigFileSchema = z.object(
  Object.fromEntries(CONFIG_KEYS.map((key) => [key, CONFIG_FIELDS[key].schema.optional()])),
) as unknown as z.ZodType<ConfigFile>;

export const DEFAULTS = {
  captureDestination: 'Disk',
  folderPrefix: 'sme-capture',
  bufferSize: 30,
  batchSize: 10,
  pushPeriodSeconds: 4,
  base64EmbedLimit: 3072,
  periodicUploadPeriodSeconds: 8,
  pollIntervalMinutes: 1440,
  deploymentHealthWindowSeconds: 30,
  deploymentMaxLockHoldSeconds: 3600,
  deploymentMaxPackageBytes: 4 * 1024 ** 3,
  deploymentMinFreeBytes: 64 * 1024 ** 2,
  grpcReceiveTimeoutSeconds: 30,
  instancesPerModel: 1,
  unloadTimeoutSeconds: 30,
  startupLoadTimeoutSeconds: 60,
  metricsUnloadedModels: 64,
  maxQueuedRequests: 256,
  inlineMaxRunMicros: 200,
  inlineEventLoopPercent: 25,
  inlineIdleMaxRunMicros: 1000,
  hotWaitMicros: 0,
  /** Enough for the output buffers V8 lets pile up between collections (tens of MB for 588 KiB outputs). */
  keepFreedMemoryBytes: 32 * 1024 ** 2,
  socketMode: 0o660,
  localDataFolder: '.edgefleet',
  restTcpHost: '127.0.0.1',
  /** SQLite synchronous=NORMAL plus a background WAL fsync every second: FULL stalls the event loop per commit. */
  dbSynchronous: 'NORMAL',
} as const;

export interface ConfigContext {
  /** The agent's working directory: relative paths in the file are relative to it. */
  cwd: string;
  /** Cores available to the agent (os.availableParallelism()). */
  cpuCount: number;
  /** The gRPC socket from `-a`; the REST socket defaults to a sibling of it. */
  grpcSocketPath: string;
  /** The user the agent runs as, for the file checks of loadAgentConfig; default: this process's (getuid). */
  uid?: number;
}

export interface ParsedConfig {
  config: AgentConfig;
  /** Things worth telling the operator that do not stop start-up (unknown keys, ignored settings). */
  warnings: string[];
}

/**
 * Reads the parsed JSON of a config file. Pure: touches no files (see loadAgentConfig for the checks that do).
 * Throws ConfigError naming the key at fault.
 */
export function parseAgentConfig(json: unknown, context: ConfigContext): ParsedConfig {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new ConfigError(
      null,
      `the config file must hold a JSON object of "key": value pairs, got ${describeValue(json)}`,
    );
  }
  const raw = json as Record<string, unknown>;
  const warnings: string[] = [];
  const normalized: Record<string, unknown> = {};
  for (const key of Object.keys(raw)) {
    if (!Object.hasOwn(CONFIG_FIELDS, key)) {
      warnings.push(unknownKeyWarning(key));
      continue;
    }
    const value = CONFIG_FIELDS[key as ConfigKey].read(raw[key]);
    if (value !== undefined) normalized[key] = value;
  }
  const checked = ConfigFileSchema.safeParse(normalized);
  if (!checked.success) {
    const issue = checked.error.issues[0];
    const key = String(issue?.path[0] ?? '');
    const field = CONFIG_FIELDS[key as ConfigKey];
    // Inside a list or object value, also say where and what: "item 2, sampleRate: Too big: …".
    const detail =
      issue && issue.path.length > 1 ? ` (${describeIssuePath(issue.path.slice(1))}: ${issue.message})` : '';
    throw new ConfigError(key, `${key}: expected ${field.expected}, got ${describeValue(raw[key])}${detail}`);
  }
  const config = buildConfig(checked.data, context, warnings);
  return { config: AgentConfigSchema.parse(config), warnings };
}

function buildConfig(file: ConfigFile, context: ConfigContext, warnings: string[]): AgentConfig {
  const abs = (p: string | null | undefined): string | undefined =>
    p === undefined || p === null ? undefined : resolve(context.cwd, p);
  const fail = (key: ConfigKey, message: string): never => {
    throw new ConfigError(key, `${key}: ${message}`);
  };

  // Device identity; `…_device_uuid` is the older spelling of `…_device_name`.
  let deviceName = file.sagemaker_edge_core_device_name;
  const uuid = file.sagemaker_edge_core_device_uuid;
  if (deviceName === undefined) deviceName = uuid;
  else if (uuid !== undefined && uuid !== deviceName) {
    warnings.push(
      `sagemaker_edge_core_device_uuid (${JSON.stringify(uuid)}) is an older name for sagemaker_edge_core_device_name and differs from it; using sagemaker_edge_core_device_name (${JSON.stringify(deviceName)})`,
    );
  }

  const providerKind = file.sagemaker_edge_provider_provider ?? 'None';
  const endpointUrl = file.sagemaker_edge_core_endpoint_override;
  if (providerKind !== 'None') {
    if (deviceName === undefined)
      fail(
        'sagemaker_edge_core_device_name',
        `is required when sagemaker_edge_provider_provider is ${providerKind}: the device's name as registered in its fleet`,
      );
    if (file.sagemaker_edge_core_device_fleet_name === undefined)
      fail(
        'sagemaker_edge_core_device_fleet_name',
        `is required when sagemaker_edge_provider_provider is ${providerKind}: the fleet the device is registered in`,
      );
    if (endpointUrl === undefined)
      warnings.push(
        `sagemaker_edge_provider_provider is ${providerKind} but sagemaker_edge_core_endpoint_override is not set: there is no control plane to talk to (Edge Manager's cloud is retired), so the agent runs offline; set it to the EdgeFleet server's URL`,
      );
  }
  for (const ignored of [
    'sagemaker_edge_provider_provider_path',
    'sagemaker_edge_telemetry_libsystemd_path',
  ] as const) {
    if (file[ignored] !== undefined)
      warnings.push(`${ignored} names a plug-in of the original agent; it is accepted and ignored`);
  }

  // Capture.
  const destination = file.sagemaker_edge_core_capture_data_destination ?? DEFAULTS.captureDestination;
  const bucket = file.sagemaker_edge_provider_s3_bucket_name;
  if (destination === 'Cloud') {
    if (providerKind === 'None')
      fail(
        'sagemaker_edge_core_capture_data_destination',
        'is Cloud but sagemaker_edge_provider_provider is None (offline); expected Disk, or a provider of Aws or Custom',
      );
    if (bucket === undefined)
      fail(
        'sagemaker_edge_provider_s3_bucket_name',
        'is required when sagemaker_edge_core_capture_data_destination is Cloud',
      );
  }
  if (destination === 'EdgeFleet') {
    // Captures go to the control plane over the device's enrolled identity (what the fleet client uses).
    if (providerKind === 'None')
      fail(
        'sagemaker_edge_core_capture_data_destination',
        'is EdgeFleet but sagemaker_edge_provider_provider is None (offline); expected Disk, or a provider of Aws',
      );
    if (!file.sagemaker_edge_core_endpoint_override?.startsWith('https://'))
      fail(
        'sagemaker_edge_core_capture_data_destination',
        'is EdgeFleet, which uploads to the control plane; it needs sagemaker_edge_core_endpoint_override (https://) — "edgefleet device enroll" sets it',
      );
    if (
      file.sagemaker_edge_provider_aws_cert_file === undefined ||
      file.sagemaker_edge_provider_aws_cert_pk_file === undefined
    )
      fail(
        'sagemaker_edge_core_capture_data_destination',
        'is EdgeFleet, which uploads with the device certificate; it needs sagemaker_edge_provider_aws_cert_file and sagemaker_edge_provider_aws_cert_pk_file — "edgefleet device enroll" sets them',
      );
  }
  const periodicUpload = file.sagemaker_edge_core_capture_data_periodic_upload ?? false;
  if (periodicUpload) {
    if (destination !== 'Disk')
      warnings.push(
        `sagemaker_edge_core_capture_data_periodic_upload applies to Disk captures only; ignored with ${destination}`,
      );
    else if (providerKind === 'None' || bucket === undefined)
      fail(
        'sagemaker_edge_core_capture_data_periodic_upload',
        'is true, which uploads Disk captures to the bucket; it needs sagemaker_edge_provider_provider Aws or Custom and sagemaker_edge_provider_s3_bucket_name',
      );
  }
  const bufferSize = file.sagemaker_edge_core_capture_data_buffer_size ?? DEFAULTS.bufferSize;
  const batchSize =
    file.sagemaker_edge_core_capture_data_batch_size ?? Math.min(DEFAULTS.batchSize, bufferSize - 1);
  if (batchSize >= bufferSize)
    fail(
      file.sagemaker_edge_core_capture_data_batch_size !== undefined
        ? 'sagemaker_edge_core_capture_data_batch_size'
        : 'sagemaker_edge_core_capture_data_buffer_size',
      `the batch size (${batchSize}) must be smaller than the buffer size (${bufferSize}), e.g. batch 10 with buffer 30`,
    );
  const base64EmbedLimit =
    file.sagemaker_edge_core_capture_data_base64_embed_limit ?? DEFAULTS.base64EmbedLimit;
  if (base64EmbedLimit > DEFAULTS.base64EmbedLimit)
    warnings.push(
      `sagemaker_edge_core_capture_data_base64_embed_limit is ${base64EmbedLimit}, above the original agent's maximum of ${DEFAULTS.base64EmbedLimit}; capture records will embed larger items`,
    );

  // EdgeFleet's capture settings: each is warned about where it cannot take effect, so a setting that does
  // nothing is not mistaken for one that works.
  const effectivePeriodicUpload = periodicUpload && destination === 'Disk';
  if (file.edgefleet_capture_keep_uploaded_files !== undefined && !effectivePeriodicUpload)
    warnings.push(
      'edgefleet_capture_keep_uploaded_files applies to the periodic upload of Disk captures (sagemaker_edge_core_capture_data_periodic_upload); ignored',
    );
  if (file.edgefleet_capture_spool_quota_bytes !== undefined && destination === 'Disk')
    warnings.push(
      'edgefleet_capture_spool_quota_bytes limits the offline spool of Cloud and EdgeFleet captures; ignored with sagemaker_edge_core_capture_data_destination Disk',
    );
  if (file.edgefleet_capture_disk_quota_bytes !== undefined && destination !== 'Disk')
    warnings.push(
      `edgefleet_capture_disk_quota_bytes limits the files of Disk captures; ignored with sagemaker_edge_core_capture_data_destination ${destination}`,
    );
  if (destination !== 'Cloud' && !effectivePeriodicUpload) {
    for (const key of ['edgefleet_capture_s3_endpoint', 'edgefleet_capture_s3_force_path_style'] as const)
      if (file[key] !== undefined)
        warnings.push(
          `${key} applies to the bucket of Cloud captures or of the periodic upload, and neither is on; ignored`,
        );
  }
  const iotCredentials =
    file.sagemaker_edge_provider_aws_iot_cred_endpoint !== undefined &&
    file.sagemaker_edge_provider_aws_cert_file !== undefined &&
    file.sagemaker_edge_provider_aws_cert_pk_file !== undefined;
  if (file.edgefleet_capture_iot_role_alias !== undefined && !iotCredentials)
    warnings.push(
      'edgefleet_capture_iot_role_alias is used with the AWS IoT credentials provider, which needs sagemaker_edge_provider_aws_iot_cred_endpoint, sagemaker_edge_provider_aws_cert_file and sagemaker_edge_provider_aws_cert_pk_file; ignored',
    );
  // AWS's Edge Manager samples wrote the full credentials URL, role alias included: that alias is the one used.
  let iotRoleAlias = file.edgefleet_capture_iot_role_alias;
  const iotEndpoint = file.sagemaker_edge_provider_aws_iot_cred_endpoint;
  if (iotEndpoint !== undefined) {
    const parsedIotEndpoint = parseIotCredentialEndpoint(iotEndpoint);
    if (parsedIotEndpoint === undefined)
      fail(
        'sagemaker_edge_provider_aws_iot_cred_endpoint',
        `expected ${IOT_CREDENTIAL_ENDPOINT_FORMS}, got ${JSON.stringify(iotEndpoint)}`,
      );
    const urlAlias = parsedIotEndpoint?.roleAlias;
    if (urlAlias !== undefined) {
      if (iotRoleAlias !== undefined && iotRoleAlias !== urlAlias)
        warnings.push(
          `edgefleet_capture_iot_role_alias is ${JSON.stringify(iotRoleAlias)} but sagemaker_edge_provider_aws_iot_cred_endpoint is a credentials URL for role alias ${JSON.stringify(urlAlias)}; ${JSON.stringify(urlAlias)} is used (give the endpoint as a host name for edgefleet_capture_iot_role_alias to apply)`,
        );
      iotRoleAlias = urlAlias;
    }
  }

  // Storage and deployments.
  const localDataRootPath =
    abs(file.sagemaker_edge_local_data_root_path) ?? resolve(context.cwd, DEFAULTS.localDataFolder);
  let dbEnabled = file.sagemaker_edge_db_module_path !== undefined;
  let deploymentsEnabled = file.sagemaker_edge_deployment_lib_path !== undefined;
  if (deploymentsEnabled && providerKind === 'None') {
    warnings.push(
      'sagemaker_edge_deployment_lib_path enables deployments, but sagemaker_edge_provider_provider is None (offline); deployments stay off',
    );
    deploymentsEnabled = false;
  }
  if (deploymentsEnabled && !dbEnabled) {
    warnings.push(
      'deployments (sagemaker_edge_deployment_lib_path) need the local database; enabling it (as if sagemaker_edge_db_module_path were set)',
    );
    dbEnabled = true;
  }
  if (file.edgefleet_db_synchronous !== undefined && !dbEnabled)
    warnings.push(
      'edgefleet_db_synchronous applies to the local database, which is off (set sagemaker_edge_db_module_path to enable it); ignored',
    );

  // Trust.
  const rootCertsPath = abs(file.sagemaker_edge_core_root_certs_path);
  const requireSignatures = file.edgefleet_require_signatures ?? rootCertsPath !== undefined;
  if (requireSignatures && rootCertsPath === undefined)
    fail(
      'edgefleet_require_signatures',
      'is true but sagemaker_edge_core_root_certs_path is not set; expected a folder of PEM root certificates to verify signatures against',
    );
  if (!requireSignatures && rootCertsPath !== undefined)
    warnings.push(
      'edgefleet_require_signatures is false: packages whose signatures do not verify are loaded anyway',
    );

  // Inference.
  const inlineMaxRunMicros = file.edgefleet_inline_max_run_micros ?? DEFAULTS.inlineMaxRunMicros;
  const inlineIdleMaxRunMicros = file.edgefleet_inline_idle_max_run_micros ?? DEFAULTS.inlineIdleMaxRunMicros;
  if (
    file.edgefleet_inline_idle_max_run_micros !== undefined &&
    inlineIdleMaxRunMicros > 0 &&
    inlineIdleMaxRunMicros <= inlineMaxRunMicros
  )
    warnings.push(
      `edgefleet_inline_idle_max_run_micros (${inlineIdleMaxRunMicros}) is not above edgefleet_inline_max_run_micros ` +
        `(${inlineMaxRunMicros}): no model runs as an idle run; expected a higher ceiling, or 0 to say idle runs are off`,
    );
  const workers = file.edgefleet_inference_workers ?? Math.max(1, context.cpuCount);
  const ort = {
    ...DEFAULT_ORT_SESSION_CONFIG,
    intraOpNumThreads: Math.max(1, Math.floor(context.cpuCount / workers)),
  };
  const backendEntries =
    file.sagemaker_edge_dlr_backend_options === undefined
      ? []
      : parseBackendOptions(file.sagemaker_edge_dlr_backend_options);
  const { overlay, warnings: backendWarnings } = mapBackendOptions(backendEntries);
  warnings.push(...backendWarnings);
  const pick = <T>(explicit: T | undefined, fromBackend: T | undefined, fallback: T, key: ConfigKey): T => {
    if (explicit !== undefined && fromBackend !== undefined && explicit !== fromBackend)
      warnings.push(`${key} (${String(explicit)}) overrides ${BACKEND_OPTIONS_KEY} (${String(fromBackend)})`);
    return explicit ?? fromBackend ?? fallback;
  };
  ort.intraOpNumThreads = pick(
    file.edgefleet_ort_intra_op_threads,
    overlay.intraOpNumThreads,
    ort.intraOpNumThreads,
    'edgefleet_ort_intra_op_threads',
  );
  ort.interOpNumThreads = pick(
    file.edgefleet_ort_inter_op_threads,
    overlay.interOpNumThreads,
    ort.interOpNumThreads,
    'edgefleet_ort_inter_op_threads',
  );
  ort.graphOptimizationLevel = pick(
    file.edgefleet_ort_graph_optimization_level,
    overlay.graphOptimizationLevel,
    ort.graphOptimizationLevel,
    'edgefleet_ort_graph_optimization_level',
  );
  const eps: ExecutionProviderConfig[] = (
    file.edgefleet_ort_execution_providers ?? ort.executionProviders
  ).map((ep) => ({
    ...ep,
    ...(ep.name !== 'cpu' &&
      ep.deviceId === undefined &&
      overlay.deviceId !== undefined && { deviceId: overlay.deviceId }),
  }));
  if (new Set(eps.map((ep) => ep.name)).size !== eps.length)
    fail(
      'edgefleet_ort_execution_providers',
      'names an execution provider twice; expected each at most once',
    );
  if (Object.keys(overlay.tensorrt).length > 0) {
    const trt = eps.find((ep) => ep.name === 'tensorrt');
    if (trt) {
      trt.tensorrt = overlay.tensorrt;
      warnings.push(
        `${BACKEND_OPTIONS_KEY}: TensorRT settings (${Object.keys(overlay.tensorrt).join(', ')}) are recorded, but onnxruntime-node 1.30 passes only the device id to TensorRT; see docs/config.md`,
      );
    } else {
      warnings.push(
        `${BACKEND_OPTIONS_KEY}: TensorRT settings are ignored because the TensorRT execution provider is not enabled (add "tensorrt" to edgefleet_ort_execution_providers)`,
      );
    }
  }

  // Listeners.
  const restSocketSetting = file.edgefleet_rest_socket_path;
  const restSocketPath =
    restSocketSetting === null
      ? null
      : (abs(restSocketSetting) ?? defaultRestSocketPath(context.grpcSocketPath));
  if (restSocketPath !== null && Buffer.byteLength(restSocketPath) > MAX_UNIX_SOCKET_PATH_BYTES)
    fail(
      'edgefleet_rest_socket_path',
      `the REST socket path ${restSocketPath}${restSocketSetting === undefined ? ' (derived from -a)' : ''} is longer than the ${MAX_UNIX_SOCKET_PATH_BYTES} bytes a Unix socket path may have; set a shorter one`,
    );
  if (restSocketPath === context.grpcSocketPath)
    fail('edgefleet_rest_socket_path', 'is the gRPC socket given with -a; expected a different path');

  return {
    device: {
      ...(deviceName !== undefined && { name: deviceName }),
      ...(file.sagemaker_edge_core_device_fleet_name !== undefined && {
        fleetName: file.sagemaker_edge_core_device_fleet_name,
      }),
      ...(file.sagemaker_edge_core_region !== undefined && { region: file.sagemaker_edge_core_region }),
      ...(file.sagemaker_edge_core_iot_thing_name !== undefined && {
        iotThingName: file.sagemaker_edge_core_iot_thing_name,
      }),
    },
    trust: { ...(rootCertsPath !== undefined && { rootCertsPath }), requireSignatures },
    provider: dropUndefined({
      kind: providerKind,
      endpoint: endpointUrl,
      pluginPath: abs(file.sagemaker_edge_provider_provider_path),
      s3BucketName: bucket,
      caCertFile: abs(file.sagemaker_edge_provider_aws_ca_cert_file),
      certFile: abs(file.sagemaker_edge_provider_aws_cert_file),
      certKeyFile: abs(file.sagemaker_edge_provider_aws_cert_pk_file),
      iotCredentialEndpoint: file.sagemaker_edge_provider_aws_iot_cred_endpoint,
      heartbeatIntervalSeconds: file.edgefleet_heartbeat_interval_seconds,
    }),
    logging: dropUndefined({
      verbose: file.sagemaker_edge_log_verbose ?? false,
      libsystemdPath: abs(file.sagemaker_edge_telemetry_libsystemd_path),
    }),
    capture: {
      destination,
      diskPath: abs(file.sagemaker_edge_core_capture_data_disk_path) ?? join(localDataRootPath, 'capture'),
      folderPrefix: file.sagemaker_edge_core_folder_prefix ?? DEFAULTS.folderPrefix,
      bufferSize,
      batchSize,
      pushPeriodSeconds:
        file.sagemaker_edge_core_capture_data_push_period_seconds ?? DEFAULTS.pushPeriodSeconds,
      base64EmbedLimit,
      periodicUpload: effectivePeriodicUpload,
      periodicUploadPeriodSeconds:
        file.sagemaker_edge_core_capture_data_periodic_upload_period_seconds ??
        DEFAULTS.periodicUploadPeriodSeconds,
      modelMonitorFormat: file.edgefleet_capture_model_monitor_format ?? false,
      keepUploadedFiles: file.edgefleet_capture_keep_uploaded_files ?? false,
      spoolQuotaBytes: file.edgefleet_capture_spool_quota_bytes ?? DEFAULT_SPOOL_QUOTA_BYTES,
      diskQuotaBytes: file.edgefleet_capture_disk_quota_bytes ?? DEFAULT_CAPTURE_DISK_QUOTA_BYTES,
      diskMinFreeBytes: file.edgefleet_capture_min_free_bytes ?? DEFAULT_CAPTURE_MIN_FREE_BYTES,
      ...dropUndefined({
        s3Endpoint: file.edgefleet_capture_s3_endpoint,
        s3ForcePathStyle: file.edgefleet_capture_s3_force_path_style,
        iotRoleAlias,
      }),
      autoCapture: file.edgefleet_capture_auto ?? [],
      ...dropUndefined({
        maxCaptureBytes: file.edgefleet_capture_max_bytes,
        bufferBytes: file.edgefleet_capture_buffer_bytes,
      }),
    },
    storage: {
      localDataRootPath,
      dbEnabled,
      dbSynchronous: file.edgefleet_db_synchronous ?? DEFAULTS.dbSynchronous,
    },
    deployments: {
      enabled: deploymentsEnabled,
      pollIntervalMinutes: file.sagemaker_edge_model_deployment_poll_interval ?? DEFAULTS.pollIntervalMinutes,
      // Our key in seconds wins: the original's minutes cannot go below one minute.
      pollIntervalSeconds:
        file.edgefleet_deployment_poll_interval_seconds ??
        (file.sagemaker_edge_model_deployment_poll_interval ?? DEFAULTS.pollIntervalMinutes) * 60,
      healthWindowSeconds:
        file.edgefleet_deployment_health_window_seconds ?? DEFAULTS.deploymentHealthWindowSeconds,
      updateLockPath:
        abs(file.edgefleet_deployment_update_lock_path) ?? join(localDataRootPath, 'updates.lock'),
      maxLockHoldSeconds:
        file.edgefleet_deployment_max_lock_hold_seconds ?? DEFAULTS.deploymentMaxLockHoldSeconds,
      maxPackageBytes: file.edgefleet_deployment_max_package_bytes ?? DEFAULTS.deploymentMaxPackageBytes,
      minFreeBytes: file.edgefleet_deployment_min_free_bytes ?? DEFAULTS.deploymentMinFreeBytes,
    },
    limits: {
      ...(file.edgefleet_max_bodies_in_flight_bytes !== undefined && {
        bodiesInFlightBytes: file.edgefleet_max_bodies_in_flight_bytes,
      }),
      ...(file.edgefleet_max_responses_queued_bytes !== undefined && {
        responsesQueuedBytes: file.edgefleet_max_responses_queued_bytes,
      }),
      grpcReceiveTimeoutMs:
        (file.edgefleet_grpc_receive_timeout_seconds ?? DEFAULTS.grpcReceiveTimeoutSeconds) * 1000,
    },
    inference: {
      workers,
      instancesPerModel: file.edgefleet_instances_per_model ?? DEFAULTS.instancesPerModel,
      unloadTimeoutMs: (file.edgefleet_unload_timeout_seconds ?? DEFAULTS.unloadTimeoutSeconds) * 1000,
      startupLoadTimeoutMs:
        (file.edgefleet_startup_load_timeout_seconds ?? DEFAULTS.startupLoadTimeoutSeconds) * 1000,
      maxQueuedRequestsPerModel: file.edgefleet_max_queued_requests ?? DEFAULTS.maxQueuedRequests,
      inline: {
        maxRunMicros: inlineMaxRunMicros,
        eventLoopShare: (file.edgefleet_inline_event_loop_percent ?? DEFAULTS.inlineEventLoopPercent) / 100,
        idleMaxRunMicros: inlineIdleMaxRunMicros,
      },
      hotWaitMicros: file.edgefleet_hot_wait_micros ?? DEFAULTS.hotWaitMicros,
      keepFreedMemoryBytes: file.edgefleet_keep_freed_memory_bytes ?? DEFAULTS.keepFreedMemoryBytes,
      dynamicBatching: file.edgefleet_dynamic_batching ?? [],
      ort: { ...ort, executionProviders: eps },
      backendOptions: backendEntries,
    },
    rest: {
      socketPath: restSocketPath,
      tcp: file.edgefleet_rest_tcp ?? null,
      tcpManagement: file.edgefleet_rest_tcp_management ?? false,
    },
    socketMode: file.edgefleet_socket_mode ?? DEFAULTS.socketMode,
    ...(file.edgefleet_preload_models !== undefined && { preloadModels: file.edgefleet_preload_models }),
    metrics: {
      maxUnloadedModels: file.edgefleet_metrics_unloaded_models ?? DEFAULTS.metricsUnloadedModels,
    },
  };
}

// `/tmp/agent.sock` → `/tmp/agent.rest.sock` (in core: the CLI derives it the same way).
export { defaultRestSocketPath };

function dropUndefined<T extends Record<string, unknown>>(value: T): T {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as T;
}

/** `[1, 'sampleRate']` → "item 2, sampleRate" (items counted from 1, as people count them). */
function describeIssuePath(path: readonly PropertyKey[]): string {
  return path.map((part) => (typeof part === 'number' ? `item ${part + 1}` : String(part))).join(', ');
}

function unknownKeyWarning(key: string): string {
  const shown = JSON.stringify(key.length > 100 ? `${key.slice(0, 97)}...` : key);
  const near = closestKey(key);
  return `unknown config key ${shown} is ignored${near ? `; did you mean ${near}?` : ''}`;
}

/** The known key within a small edit distance, to catch typos. */
function closestKey(key: string): string | undefined {
  if (key.length > 120) return undefined;
  let best: { key: string; distance: number } | undefined;
  for (const candidate of CONFIG_KEYS) {
    const distance = editDistance(key.toLowerCase(), candidate);
    if (distance <= 3 && (!best || distance < best.distance)) best = { key: candidate, distance };
  }
  return best?.key;
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(
        previous[j]! + 1,
        current[j - 1]! + 1,
        previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1),
      );
    }
    previous = current;
  }
  return previous[b.length]!;
}
