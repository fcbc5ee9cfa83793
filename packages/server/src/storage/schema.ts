/**
 * Row types of every table, as Kysely sees them. Times are epoch milliseconds (bigint columns, parsed
 * to numbers on both engines); JSON documents are stored as text.
 */
import type { ColumnType } from 'kysely';

/** A column added after its table: null unless set, and optional in an INSERT (rows written before it). */
type Nullable<T> = ColumnType<T | null, T | null | undefined, T | null>;

export interface ServerSettingsTable {
  key: string;
  value: string;
}

export interface ApiTokensTable {
  id: string;
  name: string;
  scope: string;
  token_hash: string;
  created_at: number;
  revoked_at: number | null;
}

export interface AccessKeysTable {
  access_key_id: string;
  name: string;
  scope: string;
  /** Set for keys of the SageMaker Edge data plane: the one device they may speak for. */
  device_name: string | null;
  /** base64url(iv | tag | AES-256-GCM ciphertext) of the secret access key. */
  secret_ciphertext: string;
  created_at: number;
  revoked_at: number | null;
  /** The ~/.aws/credentials profile its name gives (awsProfileName); unique among unrevoked keys. */
  aws_profile: string | null;
}

/** A SageMaker compilation job: an ONNX model imported from S3 (compilation/). */
export interface CompilationJobsTable {
  name: string;
  /** INPROGRESS | COMPLETED | FAILED | STOPPED */
  status: string;
  failure_reason: string | null;
  framework: string;
  framework_version: string | null;
  input_s3_uri: string;
  role_arn: string;
  output_s3_location: string;
  target_device: string | null;
  /** Where the imported model lives in the model registry. */
  model_name: string;
  model_version: string;
  model_sha256: string | null;
  model_size_bytes: number | null;
  tags: string;
  created_at: number;
  /** Renewed by the importing server while it imports (its lease; see background/lease.ts). */
  updated_at: number;
  /** The importing server's claim: a runner whose token is gone writes nothing more. */
  claim_token: string | null;
  /** CreateCompilationJob's StoppingCondition, JSON, echoed by DescribeCompilationJob. */
  stopping_condition: string | null;
  /** CreateCompilationJob's InputConfig.DataInputConfig, as sent. */
  data_input_config: string | null;
}

/** The facade's side of a packaging job: the compilation job it packaged, its role and tags. */
export interface EdgePackagingJobSourcesTable {
  job_name: string;
  compilation_job_name: string;
  role_arn: string;
  tags: string;
  /** The S3 object the job writes its package to (unique); null for a job created before it was recorded. */
  package_object_uri: string | null;
}

export interface FleetsTable {
  name: string;
  description: string | null;
  output_s3_location: string;
  output_kms_key_id: string | null;
  role_arn: string | null;
  tags: string;
  created_at: number;
  updated_at: number;
  /** Since when capture uploads find the output location unusable (null: they do not); 0014. */
  output_outage_since: Nullable<number>;
  /** Why (a BlobStoreProblem) and what to do, without the S3 endpoint or credentials. */
  output_outage_problem: Nullable<string>;
  output_outage_reason: Nullable<string>;
  /** When an upload last failed in this outage, to within a minute (0021); null: no outage. */
  output_outage_last_failure_at: Nullable<number>;
}

export interface DevicesTable {
  name: string;
  fleet_name: string;
  description: string | null;
  iot_thing_name: string | null;
  tags: string;
  registered_at: number;
  updated_at: number;
  agent_version: string | null;
  last_heartbeat_at: number | null;
  deployment_result: string | null;
  /** JSON DeployedModelNotLoaded[] of the last heartbeat (Since in epoch ms); null: its agent reports none. */
  deployed_models_not_loaded: string | null;
}

export interface DeviceTagsTable {
  device_name: string;
  key: string;
  value: string;
}

export interface DeviceModelsTable {
  device_name: string;
  model_name: string;
  model_version: string;
  latest_sample_time: number | null;
  latest_inference_time: number | null;
}

/**
 * The metrics of one heartbeat, as one row: a heartbeat's dozen metrics cost one insert and one index
 * entry per index instead of a dozen. `metrics` is a JSON array of
 * `[metricName, dimension, modelName, modelVersion, value, timestamp]` (nulls where absent); the row's
 * first/last timestamps bound those of its metrics, for range queries.
 */
export interface DeviceMetricBatchesTable {
  device_name: string;
  fleet_name: string;
  received_at: number;
  first_timestamp: number;
  last_timestamp: number;
  metric_count: number;
  metrics: string;
}

export interface DeviceCertificatesTable {
  serial: string;
  device_name: string;
  fleet_name: string;
  fingerprint_sha256: string;
  subject: string;
  not_before: number;
  not_after: number;
  issued_at: number;
  revoked_at: number | null;
  revocation_reason: string | null;
}

export interface EnrollmentTokensTable {
  id: string;
  device_name: string;
  token_hash: string;
  created_at: number;
  expires_at: number;
  used_at: number | null;
}

export interface ModelsTable {
  name: string;
  description: string | null;
  created_at: number;
  updated_at: number;
}

export interface ModelVersionsTable {
  model_name: string;
  version: string;
  source_kind: string;
  blob_key: string;
  size_bytes: number;
  sha256: string;
  tensors: string;
  /** JSON DeviceTrustFacts (models/device-trust.ts); null: not a checked package upload. */
  device_trust: string | null;
  created_at: number;
}

export interface PackagingJobsTable {
  name: string;
  model_name: string;
  model_version: string;
  status: string;
  status_message: string | null;
  output_s3_location: string | null;
  artifact_key: string | null;
  artifact_location: string | null;
  artifact_size_bytes: number | null;
  artifact_sha256: string | null;
  signature: string | null;
  /** The current runner's claim (packaging/): a new token per claim, null until the job is first claimed. */
  claim_token: string | null;
  created_at: number;
  updated_at: number;
  /** Attempts that met a full disk so far (0027). */
  disk_full_attempts: number;
  /** While the job waits for disk space, unclaimed: when its next attempt is due; null otherwise (0027). */
  retry_at: number | null;
}

/** A capture record a device uploaded through the control plane (captures/): written once per record format. */
export interface DeviceCapturesTable {
  device_name: string;
  capture_id: string;
  /** `edge` (Edge Manager records) or `model-monitor`. */
  record_format: string;
  object_key: string;
  stored_at: number;
}

/**
 * A capture object (manifest or side file) a device uploaded through the control plane, by its address
 * `s3://<bucket>/<key>`: objects are written once, by the device that claimed the key first (captures/).
 */
export interface CaptureObjectsTable {
  object_url: string;
  device_name: string;
  /** SHA-256 (hex) of the file as the device sent it, once a write of it landed; null while none has. */
  sha256: string | null;
  /** Its length in bytes, with sha256. */
  bytes: number | null;
  /** When the device claimed the key. */
  claimed_at: number;
  /**
   * The upload now writing the object (a random token), until its write landed or failed: another upload of the
   * key waits (409) rather than writing beside it. Null when none is.
   */
  write_token: string | null;
  /** When that write began: a token older than the write lease (a server that died mid-write) may be taken. */
  write_started_at: number | null;
}

/** Capture bytes a device uploaded on one UTC day (`YYYY-MM-DD`), for its quota. */
export interface DeviceCaptureUsageTable {
  device_name: string;
  day: string;
  bytes: number;
}

/** Metric bytes a device stored in one hour (hour_start: epoch ms), for the per-device metrics quota. */
export interface DeviceMetricUsageTable {
  device_name: string;
  hour_start: number;
  bytes: number;
}

/** A fleet console sign-in: the SHA-256 of the cookie's session id, and the API token it was opened with. */
export interface ConsoleSessionsTable {
  id_hash: string;
  token_id: string;
  csrf_token: string;
  created_at: number;
  expires_at: number;
}

/** A deployment plan (deployments/): `model_configs`, `options` and `tags` are JSON documents. */
export interface DeploymentPlansTable {
  name: string;
  fleet_name: string;
  model_configs: string;
  options: string;
  tags: string;
  created_at: number;
  updated_at: number;
}

/** A stage of a plan, in `position` order; `selection` is its device selection, JSON. */
export interface DeploymentStagesTable {
  plan_name: string;
  name: string;
  position: number;
  selection: string;
  failure_policy: string;
  status: string;
  status_message: string | null;
  started_at: number | null;
  ended_at: number | null;
  updated_at: number;
}

/** A device a started stage targeted (the stage's snapshot): one row per plan and device. */
export interface DeploymentTargetsTable {
  plan_name: string;
  device_name: string;
  stage_name: string;
  fleet_name: string;
  status: string;
  status_message: string | null;
  /** Why a STOPPED device stopped (deployments/ StopReason); null for every other status. */
  stop_reason: string | null;
  attempts: number;
  /** SHA-256 of the last DeploymentResult applied: heartbeats repeat it, and a repeat is not news. */
  result_digest: string | null;
  started_at: number | null;
  ended_at: number | null;
  updated_at: number;
}

/** Held by the plan that rolls a model handle out to a fleet, until the plan ends. */
export interface DeploymentHandleLocksTable {
  fleet_name: string;
  model_handle: string;
  plan_name: string;
}

/**
 * Which plan names which model handle (one row per plan and handle, written with the plan, gone with it), with
 * the plan's fleet and creation time: a device's desired state reads the newest plans per handle through it.
 */
export interface DeploymentPlanHandlesTable {
  plan_name: string;
  fleet_name: string;
  model_handle: string;
  created_at: number;
}

/**
 * SQLite only (0026): a fleet's revision, moved by triggers on every write to what plan retention judges, so that
 * its delete can tell in one read that nothing changed since its judgement.
 */
export interface DeploymentFleetRevisionsTable {
  fleet_name: string;
  revision: number;
}

export interface DeploymentEventsTable {
  id: string;
  plan_name: string;
  stage_name: string | null;
  device_name: string | null;
  kind: string;
  message: string;
  at: number;
}

/** A running server (server/server-registry.ts): refreshed while it runs, deleted when it stops. */
export interface ServerInstancesTable {
  id: string;
  host: string;
  pid: number;
  version: string;
  schema_version: string;
  started_at: number;
  last_seen_at: number;
}

export interface DatabaseSchema {
  server_instances: ServerInstancesTable;
  server_settings: ServerSettingsTable;
  api_tokens: ApiTokensTable;
  access_keys: AccessKeysTable;
  compilation_jobs: CompilationJobsTable;
  edge_packaging_job_sources: EdgePackagingJobSourcesTable;
  fleets: FleetsTable;
  devices: DevicesTable;
  device_tags: DeviceTagsTable;
  device_models: DeviceModelsTable;
  device_metric_batches: DeviceMetricBatchesTable;
  device_certificates: DeviceCertificatesTable;
  enrollment_tokens: EnrollmentTokensTable;
  models: ModelsTable;
  model_versions: ModelVersionsTable;
  packaging_jobs: PackagingJobsTable;
  device_captures: DeviceCapturesTable;
  device_capture_usage: DeviceCaptureUsageTable;
  capture_objects: CaptureObjectsTable;
  device_metric_usage: DeviceMetricUsageTable;
  console_sessions: ConsoleSessionsTable;
  deployment_plans: DeploymentPlansTable;
  deployment_stages: DeploymentStagesTable;
  deployment_targets: DeploymentTargetsTable;
  deployment_handle_locks: DeploymentHandleLocksTable;
  deployment_plan_handles: DeploymentPlanHandlesTable;
  deployment_events: DeploymentEventsTable;
  deployment_fleet_revisions: DeploymentFleetRevisionsTable;
}
