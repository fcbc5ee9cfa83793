import type { Database } from 'better-sqlite3';

/** One step of the schema. Never edit a released migration; add a new one with the next version. */
export interface Migration {
  version: number;
  description: string;
  sql: string;
}

/**
 * The agent's local schema, version by version. The version applied is kept in `PRAGMA user_version`, and each
 * migration runs in the same transaction as the version bump, so a crash mid-migration leaves the previous
 * version intact. Times are epoch milliseconds.
 */
export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    description: 'capture queue and statuses, loaded models, model counters, upload ledger',
    sql: `
      -- Captures accepted by CaptureData (or automatic capture) and not yet written to a destination or the spool.
      -- meta: the capture without its bytes (JSON); payload: its bytes, concatenated (see capture/capture-item.ts).
      CREATE TABLE capture_queue (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        capture_id TEXT NOT NULL UNIQUE,
        model TEXT NOT NULL,
        meta TEXT NOT NULL,
        payload BLOB NOT NULL,
        -- Set once the capture is put in a batch; a batch is re-written under the same id after a crash.
        batch_id TEXT,
        enqueued_at INTEGER NOT NULL
      );
      CREATE INDEX capture_queue_batch ON capture_queue (batch_id, seq);

      -- What GetCaptureDataStatus answers; kept after delivery for a bounded time (see pruneStatuses).
      CREATE TABLE capture_status (
        capture_id TEXT PRIMARY KEY,
        status TEXT NOT NULL CHECK (status IN ('IN_PROGRESS', 'SUCCESS', 'FAILURE')),
        model TEXT NOT NULL,
        updated_at INTEGER NOT NULL,
        detail TEXT
      );
      CREATE INDEX capture_status_finished ON capture_status (status, updated_at);

      -- Models to load again after a restart, in the order they were loaded.
      CREATE TABLE loaded_models (
        name TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        loaded_at INTEGER NOT NULL,
        ordinal INTEGER NOT NULL
      );

      -- Per-model activity the heartbeat reports.
      CREATE TABLE model_counters (
        model TEXT PRIMARY KEY,
        inferences INTEGER NOT NULL DEFAULT 0,
        samples INTEGER NOT NULL DEFAULT 0,
        last_inference_at INTEGER,
        last_sample_at INTEGER
      );

      -- Disk capture files the periodic upload has put in the bucket (kept files only; removed ones need no mark).
      CREATE TABLE uploaded_files (
        path TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        mtime_ms INTEGER NOT NULL,
        uploaded_at INTEGER NOT NULL
      );
    `,
  },
  {
    version: 2,
    description: 'deployments: the update engine state per model handle',
    sql: `
      -- One row per model handle the update engine manages: its state machine (deployments/deployment-state.ts)
      -- and what it needs to resume after a crash. Every transition is written here before its effect.
      CREATE TABLE deployment_models (
        handle TEXT PRIMARY KEY,
        deployment_name TEXT NOT NULL,
        state TEXT NOT NULL,
        desired TEXT NOT NULL CHECK (desired IN ('DEPLOY', 'UNDEPLOY')),
        failure_policy TEXT NOT NULL,
        allow_downgrade INTEGER NOT NULL DEFAULT 0,
        model_name TEXT,
        version TEXT,
        package_url TEXT,
        sha256 TEXT,
        size INTEGER,
        -- The extracted, verified package folder of the version being installed.
        package_dir TEXT,
        -- What served the handle before (url as loaded), kept until the new version is committed.
        previous_url TEXT,
        previous_version TEXT,
        -- The last committed version (anti-rollback compares against it).
        committed_version TEXT,
        reason TEXT,
        rollback_failure_reason TEXT,
        -- Restarts seen while in this deployment's non-terminal states (a crash loop ends in a rollback).
        restarts INTEGER NOT NULL DEFAULT 0,
        started_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        ended_at INTEGER,
        -- 1 once a heartbeat carrying the terminal result was accepted.
        reported INTEGER NOT NULL DEFAULT 0
      );
    `,
  },
  {
    version: 3,
    description: 'capture queue: large payloads kept as files beside the database',
    sql: `
      -- A payload above the inline limit (state/capture-payload-files.ts) is written, off the event loop, to a file
      -- in the folder <database>-payloads before its row is inserted; the row names the file here and keeps an
      -- empty payload. Rows queued before this version keep their bytes inline (payload_file NULL).
      ALTER TABLE capture_queue ADD COLUMN payload_file TEXT
        CHECK (payload_file IS NULL OR length(payload) = 0);
      -- The file's size as written: a read takes exactly this many bytes, and a restart restores the buffer's
      -- byte count from it.
      ALTER TABLE capture_queue ADD COLUMN payload_bytes INTEGER
        CHECK ((payload_file IS NULL) = (payload_bytes IS NULL) AND (payload_bytes IS NULL OR payload_bytes >= 0));
    `,
  },
  {
    version: 4,
    description: 'capture queue: failed reads of a payload counted across restarts',
    sql: `
      -- The failed reads of the capture's payload that count towards giving it up (capture-queue.ts
      -- DeferralPolicy.maxTries): kept here so that an agent restarted more often than the tries take (a crash
      -- loop, power cycles) still gives up a payload that can never be read (EIO), instead of holding it forever.
      ALTER TABLE capture_queue ADD COLUMN read_tries INTEGER NOT NULL DEFAULT 0 CHECK (read_tries >= 0);
    `,
  },
  {
    version: 5,
    description: 'deployments: the last committed and the last failed deployment per model handle',
    sql: `
      -- deployment_models keeps one row per handle, replaced by each new deployment; this keeps, per handle, the
      -- last deployment that ended Committed ('committed') and the last that ended RolledBack or Failed
      -- ('failed'), so that the agent's status still shows a failure after the server gave up on it and offered
      -- the previous deployment again, and that one keeps its own times. Written with the row, in its transaction.
      CREATE TABLE deployment_outcomes (
        handle TEXT NOT NULL,
        outcome TEXT NOT NULL CHECK (outcome IN ('committed', 'failed')),
        deployment_name TEXT NOT NULL,
        state TEXT NOT NULL,
        version TEXT,
        package_dir TEXT,
        previous_url TEXT,
        previous_version TEXT,
        reason TEXT,
        rollback_failure_reason TEXT,
        started_at INTEGER NOT NULL,
        ended_at INTEGER NOT NULL,
        PRIMARY KEY (handle, outcome)
      );
      INSERT INTO deployment_outcomes
        SELECT handle, CASE state WHEN 'Committed' THEN 'committed' ELSE 'failed' END, deployment_name, state,
               version, package_dir, previous_url, previous_version, reason, rollback_failure_reason, started_at,
               ended_at
        FROM deployment_models
        WHERE state IN ('Committed', 'RolledBack', 'Failed') AND ended_at IS NOT NULL;
    `,
  },
  {
    version: 6,
    description: 'deployments: a model rolled back only because another model of its deployment failed',
    sql: `
      -- 1 when the model's rollback was not its own failure: healthy, it went back because another model of its
      -- ROLLBACK_ON_FAILURE deployment failed (the result then says FailedAfterSwitch false, so the server may
      -- retry). Before this version only the reason's opening words told it: rows written then keep that meaning.
      ALTER TABLE deployment_models ADD COLUMN rolled_back_with_deployment INTEGER NOT NULL DEFAULT 0
        CHECK (rolled_back_with_deployment IN (0, 1));
      UPDATE deployment_models SET rolled_back_with_deployment = 1
        WHERE state IN ('RollingBack', 'RolledBack', 'Failed')
          AND substr(reason, 1, 53) = 'rolled back with the deployment (ROLLBACK_ON_FAILURE)';
    `,
  },
  {
    version: 7,
    description: 'deployments: a deployed model an application unloaded',
    sql: `
      -- When an application's UnLoadModel (or the REST unload) took the Committed model of the handle out of
      -- service; NULL while it serves. The agent obeys the application and says so in its status and heartbeats.
      ALTER TABLE deployment_models ADD COLUMN unloaded_by_application_at INTEGER;
    `,
  },
  {
    version: 8,
    description: 'loaded models: who a model was loaded for',
    sql: `
      -- The caller a model was loaded for ({"uid":…,"gid":…,"groups":[…]}, JSON), where the agent checked its rights
      -- (LoadModel over the Unix socket, SO_PEERCRED): the next start loads it again only if that caller could still
      -- read it. NULL: the agent's own loads, root's or the agent user's, and every row written before this version
      -- (before caller checks existed), loaded again as before.
      ALTER TABLE loaded_models ADD COLUMN caller TEXT;
    `,
  },
];

export const LATEST_SCHEMA_VERSION = MIGRATIONS[MIGRATIONS.length - 1]!.version;

/**
 * The database was written by a newer agent (a downgrade, or a bundle rolled back): this agent does not know its
 * schema and changes nothing. A person must act: run the newer agent again, or move the database aside (which
 * drops queued captures and deployment state).
 */
export class NewerAgentDatabaseError extends Error {
  override readonly name = 'NewerAgentDatabaseError';
  constructor(
    readonly file: string,
    readonly schemaVersion: number,
    readonly knownVersion: number,
  ) {
    super(
      `the agent database ${file} has schema version ${schemaVersion}, newer than this agent knows (${knownVersion}); it was written by a newer agent: upgrade this agent, or move the database aside`,
    );
  }
}

/** Brings the database up to the latest version; returns the versions applied. */
export function migrate(db: Database, migrations: readonly Migration[] = MIGRATIONS): number[] {
  const current = db.pragma('user_version', { simple: true }) as number;
  const latest = migrations[migrations.length - 1]?.version ?? 0;
  if (current > latest) throw new NewerAgentDatabaseError(db.name, current, latest);
  const applied: number[] = [];
  for (const migration of migrations) {
    if (migration.version <= current) continue;
    db.transaction(() => {
      db.exec(migration.sql);
      // PRAGMA takes no bound parameters; the version is an integer from our own list.
      db.pragma(`user_version = ${Math.trunc(migration.version)}`);
    }).immediate();
    applied.push(migration.version);
  }
  return applied;
}
