import type { Database } from 'better-sqlite3';

/** One model handle's update, as the update engine persists it (table deployment_models). */
export interface DeploymentModelRow {
  handle: string;
  deploymentName: string;
  /** A DeploymentState (deployments/deployment-state.ts); stored as text. */
  state: string;
  desired: 'DEPLOY' | 'UNDEPLOY';
  failurePolicy: string;
  allowDowngrade: boolean;
  modelName: string | null;
  version: string | null;
  packageUrl: string | null;
  sha256: string | null;
  size: number | null;
  packageDir: string | null;
  previousUrl: string | null;
  previousVersion: string | null;
  committedVersion: string | null;
  reason: string | null;
  rollbackFailureReason: string | null;
  /**
   * Rolled back (or rolling back) only because another model of its ROLLBACK_ON_FAILURE deployment failed: not
   * a failure of this model's own version.
   */
  rolledBackWithDeployment: boolean;
  /** Restarts of the agent while this update's new version served the handle (a crash loop it may cause). */
  restarts: number;
  /**
   * When an application unloaded this handle's deployed (Committed) model through the agent's API; null (or
   * absent) while it serves, and once the handle is loaded again.
   */
  unloadedByApplicationAt?: number | null;
  startedAt: number;
  updatedAt: number;
  endedAt: number | null;
  reported: boolean;
}

const COLUMNS: ReadonlyArray<[keyof DeploymentModelRow, string]> = [
  ['handle', 'handle'],
  ['deploymentName', 'deployment_name'],
  ['state', 'state'],
  ['desired', 'desired'],
  ['failurePolicy', 'failure_policy'],
  ['allowDowngrade', 'allow_downgrade'],
  ['modelName', 'model_name'],
  ['version', 'version'],
  ['packageUrl', 'package_url'],
  ['sha256', 'sha256'],
  ['size', 'size'],
  ['packageDir', 'package_dir'],
  ['previousUrl', 'previous_url'],
  ['previousVersion', 'previous_version'],
  ['committedVersion', 'committed_version'],
  ['reason', 'reason'],
  ['rollbackFailureReason', 'rollback_failure_reason'],
  ['rolledBackWithDeployment', 'rolled_back_with_deployment'],
  ['restarts', 'restarts'],
  ['unloadedByApplicationAt', 'unloaded_by_application_at'],
  ['startedAt', 'started_at'],
  ['updatedAt', 'updated_at'],
  ['endedAt', 'ended_at'],
  ['reported', 'reported'],
];

/** How a handle's deployment ended, kept past the next deployment for the handle (table deployment_outcomes). */
export type DeploymentOutcome = 'committed' | 'failed';

/** The last deployment of a handle that ended one way (DeploymentOutcome). */
export interface DeploymentOutcomeRow {
  handle: string;
  outcome: DeploymentOutcome;
  deploymentName: string;
  /** Committed, or RolledBack / Failed. */
  state: string;
  version: string | null;
  packageDir: string | null;
  previousUrl: string | null;
  previousVersion: string | null;
  reason: string | null;
  rollbackFailureReason: string | null;
  startedAt: number;
  endedAt: number;
}

const OUTCOME_OF: Readonly<Record<string, DeploymentOutcome>> = {
  Committed: 'committed',
  RolledBack: 'failed',
  Failed: 'failed',
};

type Stored = Record<string, unknown>;

function toRow(stored: Stored): DeploymentModelRow {
  const row: Record<string, unknown> = {};
  for (const [field, column] of COLUMNS) row[field] = stored[column];
  row.allowDowngrade = stored.allow_downgrade === 1;
  row.rolledBackWithDeployment = stored.rolled_back_with_deployment === 1;
  row.reported = stored.reported === 1;
  return row as unknown as DeploymentModelRow;
}

function toStored(row: DeploymentModelRow): Stored {
  const stored: Stored = {};
  for (const [field, column] of COLUMNS) stored[column] = row[field] ?? null;
  stored.allow_downgrade = row.allowDowngrade ? 1 : 0;
  stored.rolled_back_with_deployment = row.rolledBackWithDeployment ? 1 : 0;
  stored.reported = row.reported ? 1 : 0;
  return stored;
}

/**
 * The update engine's state per model handle. Each `save` is one committed SQLite transaction: in WAL mode it
 * survives the agent being killed once it returns, which is what "written before its effect" relies on.
 */
export class DeploymentsRepository {
  readonly #db: Database;

  constructor(db: Database) {
    this.#db = db;
  }

  get(handle: string): DeploymentModelRow | undefined {
    const stored = this.#db.prepare('SELECT * FROM deployment_models WHERE handle = ?').get(handle) as
      Stored | undefined;
    return stored && toRow(stored);
  }

  list(): DeploymentModelRow[] {
    return (this.#db.prepare('SELECT * FROM deployment_models ORDER BY handle').all() as Stored[]).map(toRow);
  }

  /**
   * Inserts or replaces the handle's row; a row that ended (Committed, RolledBack, Failed) also becomes the
   * handle's last outcome of that kind, in the same transaction.
   */
  save(row: DeploymentModelRow): void {
    const columns = COLUMNS.map(([, column]) => column);
    this.#db.transaction(() => {
      this.#db
        .prepare(
          `INSERT OR REPLACE INTO deployment_models (${columns.join(', ')})
           VALUES (${columns.map((c) => `@${c}`).join(', ')})`,
        )
        .run(toStored(row));
      const outcome = OUTCOME_OF[row.state];
      if (outcome === undefined || row.endedAt === null) return;
      this.#db
        .prepare(
          `INSERT OR REPLACE INTO deployment_outcomes (handle, outcome, deployment_name, state, version,
             package_dir, previous_url, previous_version, reason, rollback_failure_reason, started_at, ended_at)
           VALUES (@handle, @outcome, @deploymentName, @state, @version, @packageDir, @previousUrl,
             @previousVersion, @reason, @rollbackFailureReason, @startedAt, @endedAt)`,
        )
        .run({
          handle: row.handle,
          outcome,
          deploymentName: row.deploymentName,
          state: row.state,
          version: row.version,
          packageDir: row.packageDir,
          previousUrl: row.previousUrl,
          previousVersion: row.previousVersion,
          reason: row.reason,
          rollbackFailureReason: row.rollbackFailureReason,
          startedAt: row.startedAt,
          endedAt: row.endedAt,
        });
    })();
  }

  /** The handle's last deployment that ended `outcome`, or undefined. */
  outcome(handle: string, outcome: DeploymentOutcome): DeploymentOutcomeRow | undefined {
    const stored = this.#db
      .prepare('SELECT * FROM deployment_outcomes WHERE handle = ? AND outcome = ?')
      .get(handle, outcome) as Stored | undefined;
    if (!stored) return undefined;
    return {
      handle: stored.handle as string,
      outcome: stored.outcome as DeploymentOutcome,
      deploymentName: stored.deployment_name as string,
      state: stored.state as string,
      version: stored.version as string | null,
      packageDir: stored.package_dir as string | null,
      previousUrl: stored.previous_url as string | null,
      previousVersion: stored.previous_version as string | null,
      reason: stored.reason as string | null,
      rollbackFailureReason: stored.rollback_failure_reason as string | null,
      startedAt: stored.started_at as number,
      endedAt: stored.ended_at as number,
    };
  }

  /** Several rows in one transaction (a deployment's models change together on commit or rollback). */
  saveAll(rows: readonly DeploymentModelRow[]): void {
    this.#db.transaction(() => rows.forEach((row) => this.save(row)))();
  }
}
