/* eslint-disable @typescript-eslint/no-explicit-any -- migrations work on the schema as it was, not the typed one */
import {
  Migrator,
  SqliteAdapter,
  sql,
  type Kysely,
  type Migration,
  type MigrationProvider,
  type MigrationResult,
} from 'kysely';

/**
 * Versioned schema migrations, held in code (not read from a folder) so that they run the same from `src`
 * under Vitest and from `dist` in production. Each migration uses only types both engines understand:
 * text, bigint (epoch milliseconds) and double precision. Never edit a released migration; add a new one.
 */
const migrations: Record<string, Migration> = {
  '0001_fleets_devices_identity': {
    async up(db: Kysely<any>): Promise<void> {
      await db.schema
        .createTable('server_settings')
        .addColumn('key', 'text', (c) => c.primaryKey())
        .addColumn('value', 'text', (c) => c.notNull())
        .execute();

      await db.schema
        .createTable('api_tokens')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('scope', 'text', (c) => c.notNull())
        .addColumn('token_hash', 'text', (c) => c.notNull().unique())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('revoked_at', 'bigint')
        .execute();

      await db.schema
        .createTable('fleets')
        .addColumn('name', 'text', (c) => c.primaryKey())
        .addColumn('description', 'text')
        .addColumn('output_s3_location', 'text', (c) => c.notNull())
        .addColumn('output_kms_key_id', 'text')
        .addColumn('role_arn', 'text')
        .addColumn('tags', 'text', (c) => c.notNull())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('updated_at', 'bigint', (c) => c.notNull())
        .execute();

      await db.schema
        .createTable('devices')
        .addColumn('name', 'text', (c) => c.primaryKey())
        .addColumn('fleet_name', 'text', (c) => c.notNull().references('fleets.name').onDelete('restrict'))
        .addColumn('description', 'text')
        .addColumn('iot_thing_name', 'text')
        .addColumn('tags', 'text', (c) => c.notNull())
        .addColumn('registered_at', 'bigint', (c) => c.notNull())
        .addColumn('updated_at', 'bigint', (c) => c.notNull())
        .addColumn('agent_version', 'text')
        .addColumn('last_heartbeat_at', 'bigint')
        .addColumn('deployment_result', 'text')
        .execute();
      await db.schema
        .createIndex('devices_fleet_name')
        .on('devices')
        .columns(['fleet_name', 'name'])
        .execute();

      await db.schema
        .createTable('device_tags')
        .addColumn('device_name', 'text', (c) => c.notNull().references('devices.name').onDelete('cascade'))
        .addColumn('key', 'text', (c) => c.notNull())
        .addColumn('value', 'text', (c) => c.notNull())
        .addPrimaryKeyConstraint('device_tags_pk', ['device_name', 'key'])
        .execute();
      await db.schema
        .createIndex('device_tags_key_value')
        .on('device_tags')
        .columns(['key', 'value'])
        .execute();

      await db.schema
        .createTable('device_models')
        .addColumn('device_name', 'text', (c) => c.notNull().references('devices.name').onDelete('cascade'))
        .addColumn('model_name', 'text', (c) => c.notNull())
        .addColumn('model_version', 'text', (c) => c.notNull())
        .addColumn('latest_sample_time', 'bigint')
        .addColumn('latest_inference_time', 'bigint')
        .addPrimaryKeyConstraint('device_models_pk', ['device_name', 'model_name', 'model_version'])
        .execute();

      // No foreign key: appended at heartbeat rate (one row per heartbeat) and pruned by age.
      await db.schema
        .createTable('device_metric_batches')
        .addColumn('device_name', 'text', (c) => c.notNull())
        .addColumn('fleet_name', 'text', (c) => c.notNull())
        .addColumn('received_at', 'bigint', (c) => c.notNull())
        .addColumn('first_timestamp', 'bigint', (c) => c.notNull())
        .addColumn('last_timestamp', 'bigint', (c) => c.notNull())
        .addColumn('metric_count', 'integer', (c) => c.notNull())
        .addColumn('metrics', 'text', (c) => c.notNull())
        .execute();
      await db.schema
        .createIndex('device_metric_batches_device_time')
        .on('device_metric_batches')
        .columns(['device_name', 'last_timestamp'])
        .execute();
      await db.schema
        .createIndex('device_metric_batches_received')
        .on('device_metric_batches')
        .column('received_at')
        .execute();

      // Kept after a device is deregistered (revoked), so an old certificate can never be honoured again.
      await db.schema
        .createTable('device_certificates')
        .addColumn('serial', 'text', (c) => c.primaryKey())
        .addColumn('device_name', 'text', (c) => c.notNull())
        .addColumn('fleet_name', 'text', (c) => c.notNull())
        .addColumn('fingerprint_sha256', 'text', (c) => c.notNull().unique())
        .addColumn('subject', 'text', (c) => c.notNull())
        .addColumn('not_before', 'bigint', (c) => c.notNull())
        .addColumn('not_after', 'bigint', (c) => c.notNull())
        .addColumn('issued_at', 'bigint', (c) => c.notNull())
        .addColumn('revoked_at', 'bigint')
        .addColumn('revocation_reason', 'text')
        .execute();
      await db.schema
        .createIndex('device_certificates_device')
        .on('device_certificates')
        .column('device_name')
        .execute();

      await db.schema
        .createTable('enrollment_tokens')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('device_name', 'text', (c) => c.notNull().references('devices.name').onDelete('cascade'))
        .addColumn('token_hash', 'text', (c) => c.notNull().unique())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('expires_at', 'bigint', (c) => c.notNull())
        .addColumn('used_at', 'bigint')
        .execute();
    },
  },
  '0002_models_packaging': {
    async up(db: Kysely<any>): Promise<void> {
      await db.schema
        .createTable('models')
        .addColumn('name', 'text', (c) => c.primaryKey())
        .addColumn('description', 'text')
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('updated_at', 'bigint', (c) => c.notNull())
        .execute();

      await db.schema
        .createTable('model_versions')
        .addColumn('model_name', 'text', (c) => c.notNull().references('models.name').onDelete('cascade'))
        .addColumn('version', 'text', (c) => c.notNull())
        .addColumn('source_kind', 'text', (c) => c.notNull())
        .addColumn('blob_key', 'text', (c) => c.notNull())
        .addColumn('size_bytes', 'bigint', (c) => c.notNull())
        .addColumn('sha256', 'text', (c) => c.notNull())
        .addColumn('tensors', 'text', (c) => c.notNull())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addPrimaryKeyConstraint('model_versions_pk', ['model_name', 'version'])
        .execute();

      await db.schema
        .createTable('packaging_jobs')
        .addColumn('name', 'text', (c) => c.primaryKey())
        .addColumn('model_name', 'text', (c) => c.notNull())
        .addColumn('model_version', 'text', (c) => c.notNull())
        .addColumn('status', 'text', (c) => c.notNull())
        .addColumn('status_message', 'text')
        .addColumn('output_s3_location', 'text')
        .addColumn('artifact_key', 'text')
        .addColumn('artifact_location', 'text')
        .addColumn('artifact_size_bytes', 'bigint')
        .addColumn('artifact_sha256', 'text')
        .addColumn('signature', 'text')
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('updated_at', 'bigint', (c) => c.notNull())
        .execute();
      await db.schema.createIndex('packaging_jobs_status').on('packaging_jobs').column('status').execute();
    },
  },
  // Captures devices upload through the control plane (captures/): one row per capture record written, so a
  // record sent again (an agent's at-least-once retry, a batch re-made after a crash) is written once; and
  // bytes per device and UTC day, for the per-device quota. No foreign key: deregistering keeps the history.
  '0003_device_captures': {
    async up(db: Kysely<any>): Promise<void> {
      await db.schema
        .createTable('device_captures')
        .addColumn('device_name', 'text', (c) => c.notNull())
        .addColumn('capture_id', 'text', (c) => c.notNull())
        .addColumn('record_format', 'text', (c) => c.notNull())
        .addColumn('object_key', 'text', (c) => c.notNull())
        .addColumn('stored_at', 'bigint', (c) => c.notNull())
        .addPrimaryKeyConstraint('device_captures_pk', ['device_name', 'capture_id', 'record_format'])
        .execute();
      await db.schema
        .createTable('device_capture_usage')
        .addColumn('device_name', 'text', (c) => c.notNull())
        .addColumn('day', 'text', (c) => c.notNull())
        .addColumn('bytes', 'bigint', (c) => c.notNull())
        .addPrimaryKeyConstraint('device_capture_usage_pk', ['device_name', 'day'])
        .execute();
    },
  }, // AWS-style access keys for the SageMaker facade (auth/access-keys.ts): the secret is needed to recompute
  // SigV4 signatures, so it is stored encrypted (AES-256-GCM under a server key kept outside the database).
  '0004_access_keys': {
    async up(db: Kysely<any>): Promise<void> {
      await db.schema
        .createTable('access_keys')
        .addColumn('access_key_id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('scope', 'text', (c) => c.notNull())
        .addColumn('device_name', 'text')
        .addColumn('secret_ciphertext', 'text', (c) => c.notNull())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('revoked_at', 'bigint')
        .execute();
    },
  }, // SageMaker compilation jobs (compilation/): an ONNX model imported from S3 into the model registry; and
  // which compilation job a packaging job created through the facade came from, with its role and tags.
  '0005_compilation_jobs': {
    async up(db: Kysely<any>): Promise<void> {
      await db.schema
        .createTable('compilation_jobs')
        .addColumn('name', 'text', (c) => c.primaryKey())
        .addColumn('status', 'text', (c) => c.notNull())
        .addColumn('failure_reason', 'text')
        .addColumn('framework', 'text', (c) => c.notNull())
        .addColumn('framework_version', 'text')
        .addColumn('input_s3_uri', 'text', (c) => c.notNull())
        .addColumn('role_arn', 'text', (c) => c.notNull())
        .addColumn('output_s3_location', 'text', (c) => c.notNull())
        .addColumn('target_device', 'text')
        .addColumn('model_name', 'text', (c) => c.notNull())
        .addColumn('model_version', 'text', (c) => c.notNull())
        .addColumn('model_sha256', 'text')
        .addColumn('model_size_bytes', 'bigint')
        .addColumn('tags', 'text', (c) => c.notNull())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('updated_at', 'bigint', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('edge_packaging_job_sources')
        .addColumn('job_name', 'text', (c) => c.primaryKey())
        .addColumn('compilation_job_name', 'text', (c) => c.notNull())
        .addColumn('role_arn', 'text', (c) => c.notNull())
        .addColumn('tags', 'text', (c) => c.notNull())
        .execute();
    },
  },
  // Fleet console sign-ins (console/): one row per browser session, so every replica recognises the cookie.
  // Only the session id's SHA-256 is stored; the CSRF token is bound to the row. Revoking the API token the
  // session was opened with ends it (sessions join api_tokens on every request).
  '0006_console_sessions': {
    async up(db: Kysely<any>): Promise<void> {
      await db.schema
        .createTable('console_sessions')
        .addColumn('id_hash', 'text', (c) => c.primaryKey())
        .addColumn('token_id', 'text', (c) => c.notNull())
        .addColumn('csrf_token', 'text', (c) => c.notNull())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('expires_at', 'bigint', (c) => c.notNull())
        .execute();
      await db.schema
        .createIndex('console_sessions_expires_at')
        .on('console_sessions')
        .column('expires_at')
        .execute();
    },
  },
  // Deployment plans (deployments/): plans with their model configs, ordered stages, the devices a started
  // stage targeted (its snapshot, one row per plan and device), one lock row per fleet and model handle
  // while a plan rolls it out (what makes a conflicting plan a 409 instead of a race), and the event log.
  '0007_deployments': {
    async up(db: Kysely<any>): Promise<void> {
      await db.schema
        .createTable('deployment_plans')
        .addColumn('name', 'text', (c) => c.primaryKey())
        .addColumn('fleet_name', 'text', (c) => c.notNull().references('fleets.name').onDelete('restrict'))
        .addColumn('model_configs', 'text', (c) => c.notNull())
        .addColumn('options', 'text', (c) => c.notNull())
        .addColumn('tags', 'text', (c) => c.notNull())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('updated_at', 'bigint', (c) => c.notNull())
        .execute();
      await db.schema
        .createIndex('deployment_plans_fleet')
        .on('deployment_plans')
        .columns(['fleet_name', 'created_at'])
        .execute();
      await db.schema
        .createTable('deployment_stages')
        .addColumn('plan_name', 'text', (c) =>
          c.notNull().references('deployment_plans.name').onDelete('cascade'),
        )
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('position', 'bigint', (c) => c.notNull())
        .addColumn('selection', 'text', (c) => c.notNull())
        .addColumn('failure_policy', 'text', (c) => c.notNull())
        .addColumn('status', 'text', (c) => c.notNull())
        .addColumn('status_message', 'text')
        .addColumn('started_at', 'bigint')
        .addColumn('ended_at', 'bigint')
        .addColumn('updated_at', 'bigint', (c) => c.notNull())
        .addPrimaryKeyConstraint('deployment_stages_pk', ['plan_name', 'name'])
        .execute();
      await db.schema
        .createTable('deployment_targets')
        .addColumn('plan_name', 'text', (c) => c.notNull())
        .addColumn('device_name', 'text', (c) => c.notNull())
        .addColumn('stage_name', 'text', (c) => c.notNull())
        .addColumn('fleet_name', 'text', (c) => c.notNull())
        .addColumn('status', 'text', (c) => c.notNull())
        .addColumn('status_message', 'text')
        .addColumn('attempts', 'bigint', (c) => c.notNull())
        .addColumn('result_digest', 'text')
        .addColumn('started_at', 'bigint')
        .addColumn('ended_at', 'bigint')
        .addColumn('updated_at', 'bigint', (c) => c.notNull())
        .addPrimaryKeyConstraint('deployment_targets_pk', ['plan_name', 'device_name'])
        .addForeignKeyConstraint(
          'deployment_targets_stage_fk',
          ['plan_name', 'stage_name'],
          'deployment_stages',
          ['plan_name', 'name'],
          (fk) => fk.onDelete('cascade'),
        )
        .execute();
      await db.schema
        .createIndex('deployment_targets_device')
        .on('deployment_targets')
        .columns(['device_name'])
        .execute();
      await db.schema
        .createIndex('deployment_targets_stage_status')
        .on('deployment_targets')
        .columns(['plan_name', 'stage_name', 'status'])
        .execute();
      await db.schema
        .createIndex('deployment_targets_status_started')
        .on('deployment_targets')
        .columns(['status', 'started_at'])
        .execute();
      await db.schema
        .createTable('deployment_handle_locks')
        .addColumn('fleet_name', 'text', (c) => c.notNull())
        .addColumn('model_handle', 'text', (c) => c.notNull())
        .addColumn('plan_name', 'text', (c) =>
          c.notNull().references('deployment_plans.name').onDelete('cascade'),
        )
        .addPrimaryKeyConstraint('deployment_handle_locks_pk', ['fleet_name', 'model_handle'])
        .execute();
      await db.schema
        .createTable('deployment_events')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('plan_name', 'text', (c) => c.notNull())
        .addColumn('stage_name', 'text')
        .addColumn('device_name', 'text')
        .addColumn('kind', 'text', (c) => c.notNull())
        .addColumn('message', 'text', (c) => c.notNull())
        .addColumn('at', 'bigint', (c) => c.notNull())
        .execute();
      await db.schema
        .createIndex('deployment_events_plan')
        .on('deployment_events')
        .columns(['plan_name', 'at', 'id'])
        .execute();
    },
  },
  // The console's sortable device list (devices/): one index per sort key, each ending in the name that
  // breaks ties, so a sorted page is an index range scan at any fleet size. lastSeen sorts never-seen
  // devices as -1; the expression is spelt exactly as device-store.ts queries it. And the console change
  // feed's per-poll max(updated_at) over the deployment tables (console/change-feed.ts): with these it
  // reads one index entry per table instead of scanning every target row.
  '0008_device_sort_and_feed_indexes': {
    async up(db: Kysely<any>): Promise<void> {
      await sql`create index devices_last_seen on devices (coalesce(last_heartbeat_at, -1), name)`.execute(
        db,
      );
      await db.schema
        .createIndex('devices_registered')
        .on('devices')
        .columns(['registered_at', 'name'])
        .execute();
      for (const table of ['deployment_plans', 'deployment_stages', 'deployment_targets']) {
        await db.schema.createIndex(`${table}_updated_at`).on(table).column('updated_at').execute();
      }
    },
  },
  // A packaging job's claim token (packaging/packaging-jobs.ts): a runner that lost its job to a replica that
  // resumed it can no longer renew, complete or fail it, nor publish its artifact.
  '0009_packaging_claims': {
    async up(db: Kysely<any>): Promise<void> {
      await db.schema.alterTable('packaging_jobs').addColumn('claim_token', 'text').execute();
    },
  },
  // The console change feed's per-poll max(updated_at) of devices (console/change-feed.ts): one index entry
  // instead of every device row.
  '0010_devices_updated_at_index': {
    async up(db: Kysely<any>): Promise<void> {
      await db.schema.createIndex('devices_updated_at').on('devices').column('updated_at').execute();
    },
  },
  // Devices a stage stop or abort left unstarted were STOPPED without an end time before stopUnstartedDevices
  // (deployments/stage-progress.ts) set one; the API then listed them without endedAt. A STOPPED target is
  // never written again (reports, the desired state and the sweeper leave it alone), so its updated_at is the
  // moment it was stopped, the very time the new code sets as ended_at.
  '0011_stopped_targets_ended_at': {
    async up(db: Kysely<any>): Promise<void> {
      await db
        .updateTable('deployment_targets')
        .set((eb) => ({ ended_at: eb.ref('updated_at') }))
        .where('status', '=', 'STOPPED')
        .where('ended_at', 'is', null)
        .execute();
    },
  },
  // Metric bytes each device stored per hour (heartbeats/heartbeat-service.ts): the per-device metrics quota.
  // Pruned by the retention sweep once the hour is past; no foreign key, like device_capture_usage.
  '0012_device_metric_usage': {
    async up(db: Kysely<any>): Promise<void> {
      await db.schema
        .createTable('device_metric_usage')
        .addColumn('device_name', 'text', (c) => c.notNull())
        .addColumn('hour_start', 'bigint', (c) => c.notNull())
        .addColumn('bytes', 'bigint', (c) => c.notNull())
        .addPrimaryKeyConstraint('device_metric_usage_pk', ['device_name', 'hour_start'])
        .execute();
    },
  },
  // A device's deployment events, newest first (GET /api/v1/devices/{device}/deployment-events, the console's
  // device page): an index range scan instead of a scan of every plan's events.
  '0013_deployment_events_by_device': {
    async up(db: Kysely<any>): Promise<void> {
      await db.schema
        .createIndex('deployment_events_device')
        .on('deployment_events')
        .columns(['device_name', 'id'])
        .execute();
    },
  },
  // A fleet's output location that capture uploads found unusable (fleets/output-outage.ts): shown in the fleet
  // report and the console, written only when the state changes (not per upload), cleared by the next upload
  // that lands or by a new output location.
  '0014_fleet_output_outage': {
    async up(db: Kysely<any>): Promise<void> {
      // One column per statement: SQLite's ALTER TABLE adds one at a time.
      await db.schema.alterTable('fleets').addColumn('output_outage_since', 'bigint').execute();
      await db.schema.alterTable('fleets').addColumn('output_outage_problem', 'text').execute();
      await db.schema.alterTable('fleets').addColumn('output_outage_reason', 'text').execute();
    },
  },
  // Compilation imports get the packaging jobs' claim and lease (compilation/compilation-jobs.ts): only a job
  // whose runner stopped renewing is failed, not every INPROGRESS one whenever a replica starts. Also what
  // CreateCompilationJob was sent that DescribeCompilationJob echoes (StoppingCondition, DataInputConfig).
  '0015_compilation_claims': {
    async up(db: Kysely<any>): Promise<void> {
      await db.schema.alterTable('compilation_jobs').addColumn('claim_token', 'text').execute();
      await db.schema.alterTable('compilation_jobs').addColumn('stopping_condition', 'text').execute();
      await db.schema.alterTable('compilation_jobs').addColumn('data_input_config', 'text').execute();
    },
  },
  // What an uploaded package's signature check found (models/device-trust.ts DeviceTrustFacts, JSON), so plan
  // create and the versions API warn at their own time without reading the package. Null: an ONNX model, no
  // signing root configured, or a version uploaded before this column.
  '0016_model_version_device_trust': {
    async up(db: Kysely<any>): Promise<void> {
      await db.schema.alterTable('model_versions').addColumn('device_trust', 'text').execute();
    },
  },
  // The S3 object a facade packaging job writes its package to, unique (sagemaker/operations/packaging.ts): two
  // CreateEdgePackagingJob calls naming one object (`v1 beta` and `v1_beta`, or one version twice, into one
  // S3OutputLocation) cannot both be created, however close together. Existing jobs get theirs; of jobs already
  // sharing one (created before this check), the newest that did not fail keeps it and the others none, so
  // nothing fails here.
  '0017_packaging_object_uri': {
    async up(db: Kysely<any>): Promise<void> {
      await db.schema
        .alterTable('edge_packaging_job_sources')
        .addColumn('package_object_uri', 'text')
        .execute();
      const jobs = await db
        .selectFrom('edge_packaging_job_sources as s')
        .innerJoin('packaging_jobs as j', 'j.name', 's.job_name')
        .select(['s.job_name', 'j.model_name', 'j.model_version', 'j.output_s3_location', 'j.status'])
        .where('j.output_s3_location', 'is not', null)
        .orderBy('j.created_at', 'desc')
        .orderBy('s.job_name', 'desc')
        .execute();
      // Jobs sharing an object: it holds the package of the last one that wrote it, the newest that did not fail
      // (a COMPLETED retry of a FAILED job, or of the same version, as the old code allowed). That job keeps it,
      // so a later takeover of a FAILED job's object never overwrites a live package.
      jobs.sort((a, b) => Number(a.status === 'FAILED') - Number(b.status === 'FAILED'));
      const taken = new Set<string>();
      for (const job of jobs) {
        // packageObjectUri as of this migration (a copy: a migration must not change when that code does).
        const uri = `${String(job.output_s3_location).replace(/\/+$/, '')}/${job.model_name}-${String(job.model_version).replace(/ /g, '_')}.tar.gz`;
        if (taken.has(uri)) continue;
        taken.add(uri);
        await db
          .updateTable('edge_packaging_job_sources')
          .set({ package_object_uri: uri })
          .where('job_name', '=', job.job_name)
          .execute();
      }
      await db.schema
        .createIndex('edge_packaging_job_sources_package_object_uri')
        .on('edge_packaging_job_sources')
        .column('package_object_uri')
        .unique()
        .execute();
    },
  },
  // The ~/.aws/credentials profile an access key's name gives (auth/access-keys.ts), unique among unrevoked keys:
  // two keys created at once with names of one profile cannot both be, so `token create --aws` never prints two
  // sections of one name. Existing unrevoked keys get theirs, the oldest first; a later one already sharing a
  // profile keeps none (it is as it was; revoke one of them), so nothing fails here.
  '0018_access_key_profiles': {
    async up(db: Kysely<any>): Promise<void> {
      await db.schema.alterTable('access_keys').addColumn('aws_profile', 'text').execute();
      const keys = await db
        .selectFrom('access_keys')
        .select(['access_key_id', 'name'])
        .where('revoked_at', 'is', null)
        .orderBy('created_at')
        .orderBy('access_key_id')
        .execute();
      const taken = new Set<string>();
      for (const key of keys) {
        // awsProfileName as of this migration (a copy: a migration must not change when that code does).
        const profile = String(key.name).replace(/[^A-Za-z0-9_-]+/g, '-');
        if (taken.has(profile)) continue;
        taken.add(profile);
        await db
          .updateTable('access_keys')
          .set({ aws_profile: profile })
          .where('access_key_id', '=', key.access_key_id)
          .execute();
      }
      await sql`create unique index access_keys_unrevoked_aws_profile on access_keys (aws_profile) where revoked_at is null`.execute(
        db,
      );
    },
  },
  // The deployed model handles a device's agent reports as not loaded (heartbeat DeployedModelsNotLoaded, JSON):
  // shown on the device's API answer, `edgefleet device describe` and the console. Null: its agent does not
  // report them (an older agent, deployments off, Edge Manager's agent).
  '0019_devices_deployed_models_not_loaded': {
    async up(db: Kysely<any>): Promise<void> {
      await db.schema.alterTable('devices').addColumn('deployed_models_not_loaded', 'text').execute();
    },
  },
  // Why a device's deployment ended STOPPED (deployments/ StopReason), kept with the row: a stopped stage's
  // message counts cancelled devices apart from unstarted ones by it, not by the status message's words. Rows
  // stopped before this column get theirs from the messages the writers gave them then; a STOPPED row with any
  // other message was counted "not started", and stays so.
  '0020_deployment_targets_stop_reason': {
    async up(db: Kysely<any>): Promise<void> {
      await db.schema.alterTable('deployment_targets').addColumn('stop_reason', 'text').execute();
      const stopped = (reason: string) =>
        db.updateTable('deployment_targets').set({ stop_reason: reason }).where('status', '=', 'STOPPED');
      // The words of deregistered-device.ts and cancelDevice as of this migration (a copy, as 0017's is).
      await stopped('deregistered')
        .where('status_message', 'like', 'cancelled: device % was deregistered')
        .execute();
      await stopped('cancelled')
        .where('stop_reason', 'is', null)
        .where('status_message', 'like', 'cancelled%')
        .execute();
      await stopped('stage-aborted')
        .where('status_message', '=', 'not started: the stage was aborted')
        .execute();
      await stopped('stage-stopped').where('stop_reason', 'is', null).execute();
    },
  },
  // When a capture upload last failed during a fleet's output outage (fleets/output-outage.ts), to within
  // OUTAGE_LAST_FAILURE_RESOLUTION_MS: one column on the fleet's row, not a log. An outage already recorded gets
  // its start, the only failure time known of it.
  '0021_fleet_output_outage_last_failure': {
    async up(db: Kysely<any>): Promise<void> {
      await db.schema.alterTable('fleets').addColumn('output_outage_last_failure_at', 'bigint').execute();
      await db
        .updateTable('fleets')
        .set({ output_outage_last_failure_at: sql`output_outage_since` })
        .where('output_outage_since', 'is not', null)
        .execute();
    },
  },
  // Capture objects are written once per device (captures/capture-ingest.ts): who claimed each object's address
  // first, and what it sent once the write landed, so a fleet-mate cannot write over it and the same device's
  // retry is told apart from other content. The index finds a manifest's records by key (objects stored before
  // this migration have no claim: their device_captures rows name the device).
  '0022_capture_objects': {
    async up(db: Kysely<any>): Promise<void> {
      await db.schema
        .createTable('capture_objects')
        .addColumn('object_url', 'text', (c) => c.primaryKey())
        .addColumn('device_name', 'text', (c) => c.notNull())
        .addColumn('sha256', 'text')
        .addColumn('bytes', 'bigint')
        .addColumn('claimed_at', 'bigint', (c) => c.notNull())
        .execute();
      await db.schema
        .createIndex('device_captures_object_key')
        .on('device_captures')
        .column('object_key')
        .execute();
    },
  },
  // The servers running on this database, each refreshing its row (server/server-registry.ts): a build that would
  // migrate the schema sees whether a server of another version still runs on it.
  '0023_server_instances': {
    async up(db: Kysely<any>): Promise<void> {
      await db.schema
        .createTable('server_instances')
        // A rerun finds it (tests take the record away to stand for an older build's database).
        .ifNotExists()
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('host', 'text', (c) => c.notNull())
        .addColumn('pid', 'integer', (c) => c.notNull())
        .addColumn('version', 'text', (c) => c.notNull())
        .addColumn('schema_version', 'text', (c) => c.notNull())
        .addColumn('started_at', 'bigint', (c) => c.notNull())
        .addColumn('last_seen_at', 'bigint', (c) => c.notNull())
        .execute();
    },
  },
  // The upload writing a capture object now (captures/capture-ingest.ts): two uploads of one key by its device
  // (a retry while the first is still in flight) must not both write, else the digest recorded may be of the
  // file that lost the race.
  '0024_capture_object_writes': {
    async up(db: Kysely<any>): Promise<void> {
      // A rerun finds them (tests take the last migration's record away to stand for an older build's database).
      const table = (await db.introspection.getTables()).find((t) => t.name === 'capture_objects');
      const has = new Set(table?.columns.map((c) => c.name));
      if (!has.has('write_token'))
        await db.schema.alterTable('capture_objects').addColumn('write_token', 'text').execute();
      if (!has.has('write_started_at'))
        await db.schema.alterTable('capture_objects').addColumn('write_started_at', 'bigint').execute();
    },
  },
  // Plans at fleet scale (hundreds of plans, thousands of devices):
  // - deployment_plan_handles: which plan names which model handle, newest first per fleet and handle, so that a
  //   device's poll (deployments/desired-state.ts) reads the newest plans that may apply to it for each handle,
  //   not every finished plan of the fleet's history. Rows go with their plan (cascade); existing plans are
  //   filled in from their model_configs. deployment_targets_device_status finds the device's deployments not
  //   yet taken without reading every target row it ever had.
  // - deployment_plans_newest: the plan list newest first across fleets (order=newest), and per fleet, as an
  //   index walk from the page's position instead of a sort of every plan.
  '0025_plan_handles_and_newest_index': {
    async up(db: Kysely<any>): Promise<void> {
      // Rerunnable (tests take the last migration's record away to stand for an older build's database).
      await db.schema
        .createTable('deployment_plan_handles')
        .ifNotExists()
        .addColumn('plan_name', 'text', (c) =>
          c.notNull().references('deployment_plans.name').onDelete('cascade'),
        )
        .addColumn('fleet_name', 'text', (c) => c.notNull())
        .addColumn('model_handle', 'text', (c) => c.notNull())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addPrimaryKeyConstraint('deployment_plan_handles_pk', ['plan_name', 'model_handle'])
        .execute();
      await db.schema
        .createIndex('deployment_plan_handles_newest')
        .ifNotExists()
        .on('deployment_plan_handles')
        .columns(['fleet_name', 'model_handle', 'created_at', 'plan_name'])
        .execute();
      // In pages by name: a large plan history is never held in memory at once.
      for (let after: string | undefined; ;) {
        const plans: {
          name: string;
          fleet_name: string;
          model_configs: string;
          created_at: number | string;
        }[] = await db
          .selectFrom('deployment_plans')
          .select(['name', 'fleet_name', 'model_configs', 'created_at'])
          .$if(after !== undefined, (q) => q.where('name', '>', after!))
          .orderBy('name')
          .limit(500)
          .execute();
        for (const plan of plans) {
          // A plan whose stored configs do not parse (a hand edit) gets no rows: the deployment sweep skips and
          // logs it as well, rather than the upgrade failing on it.
          const handles = new Set(handlesOfStoredConfigs(plan.model_configs));
          if (handles.size === 0) continue;
          await db
            .insertInto('deployment_plan_handles')
            .values(
              [...handles].map((handle) => ({
                plan_name: plan.name,
                fleet_name: plan.fleet_name,
                model_handle: handle,
                created_at: Number(plan.created_at),
              })),
            )
            .onConflict((oc) => oc.doNothing())
            .execute();
        }
        if (plans.length < 500) break;
        after = plans.at(-1)!.name;
      }
      await db.schema
        .createIndex('deployment_targets_device_status')
        .ifNotExists()
        .on('deployment_targets')
        .columns(['device_name', 'status'])
        .execute();
      await db.schema
        .createIndex('deployment_plans_newest')
        .ifNotExists()
        .on('deployment_plans')
        .columns(['created_at', 'name'])
        .execute();
      await db.schema
        .createIndex('deployment_plans_fleet_newest')
        .ifNotExists()
        .on('deployment_plans')
        .columns(['fleet_name', 'created_at', 'name'])
        .execute();
      // The new index serves every query the old one did (its columns are a prefix of the new one's).
      await db.schema.dropIndex('deployment_plans_fleet').ifExists().execute();
    },
  },
  // Plan retention (deployments/plan-retention.ts) judges a fleet's plans outside any transaction, then checks
  // inside the delete's that nothing the judgement read has changed since: on SQLite, by this per-fleet revision,
  // which triggers move on every write to what the judgement reads (plans, stages, targets, handle rows and
  // locks, devices and their tags), whoever writes it. SQLite only: its one writer makes the extra row write
  // free of contention, where on PostgreSQL every device report of a fleet would queue on one row (retention
  // locks the rows instead there).
  '0026_fleet_deployment_revisions': {
    async up(db: Kysely<any>): Promise<void> {
      if (!(db.getExecutor().adapter instanceof SqliteAdapter)) return;
      await db.schema
        .createTable('deployment_fleet_revisions')
        .ifNotExists()
        .addColumn('fleet_name', 'text', (c) => c.primaryKey())
        .addColumn('revision', 'bigint', (c) => c.notNull())
        .execute();
      for (const [name, statement] of Object.entries(fleetRevisionTriggers())) {
        await sql.raw(`create trigger if not exists ${name} ${statement}`).execute(db);
      }
    },
  },
  // A packaging job waiting for disk space (packaging/packaging-worker.ts) gives up its claim while it waits, so
  // that any replica with room may take it once due: how many attempts met a full disk, and when the next is due
  // (null: not waiting).
  '0027_packaging_job_disk_retries': {
    async up(db: Kysely<any>): Promise<void> {
      // A rerun finds them (tests take the last migration's record away to stand for an older build's database).
      const table = (await db.introspection.getTables()).find((t) => t.name === 'packaging_jobs');
      const has = new Set(table?.columns.map((c) => c.name));
      if (!has.has('disk_full_attempts'))
        await db.schema
          .alterTable('packaging_jobs')
          .addColumn('disk_full_attempts', 'bigint', (c) => c.notNull().defaultTo(0))
          .execute();
      if (!has.has('retry_at'))
        await db.schema.alterTable('packaging_jobs').addColumn('retry_at', 'bigint').execute();
    },
  },
};

const provider: MigrationProvider = {
  getMigrations: async () => migrations,
};

/** The names of every migration this build knows, in the order they apply. */
export const migrationNames: readonly string[] = Object.keys(migrations).sort();

export class MigrationError extends Error {
  constructor(
    message: string,
    readonly results: readonly MigrationResult[],
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'MigrationError';
  }
}

/**
 * Brings the schema up to date. On PostgreSQL several replicas may call this at once: Kysely takes an
 * advisory lock so exactly one applies each migration. A SQLite file belongs to one server process.
 */
export async function migrateToLatest(db: Kysely<any>): Promise<readonly MigrationResult[]> {
  const migrator = new Migrator({
    db,
    provider,
    migrationTableName: 'edgefleet_migrations',
    migrationLockTableName: 'edgefleet_migrations_lock',
  });
  const { error, results = [] } = await migrator.migrateToLatest();
  if (error) {
    const failed = results.find((r) => r.status === 'Error')?.migrationName ?? 'unknown';
    throw new MigrationError(
      `database migration ${failed} failed: ${error instanceof Error ? error.message : String(error)}`,
      results,
      { cause: error },
    );
  }
  return results;
}

/**
 * Brings the schema to exactly `name` (an older one than this build's, for tests of upgrades from a previous
 * version's database). The server itself only ever calls migrateToLatest.
 */
export async function migrateTo(db: Kysely<any>, name: string): Promise<readonly MigrationResult[]> {
  if (!migrationNames.includes(name))
    throw new Error(`unknown migration ${name}; expected one of ${migrationNames.join(', ')}`);
  const migrator = new Migrator({
    db,
    provider,
    migrationTableName: 'edgefleet_migrations',
    migrationLockTableName: 'edgefleet_migrations_lock',
  });
  const { error, results = [] } = await migrator.migrateTo(name);
  if (error)
    throw new MigrationError(`database migration to ${name} failed: ${String(error)}`, results, {
      cause: error,
    });
  return results;
}

/** Names of the migrations already applied to this database. */
export async function appliedMigrations(db: Kysely<any>): Promise<string[]> {
  const migrator = new Migrator({
    db,
    provider,
    migrationTableName: 'edgefleet_migrations',
    migrationLockTableName: 'edgefleet_migrations_lock',
  });
  const infos = await migrator.getMigrations();
  return infos.filter((m) => m.executedAt !== undefined).map((m) => m.name);
}

/** True when no EdgeFleet schema was ever created in this database (a new, or emptied, database). */
export async function hasNoSchema(db: Kysely<any>): Promise<boolean> {
  const tables = await db.introspection.getTables();
  return !tables.some((table) => table.name === 'edgefleet_migrations');
}

/** The migrations a database records that this build does not know: it was made by a newer build. */
export function unknownMigrations(recorded: readonly string[]): string[] {
  return recorded.filter((name) => !migrationNames.includes(name));
}

/** The words, shared by start/init/token and restore, for a database a newer build migrated. */
export function newerDatabaseWords(unknown: readonly string[], version: string): string {
  return (
    `made by a newer EdgeFleet: migration${unknown.length === 1 ? '' : 's'} ${unknown.join(', ')} ` +
    `${unknown.length === 1 ? 'is' : 'are'} unknown to this build (version ${version}, schema ` +
    `${migrationNames[migrationNames.length - 1]})`
  );
}

/**
 * A database a newer build migrated: this build must not run on it (it does not know the schema) nor migrate it
 * (kysely would call it "corrupted"). A person must act: run the newer build, or restore the backup taken before
 * the upgrade with this one.
 */
export class NewerDatabaseError extends Error {
  constructor(
    readonly database: string,
    readonly unknown: readonly string[],
    version: string,
  ) {
    super(
      `database ${database}: ${newerDatabaseWords(unknown, version)}; run the newer build, or restore the ` +
        'backup taken before the upgrade (edgefleet-server restore) with this one. The database was not changed',
    );
    this.name = 'NewerDatabaseError';
  }
}

/** Every migration name the database records, known to this build or not ([] without a schema). */
export async function recordedMigrations(db: Kysely<any>): Promise<string[]> {
  if (await hasNoSchema(db)) return [];
  const rows = await db.selectFrom('edgefleet_migrations').select('name').orderBy('name').execute();
  return rows.map((row: { name: string }) => row.name);
}

/**
 * Throws NewerDatabaseError, before anything is written, when a newer build migrated this database; else answers
 * the migrations it records (all known to this build), so that callers need not read them again.
 */
export async function refuseNewerDatabase(
  db: Kysely<any>,
  description: string,
  version: string,
): Promise<string[]> {
  const recorded = await recordedMigrations(db);
  const unknown = unknownMigrations(recorded);
  if (unknown.length > 0) throw new NewerDatabaseError(description, unknown, version);
  return recorded;
}

/** Migration 0025's reading of a plan's stored model configs: their handles, or none if they do not parse. */
function handlesOfStoredConfigs(stored: string): string[] {
  let configs: unknown;
  try {
    configs = JSON.parse(stored);
  } catch {
    return [];
  }
  if (!Array.isArray(configs)) return [];
  const handles = configs.map((c: unknown) => (c as { modelHandle?: unknown } | null)?.modelHandle);
  return handles.every((h): h is string => typeof h === 'string') ? handles : [];
}

/** SQL that moves the revision of the fleet `fleet` (an expression; no row when it is null). */
function bumpRevision(fleet: string): string {
  return (
    `insert into deployment_fleet_revisions (fleet_name, revision) select ${fleet}, 1 where ${fleet} is not null ` +
    'on conflict (fleet_name) do update set revision = deployment_fleet_revisions.revision + 1;'
  );
}

/** Migration 0026's triggers, by name: each write to what plan retention judges moves its fleet's revision. */
function fleetRevisionTriggers(): Record<string, string> {
  const planFleet = (row: string) =>
    `(select fleet_name from deployment_plans where name = ${row}.plan_name)`;
  const deviceFleet = (row: string) => `(select fleet_name from devices where name = ${row}.device_name)`;
  const on = (when: string, table: string, body: string, condition?: string) =>
    `after ${when} on ${table} for each row ${condition !== undefined ? `when ${condition} ` : ''}begin ${body} end`;
  return {
    deployment_plans_revision_insert: on('insert', 'deployment_plans', bumpRevision('new.fleet_name')),
    deployment_plans_revision_delete: on('delete', 'deployment_plans', bumpRevision('old.fleet_name')),
    deployment_stages_revision_insert: on('insert', 'deployment_stages', bumpRevision(planFleet('new'))),
    deployment_stages_revision_delete: on('delete', 'deployment_stages', bumpRevision(planFleet('old'))),
    deployment_stages_revision_update: on(
      'update',
      'deployment_stages',
      bumpRevision(planFleet('new')),
      'old.status is not new.status or old.selection is not new.selection or old.failure_policy is not new.failure_policy',
    ),
    deployment_targets_revision_insert: on('insert', 'deployment_targets', bumpRevision('new.fleet_name')),
    deployment_targets_revision_delete: on('delete', 'deployment_targets', bumpRevision('old.fleet_name')),
    deployment_targets_revision_update: on(
      'update',
      'deployment_targets',
      bumpRevision('new.fleet_name'),
      'old.status is not new.status or old.stage_name is not new.stage_name',
    ),
    deployment_handle_locks_revision_insert: on(
      'insert',
      'deployment_handle_locks',
      bumpRevision('new.fleet_name'),
    ),
    deployment_handle_locks_revision_delete: on(
      'delete',
      'deployment_handle_locks',
      bumpRevision('old.fleet_name'),
    ),
    deployment_handle_locks_revision_update: on(
      'update',
      'deployment_handle_locks',
      bumpRevision('old.fleet_name') + ' ' + bumpRevision('new.fleet_name'),
    ),
    deployment_plan_handles_revision_insert: on(
      'insert',
      'deployment_plan_handles',
      bumpRevision('new.fleet_name'),
    ),
    deployment_plan_handles_revision_delete: on(
      'delete',
      'deployment_plan_handles',
      bumpRevision('old.fleet_name'),
    ),
    devices_revision_insert: on('insert', 'devices', bumpRevision('new.fleet_name')),
    devices_revision_delete: on('delete', 'devices', bumpRevision('old.fleet_name')),
    devices_revision_update: on(
      'update',
      'devices',
      bumpRevision('old.fleet_name') + ' ' + bumpRevision('new.fleet_name'),
      'old.fleet_name is not new.fleet_name or old.name is not new.name',
    ),
    device_tags_revision_insert: on('insert', 'device_tags', bumpRevision(deviceFleet('new'))),
    device_tags_revision_delete: on('delete', 'device_tags', bumpRevision(deviceFleet('old'))),
    device_tags_revision_update: on('update', 'device_tags', bumpRevision(deviceFleet('new'))),
  };
}
