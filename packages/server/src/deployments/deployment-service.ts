import type { GetDeploymentsResult } from '@edgefleet/core';
import type { Kysely, Selectable, Transaction } from 'kysely';
import type { z } from 'zod';
import { LOCAL_ACTOR, type Actor, type FleetEventLog } from '../audit/index.js';
import { recordDeploymentResult, selectableDevices } from '../devices/index.js';
import { conflict, DomainError, invalid, notFound } from '../errors/index.js';
import { tagListSchema, type Tag } from '../fields/index.js';
import { LineLimiter } from '../logging/line-limiter.js';
import type { ModelStore, ModelVersionRecord } from '../models/index.js';
import type { DevicePackageAccess, PackagingJobStore } from '../packaging/index.js';
import {
  containsLoosely,
  databaseNowMs,
  isForeignKeyViolation,
  isUniqueViolation,
  laterOf,
  lockingRows,
  leaseClock,
  type DatabaseClock,
  type DatabaseEngine,
  type DatabaseSchema,
} from '../storage/index.js';
import {
  createPlanSchema,
  MAX_STAGES,
  modelConfigSchema,
  stageInputSchema,
  shownStopReason,
  type CreatePlanInput,
  type DeploymentEvent,
  type DeploymentEventKind,
  type DeviceDeploymentStatus,
  type ModelConfig,
  type PlanView,
  type StageDeviceView,
  type StageInput,
  type StageStatus,
  type StopReason,
} from './deployment-schemas.js';
import { desiredDeployments } from './desired-state.js';
import { FILL_IN_WINDOW_MS, recordMissingPlanHandles, type UnreadablePlan } from './plan-handles.js';
import { deleteExpiredPlans, type ExpiredPlan, type RetentionCursor } from './plan-retention.js';
import { planListQuery, planViewOf, type PlanListQuery } from './plan-view.js';
import { applyResults, isHeldMessage, type ReportedResult, type StaleResultRule } from './device-results.js';
import {
  planOptions,
  recordEvent,
  releaseFinishedPlan,
  settleStage,
  startStage,
  stopUnstartedDevices,
  unknownSelectedDevices,
  type RecordedEvent,
} from './stage-progress.js';

/** Zod's issues on one line, each with its path: messages travel in HTTP bodies and botocore errors. */
function oneLine(error: z.ZodError): string {
  return error.issues
    .map((i) => `${i.path.length > 0 ? i.path.map(String).join('.') : '(input)'}: ${i.message}`)
    .join('; ');
}

const iso = (ms: number) => new Date(ms).toISOString();

/** The timeout sweep acts on no one's request. */
const SWEEPER: Actor = { kind: 'server', worker: 'deployment sweep' };
/** Nor does the plan retention sweep. */
const RETENTION: Actor = { kind: 'server', worker: 'plan retention' };

/** Deployment events an operator must act on: logged at warn. */
const WARNED: ReadonlySet<DeploymentEventKind> = new Set<DeploymentEventKind>([
  'StageFailed',
  'StageAborted',
  'DeviceFailed',
  'DeviceRetried',
  'DeviceTimedOut',
  'DeviceRolledBack',
  'AutoAdvanceHeld',
]);

/** What came of each deployment event, for the log line's `outcome`. */
const OUTCOME_OF: Record<DeploymentEventKind, string> = {
  PlanCreated: 'created',
  StageStarted: 'started',
  StageStopped: 'stopped',
  StageDeployed: 'deployed',
  StageFailed: 'failed',
  StageAborted: 'aborted',
  DeviceFailed: 'failed',
  DeviceRetried: 'retrying',
  DeviceTimedOut: 'timed-out',
  DeviceCancelled: 'cancelled',
  DeviceRolledBack: 'rolled-back',
  AutoAdvanceHeld: 'held',
};

/** PlanCreated → plan_created: the log's event names. */
function snakeCase(kind: string): string {
  return kind.replace(/(?<=[a-z])([A-Z])/g, '_$1').toLowerCase();
}

/** The devices whose reports a batch applies: one names itself; a heartbeat batch of several, the server. */
function reportersOf(reports: readonly ReportedResult[]): Actor {
  const devices = new Set(reports.map((r) => r.deviceName));
  return devices.size === 1
    ? { kind: 'device', device: [...devices][0]! }
    : { kind: 'server', worker: `heartbeats of ${devices.size} devices` };
}

/** Whether a stop request stopped the stage at once, or left it STOPPING until its devices report. */
function stopOutcome(recorded: readonly RecordedEvent[]): string {
  return recorded.some((e) => e.kind === 'StageStopped') ? 'stopped' : 'stopping';
}

export interface DeploymentServiceOptions {
  /** The database's (ServerDatabase.engine): plan retention re-checks its judgement by it. */
  engine: DatabaseEngine;
  packagingJobs: PackagingJobStore;
  /** For plans that deploy uploaded packages (model versions uploaded as a signed .tar.gz). */
  models: Pick<ModelStore, 'getVersion' | 'deviceTrustWarningFor'>;
  /** Where each recorded deployment event is logged once its change commits; absent: nowhere (commands, tests). */
  events?: FleetEventLog;
  now?: () => number;
  /**
   * The database's clock (databaseClock): when a device took its deployment is written and judged (the device
   * timeout) by it, so that a replica whose clock is off never times out a device another replica handed its
   * deployment to; absent: `now` (one process, tests).
   */
  databaseNow?: DatabaseClock;
  /**
   * heartbeat.maxClockSkewSeconds in ms (default 1 h): a device's failure that ended longer than this before the
   * attempt it would end was handed out is stale, and left out.
   */
  maxClockSkewMs?: number;
}

/**
 * Devices remembered at most, for both their last logged left-out result and their line limit: one bound for one
 * concern, the oldest device forgotten first (it then starts over: its next left-out result is logged).
 */
const IGNORED_RESULT_DEVICES = 1000;

/**
 * Deployment plans (issue 9, server half): the in-process API that REST routes, the CLI and the SageMaker
 * facade (CreateEdgeDeploymentPlan … ListStageDevices) build on. All state is in the database; any number
 * of replicas may serve the same fleet (see stage-progress.ts for how they agree).
 */
export class DeploymentService implements DevicePackageAccess {
  private readonly now: () => number;
  private readonly databaseNow: DatabaseClock;

  /** Device → its last left-out result logged: heartbeats repeat a result every interval, and a repeat is no news. */
  private readonly loggedIgnored = new Map<string, string>();
  /** A device chooses what it reports: a new left-out result every call would flood the log. One a minute each. */
  private readonly ignoredLines: LineLimiter;
  /** Whether this process's sweep has filled in the handle rows of every plan once (plan-handles.ts). */
  private handlesFilledOnce = false;

  constructor(
    private readonly db: Kysely<DatabaseSchema>,
    private readonly options: DeploymentServiceOptions,
  ) {
    this.now = options.now ?? Date.now;
    this.databaseNow = leaseClock(options.databaseNow, () => this.now());
    this.ignoredLines = new LineLimiter({ now: this.now, maxKeys: IGNORED_RESULT_DEVICES });
  }

  /**
   * Logs a device result left out as the device's fleet event: nothing while the device repeats the same one,
   * and at most one line a minute per device, counting those left out since.
   */
  private logIgnored(report: ReportedResult, why: string, fields: Record<string, string | undefined>): void {
    const events = this.options.events;
    if (events === undefined) return;
    const seen = `${why}\u0000${JSON.stringify(report.result)}`;
    if (this.loggedIgnored.get(report.deviceName) === seen) return;
    const admitted = this.ignoredLines.admit(report.deviceName);
    // Remembered only once its line is written: a result held back by the limiter is not "seen", so a device
    // cannot log a decoy, then hide the result it means by repeating it (it is logged when the minute is up).
    if (admitted === undefined) return;
    this.loggedIgnored.delete(report.deviceName);
    if (this.loggedIgnored.size >= IGNORED_RESULT_DEVICES) {
      const oldest = this.loggedIgnored.keys().next().value;
      if (oldest !== undefined) this.loggedIgnored.delete(oldest);
    }
    this.loggedIgnored.set(report.deviceName, seen);
    const notLogged = admitted.leftOut > 0 ? `; ${admitted.leftOut} more left out since the last line` : '';
    events.info(
      { kind: 'device', device: report.deviceName },
      {
        event: 'deployment_result_ignored',
        outcome: 'ignored',
        object: {
          device: report.deviceName,
          fleet: report.fleetName,
          deployment: report.result.DeploymentName,
          status: report.result.DeploymentStatus,
          reason: why,
          ...fields,
          ...(admitted.leftOut > 0 && { resultsNotLogged: admitted.leftOut }),
        },
        message: `deployment result of device ${report.deviceName} for ${report.result.DeploymentName ?? 'no deployment'} left out: ${why} (logged at most once a minute per device${notLogged})`,
      },
    );
  }

  private get staleRule(): StaleResultRule {
    return {
      maxClockSkewMs: this.options.maxClockSkewMs ?? 3_600_000,
      onStale: (report, attemptStartedAt) =>
        this.logIgnored(
          report,
          "the failure ended before the attempt it would end was handed out (beyond heartbeat.maxClockSkewSeconds): an earlier attempt's, or a replay",
          {
            attemptStartedAt: new Date(attemptStartedAt).toISOString(),
            reportedEndTime: timeOf(report.result.DeploymentEndTime),
            reportedStartTime: timeOf(report.result.DeploymentStartTime),
          },
        ),
    };
  }

  /**
   * Creates a plan (CreateEdgeDeploymentPlan). Each DEPLOY config must name a COMPLETED packaging job. The
   * plan takes its model handles on the fleet until it finishes: a plan created while another still rolls
   * out one of its handles is a 409 (a database constraint decides, so two replicas cannot both win).
   */
  /**
   * Creates a plan. `warnings`: for each uploaded package it deploys that devices enrolled by this server will
   * refuse (models/device-trust.ts), why and what to do, as the package's upload said; the plan is created all the
   * same (an operator may give devices other roots). Packaging jobs' packages are the server's own signing.
   */
  async createPlan(
    input: CreatePlanInput,
    by: Actor = LOCAL_ACTOR,
  ): Promise<PlanView & { warnings?: string[] }> {
    const parsed = createPlanSchema.safeParse(input);
    if (!parsed.success) throw invalid(`deployment plan: ${oneLine(parsed.error)}`);
    const plan = parsed.data;
    assertUnique(
      plan.modelConfigs.map((c) => c.modelHandle),
      'model handle',
    );
    assertUnique(
      plan.stages.map((s) => s.name),
      'stage name',
    );
    const configs: ModelConfig[] = [];
    const uploaded: { handle: string; version: ModelVersionRecord }[] = [];
    for (const config of plan.modelConfigs) {
      if (config.state === 'UNDEPLOY') {
        configs.push({ modelHandle: config.modelHandle, state: 'UNDEPLOY' });
        continue;
      }
      if (config.packagingJobName === undefined) {
        const version = await this.options.models.getVersion(
          config.modelName ?? '',
          config.modelVersion ?? '',
        );
        if (version.sourceKind !== 'package') {
          throw conflict(
            `model ${version.modelName} version ${version.version} was uploaded as ONNX, not as a package; ` +
              'deploy it through a packaging job (packagingJobName), or upload a signed .tar.gz',
            { model: version.modelName, version: version.version, sourceKind: version.sourceKind },
          );
        }
        configs.push({
          modelHandle: config.modelHandle,
          state: 'DEPLOY',
          modelName: version.modelName,
          modelVersion: version.version,
          sha256: version.sha256,
          sizeBytes: version.sizeBytes,
        });
        uploaded.push({ handle: config.modelHandle, version });
        continue;
      }
      const job = await this.options.packagingJobs.get(config.packagingJobName);
      if (job.status !== 'COMPLETED' || job.artifactSha256 === null || job.artifactSizeBytes === null) {
        throw conflict(
          `packaging job ${job.name} is ${job.status}; a plan can deploy only a COMPLETED packaging job's package`,
          { packagingJob: job.name, status: job.status },
        );
      }
      configs.push({
        modelHandle: config.modelHandle,
        state: 'DEPLOY',
        packagingJobName: job.name,
        modelName: job.modelName,
        modelVersion: job.modelVersion,
        sha256: job.artifactSha256,
        sizeBytes: job.artifactSizeBytes,
      });
    }
    const at = this.now();
    const recorded: RecordedEvent[] = [];
    await this.db.transaction().execute(async (trx) => {
      try {
        await trx
          .insertInto('deployment_plans')
          .values({
            name: plan.name,
            fleet_name: plan.fleetName,
            model_configs: JSON.stringify(configs),
            options: JSON.stringify(plan.options),
            tags: JSON.stringify(plan.tags ?? []),
            created_at: at,
            updated_at: at,
          })
          .execute();
      } catch (error) {
        if (isUniqueViolation(error))
          throw conflict(`deployment plan ${plan.name} already exists`, { plan: plan.name });
        if (isForeignKeyViolation(error))
          throw notFound(`fleet ${plan.fleetName}`, { fleet: plan.fleetName });
        throw error;
      }
      // Model handles are unique within a plan (assertUnique above).
      await trx
        .insertInto('deployment_plan_handles')
        .values(
          configs.map((c) => ({
            plan_name: plan.name,
            fleet_name: plan.fleetName,
            model_handle: c.modelHandle,
            created_at: at,
          })),
        )
        .execute();
      await this.assertSelectedDevicesExist(trx, plan.fleetName, plan.stages);
      await this.insertStages(trx, plan.name, plan.stages, 0, at);
      await this.takeHandles(trx, plan.name, plan.fleetName, configs);
      await recordEvent(
        trx,
        {
          plan: plan.name,
          kind: 'PlanCreated',
          message: `plan created for fleet ${plan.fleetName}: ${configs
            .map((c) =>
              c.state === 'UNDEPLOY'
                ? `undeploy ${c.modelHandle}`
                : `${c.modelHandle} → ${c.modelName} ${c.modelVersion}`,
            )
            .join(', ')}`,
        },
        at,
        recorded,
      );
    });
    this.logRecorded(recorded, by, { fleet: plan.fleetName });
    const view = await this.describePlan(plan.name);
    // From what each upload's check kept (no package read: a plan that was created answers at once).
    const warnings: string[] = [];
    for (const { handle, version } of uploaded) {
      const warning = this.options.models.deviceTrustWarningFor(version);
      if (warning !== undefined) warnings.push(`model handle ${handle}: ${warning}`);
    }
    return warnings.length > 0 ? { ...view, warnings } : view;
  }

  /** Adds stages at the end of a plan (CreateEdgeDeploymentStage). */
  async addStages(planName: string, stages: StageInput[]): Promise<PlanView> {
    const checked = stageInputSchema.array().min(1).safeParse(stages);
    if (!checked.success) throw invalid(`deployment stages: ${oneLine(checked.error)}`);
    const parsed = checked.data;
    const at = this.now();
    await this.db.transaction().execute(async (trx) => {
      // Writing the plan row first serialises the writers that add stages to one plan: PostgreSQL holds its
      // row lock until commit (another replica waits here, then reads the stages this one added); SQLite
      // takes its single write lock before anything is read. So the count below cannot be stale.
      const touched = await trx
        .updateTable('deployment_plans')
        .set({ updated_at: laterOf('updated_at', at) })
        .where('name', '=', planName)
        .executeTakeFirst();
      if (Number(touched.numUpdatedRows) === 0)
        throw notFound(`deployment plan ${planName}`, { plan: planName });
      const plan = await this.planRow(trx, planName);
      const existing = await trx
        .selectFrom('deployment_stages')
        .select(['name', 'position'])
        .where('plan_name', '=', planName)
        .orderBy('position')
        .execute();
      assertUnique([...existing.map((s) => s.name), ...parsed.map((s) => s.name)], 'stage name');
      // The limit CreateEdgeDeploymentPlan enforces holds for stages added later too (checked with the
      // plan's stages read under the plan row's lock, so two replicas adding at once cannot both pass).
      if (existing.length + parsed.length > MAX_STAGES)
        throw invalid(
          `plan ${planName} has ${existing.length} stage(s); adding ${parsed.length} would exceed the limit: ` +
            `a plan has at most ${MAX_STAGES} stages`,
          { stages: existing.length, adding: parsed.length, max: MAX_STAGES },
        );
      // A finished plan gave its model handles back; new stages need them again.
      const held = await trx
        .selectFrom('deployment_handle_locks')
        .select('model_handle')
        .where('plan_name', '=', planName)
        .executeTakeFirst();
      if (held === undefined) {
        await this.takeHandles(
          trx,
          planName,
          plan.fleet_name,
          modelConfigSchema.array().parse(JSON.parse(plan.model_configs)),
        );
      }
      await this.assertSelectedDevicesExist(trx, plan.fleet_name, parsed);
      const last = existing[existing.length - 1]?.position ?? -1;
      await this.insertStages(trx, planName, parsed, Number(last) + 1, at);
    });
    return this.describePlan(planName);
  }

  /**
   * Starts a stage (StartEdgeDeploymentStage): snapshots the devices it targets. When an earlier stage of the
   * plan FAILED, only with `force` (a canary exists to stop the rollout); the SageMaker facade forces, as AWS
   * does not refuse.
   */
  async startStage(
    planName: string,
    stageName: string,
    options: { force: boolean } = { force: false },
    by: Actor = LOCAL_ACTOR,
  ): Promise<PlanView> {
    const at = this.now();
    const recorded: RecordedEvent[] = [];
    await this.db.transaction().execute(async (trx) => {
      const stage = await this.stageRow(trx, planName, stageName);
      const failed = await trx
        .selectFrom('deployment_stages')
        .select(['name', 'status_message'])
        .where('plan_name', '=', planName)
        .where('position', '<', stage.position)
        .where('status', '=', 'FAILED')
        .orderBy('position')
        .execute();
      if (failed.length > 0 && !options.force) {
        const first = failed[0]!;
        throw conflict(
          `stage ${first.name} of plan ${planName} FAILED` +
            (first.status_message !== null ? ` (${first.status_message})` : '') +
            `; stage ${stageName} comes after it and was not started. Look at why it failed ` +
            `(edgefleet deployment devices ${planName} ${first.name}); to start ${stageName} anyway, ` +
            'force it (force: true, edgefleet deployment start-stage --force)',
          { plan: planName, stage: stageName, failedStages: failed.map((s) => s.name) },
        );
      }
      const reason =
        failed.length > 0
          ? `started by an operator, forced although stage(s) ${failed.map((s) => s.name).join(', ')} FAILED`
          : 'started by an operator';
      try {
        await startStage(trx, planName, stageName, at, reason, recorded);
      } catch (error) {
        // Two stages of one plan started at the same moment can pick the same device; one of them waits.
        if (isUniqueViolation(error)) {
          throw conflict(
            `another stage of plan ${planName} was starting at the same time; start ${stageName} again`,
          );
        }
        throw error;
      }
      await settleStage(trx, planName, stageName, at, recorded, this.options.engine);
    });
    this.logRecorded(recorded, by);
    return this.describePlan(planName);
  }

  /**
   * Stops a stage (StopEdgeDeploymentStage): devices that have not taken the deployment are not started
   * (STOPPED); devices mid-update finish, or roll back, and report. The stage is STOPPING until they have,
   * or until they time out, then STOPPED. A READYTODEPLOY stage becomes STOPPED at once.
   */
  async stopStage(planName: string, stageName: string, by: Actor = LOCAL_ACTOR): Promise<PlanView> {
    const at = this.now();
    const recorded: RecordedEvent[] = [];
    await this.db.transaction().execute(async (trx) => {
      const stage = await this.stageRow(trx, planName, stageName);
      const from = stage.status as StageStatus;
      if (from !== 'READYTODEPLOY' && from !== 'INPROGRESS') {
        throw conflict(
          `stage ${stageName} of plan ${planName} is ${from}; only a stage not yet finished can stop`,
          {
            status: from,
          },
        );
      }
      const to: StageStatus = from === 'READYTODEPLOY' ? 'STOPPED' : 'STOPPING';
      const changed = await trx
        .updateTable('deployment_stages')
        .set({
          status: to,
          updated_at: laterOf('updated_at', at),
          status_message: 'stopped by an operator',
          ...(to === 'STOPPED' && { ended_at: at }),
        })
        .where('plan_name', '=', planName)
        .where('name', '=', stageName)
        .where('status', '=', from)
        .executeTakeFirst();
      if (Number(changed.numUpdatedRows) === 0)
        throw conflict(`stage ${stageName} changed meanwhile; try again`);
      await stopUnstartedDevices(trx, planName, stageName, 'stage-stopped', at);
      if (to === 'STOPPED') {
        await recordEvent(
          trx,
          { plan: planName, stage: stageName, kind: 'StageStopped', message: 'stopped before it started' },
          at,
          recorded,
        );
        await releaseFinishedPlan(trx, planName);
      }
      await settleStage(trx, planName, stageName, at, recorded, this.options.engine);
    });
    // A stage still STOPPING records its event once its devices have reported: the request is logged now.
    this.options.events?.info(by, {
      event: 'stage_stop_requested',
      outcome: stopOutcome(recorded),
      object: { plan: planName, stage: stageName },
      message: `stage ${stageName} of plan ${planName}: stop requested`,
    });
    this.logRecorded(recorded, by);
    return this.describePlan(planName);
  }

  /**
   * Cancels one device's deployment at any time: it is STOPPED with the reason, the deployment leaves its
   * desired state (the device goes back to what earlier plans gave it), and a late report is ignored.
   */
  async cancelDevice(
    planName: string,
    deviceName: string,
    by: Actor = LOCAL_ACTOR,
  ): Promise<StageDeviceView> {
    const at = this.now();
    const recorded: RecordedEvent[] = [];
    await this.db.transaction().execute(async (trx) => {
      const target = await trx
        .selectFrom('deployment_targets')
        .selectAll()
        .where('plan_name', '=', planName)
        .where('device_name', '=', deviceName)
        .executeTakeFirst();
      if (target === undefined) throw notFound(`device ${deviceName} in deployment plan ${planName}`);
      if (target.status !== 'READYTODEPLOY' && target.status !== 'INPROGRESS') {
        throw conflict(
          `device ${deviceName} is ${target.status} in plan ${planName}; only a pending device can be cancelled`,
          {
            status: target.status,
          },
        );
      }
      await trx
        .updateTable('deployment_targets')
        .set({
          status: 'STOPPED',
          stop_reason: 'cancelled' satisfies StopReason,
          status_message: 'cancelled by an operator',
          ended_at: at,
          updated_at: laterOf('updated_at', at),
        })
        .where('plan_name', '=', planName)
        .where('device_name', '=', deviceName)
        .where('status', '=', target.status)
        .execute();
      await recordEvent(
        trx,
        {
          plan: planName,
          stage: target.stage_name,
          device: deviceName,
          kind: 'DeviceCancelled',
          message: 'cancelled by an operator',
        },
        at,
        recorded,
      );
      await settleStage(trx, planName, target.stage_name, at, recorded, this.options.engine);
    });
    this.logRecorded(recorded, by);
    const [view] = await this.stageDevices(planName, undefined, { limit: 1, deviceName });
    if (view === undefined) throw notFound(`device ${deviceName} in deployment plan ${planName}`);
    return view;
  }

  /** Deletes a plan (DeleteEdgeDeploymentPlan) whose stages are all finished or never started. */
  async deletePlan(planName: string, by: Actor = LOCAL_ACTOR): Promise<void> {
    await this.db.transaction().execute(async (trx) => {
      // The plan's row first, as plan retention takes it (plan-retention.ts) before the plan's other rows: a
      // retention sweep deleting this plan is then waited for (and the plan found gone), not a deadlock.
      const plan = await lockingRows(
        this.options.engine,
        trx.selectFrom('deployment_plans').select('name').where('name', '=', planName),
      ).executeTakeFirst();
      if (plan === undefined) throw notFound(`deployment plan ${planName}`, { plan: planName });
      const active = await trx
        .selectFrom('deployment_stages')
        .select(['name', 'status'])
        .where('plan_name', '=', planName)
        .where('status', 'in', ['STARTING', 'INPROGRESS', 'STOPPING'])
        .executeTakeFirst();
      if (active !== undefined) {
        throw new DomainError(
          'ResourceInUse',
          `stage ${active.name} of plan ${planName} is ${active.status}; stop it (and let it finish) before deleting the plan`,
          { plan: planName, stage: active.name },
        );
      }
      await trx.deleteFrom('deployment_targets').where('plan_name', '=', planName).execute();
      await trx.deleteFrom('deployment_plans').where('name', '=', planName).execute();
      await trx.deleteFrom('deployment_events').where('plan_name', '=', planName).execute();
    });
    this.options.events?.info(by, {
      event: 'plan_deleted',
      outcome: 'deleted',
      object: { plan: planName },
      message: `deployment plan ${planName} deleted`,
    });
  }

  /** Deletes a stage that never started (DeleteEdgeDeploymentStage). */
  async deleteStage(planName: string, stageName: string): Promise<PlanView> {
    await this.db.transaction().execute(async (trx) => {
      const stage = await this.stageRow(trx, planName, stageName);
      if (stage.status !== 'READYTODEPLOY') {
        throw new DomainError(
          'ResourceInUse',
          `stage ${stageName} of plan ${planName} is ${stage.status}; only a stage that never started can be deleted`,
          { status: stage.status },
        );
      }
      await trx
        .deleteFrom('deployment_stages')
        .where('plan_name', '=', planName)
        .where('name', '=', stageName)
        .execute();
    });
    return this.describePlan(planName);
  }

  /**
   * Replaces a plan's tags (the SageMaker facade's AddTags/DeleteTags on an edge deployment plan). Logged as
   * `plan_updated` with the tag keys only: values may hold what an operator would not put in a log.
   */
  async setPlanTags(planName: string, tags: Tag[], by: Actor = LOCAL_ACTOR): Promise<PlanView> {
    const checked = tagListSchema.safeParse(tags);
    if (!checked.success) throw invalid(`deployment plan tags: ${oneLine(checked.error)}`);
    const result = await this.db
      .updateTable('deployment_plans')
      .set({ tags: JSON.stringify(checked.data), updated_at: laterOf('updated_at', this.now()) })
      .where('name', '=', planName)
      .executeTakeFirst();
    if (Number(result.numUpdatedRows) === 0)
      throw notFound(`deployment plan ${planName}`, { plan: planName });
    const plan = await this.describePlan(planName);
    const tagKeys = checked.data.map((tag) => tag.key).join(',');
    this.options.events?.info(by, {
      event: 'plan_updated',
      outcome: 'updated',
      object: { plan: planName, fleet: plan.fleetName, changed: 'tags', tagKeys },
      message: `deployment plan ${planName} updated (tags); its tags now: ${tagKeys === '' ? 'none' : tagKeys.split(',').join(', ')}`,
    });
    return plan;
  }

  /** The plan, its stages and their counts (DescribeEdgeDeploymentPlan). */
  async describePlan(planName: string): Promise<PlanView> {
    const plan = await this.planRow(this.db, planName);
    return (await this.viewsOf([plan]))[0]!;
  }

  /**
   * Plans (ListEdgeDeploymentPlans) in name order, or newest first (creation time, then name, both descending),
   * optionally of one fleet (a 404 when it does not exist) and only those with a stage in one of `stageStatus`.
   * Keyset-paged on the order's key. A fixed number of queries whatever the page size: the plans, then their
   * stages and target counts for the whole page at once (a describe per plan took three round trips each,
   * seconds for a page of hundreds).
   */
  async listPlans(query: PlanListQuery): Promise<PlanView[]> {
    if (query.fleetName !== undefined) {
      const fleet = await this.db
        .selectFrom('fleets')
        .select('name')
        .where('name', '=', query.fleetName)
        .executeTakeFirst();
      if (fleet === undefined) throw notFound(`fleet ${query.fleetName}`, { fleet: query.fleetName });
    }
    return this.viewsOf(await planListQuery(this.db, query).execute());
  }

  /** The views of these plan rows, in their order: their stages and counts read in two queries for all. */
  private async viewsOf(plans: Selectable<DatabaseSchema['deployment_plans']>[]): Promise<PlanView[]> {
    if (plans.length === 0) return [];
    const names = plans.map((p) => p.name);
    // A page is at most MAX_PAGE_SIZE + 1 plans: one IN list stays well under both engines' parameter limits.
    const stages = await this.db
      .selectFrom('deployment_stages')
      .selectAll()
      .where('plan_name', 'in', names)
      .orderBy('plan_name')
      .orderBy('position')
      .execute();
    const counts = await this.db
      .selectFrom('deployment_targets')
      .select(['plan_name', 'stage_name', 'status', (eb) => eb.fn.countAll<number>().as('count')])
      .where('plan_name', 'in', names)
      .groupBy(['plan_name', 'stage_name', 'status'])
      .execute();
    const stagesOf = new Map<string, typeof stages>();
    for (const stage of stages)
      stagesOf.set(stage.plan_name, [...(stagesOf.get(stage.plan_name) ?? []), stage]);
    const countsOf = new Map<string, typeof counts>();
    for (const c of counts) countsOf.set(c.plan_name, [...(countsOf.get(c.plan_name) ?? []), c]);
    return plans.map((plan) =>
      planViewOf(plan, stagesOf.get(plan.name) ?? [], countsOf.get(plan.name) ?? []),
    );
  }

  /** The devices a stage targeted, in name order, with their status and last-seen time (ListStageDevices). */
  async stageDevices(
    planName: string,
    stageName: string | undefined,
    query: { limit: number; after?: string; deviceName?: string; status?: DeviceDeploymentStatus },
  ): Promise<StageDeviceView[]> {
    const plan = await this.planRow(this.db, planName);
    if (stageName !== undefined) await this.stageRow(this.db, planName, stageName);
    let rows = this.db
      .selectFrom('deployment_targets')
      .selectAll()
      .where('plan_name', '=', planName)
      .orderBy('device_name')
      .limit(query.limit);
    if (stageName !== undefined) rows = rows.where('stage_name', '=', stageName);
    if (query.after !== undefined) rows = rows.where('device_name', '>', query.after);
    if (query.deviceName !== undefined) rows = rows.where('device_name', '=', query.deviceName);
    if (query.status !== undefined) rows = rows.where('status', '=', query.status);
    const targets = await rows.execute();
    const seen = new Map(
      (
        await selectableDevices(
          this.db,
          plan.fleet_name,
          targets.map((t) => t.device_name),
        )
      ).map((d) => [d.name, d.lastHeartbeatAt]),
    );
    return targets.map((t) => {
      const lastSeen = seen.get(t.device_name);
      return {
        planName,
        stageName: t.stage_name,
        fleetName: t.fleet_name,
        deviceName: t.device_name,
        status: t.status as DeviceDeploymentStatus,
        ...(t.status_message !== null && { statusMessage: t.status_message }),
        ...(t.status === 'STOPPED' &&
          t.stop_reason !== null && { stopReason: shownStopReason(t.stop_reason) }),
        attempts: Number(t.attempts),
        ...(t.started_at !== null && { startedAt: iso(t.started_at) }),
        ...(t.ended_at !== null && { endedAt: iso(t.ended_at) }),
        ...(lastSeen !== undefined && lastSeen !== null && { lastSeenAt: iso(lastSeen) }),
      };
    });
  }

  /**
   * The plan's events in time order (stage started, device failed, rollback, aborted, …), or newest first;
   * keyset-paged on the event id, which sorts in time order.
   */
  async events(
    planName: string,
    query: { limit: number; after?: string; order?: 'oldest' | 'newest' },
  ): Promise<DeploymentEvent[]> {
    await this.planRow(this.db, planName);
    const newest = query.order === 'newest';
    let rows = this.db
      .selectFrom('deployment_events')
      .selectAll()
      .where('plan_name', '=', planName)
      .orderBy('id', newest ? 'desc' : 'asc')
      .limit(query.limit);
    if (query.after !== undefined) rows = rows.where('id', newest ? '<' : '>', query.after);
    return (await rows.execute()).map((e) => ({
      id: e.id,
      planName: e.plan_name,
      ...(e.stage_name !== null && { stageName: e.stage_name }),
      ...(e.device_name !== null && { deviceName: e.device_name }),
      kind: e.kind as DeploymentEvent['kind'],
      message: e.message,
      at: iso(e.at),
    }));
  }

  /** GetDeployments: the device's desired state (see desired-state.ts). */
  async deploymentsFor(device: { deviceName: string; fleetName: string }): Promise<GetDeploymentsResult> {
    const at = this.now();
    return this.db
      .transaction()
      .execute((trx) =>
        desiredDeployments(
          trx,
          device,
          at,
          this.options.databaseNow === undefined ? at : databaseNowMs(this.options.engine),
        ),
      );
  }

  /** The fleet of each of these plans that exists (for the heartbeats' results, in their transaction). */
  async fleetsOfPlans(trx: Transaction<DatabaseSchema>, plans: string[]): Promise<Map<string, string>> {
    const fleets = new Map<string, string>();
    // Plans per IN (…) list: well under both engines' bind-parameter limits.
    for (let i = 0; i < plans.length; i += 500) {
      const rows = await trx
        .selectFrom('deployment_plans')
        .select(['name', 'fleet_name'])
        .where('name', 'in', plans.slice(i, i + 500))
        .execute();
      for (const row of rows) fleets.set(row.name, row.fleet_name);
    }
    return fleets;
  }

  /** Applies devices' DeploymentResults (from heartbeats, or their own call) and settles their stages. */
  async recordResults(reports: ReportedResult[]): Promise<void> {
    const recorded: RecordedEvent[] = [];
    await this.db.transaction().execute(async (trx) => {
      const stages = await applyResults(trx, reports, this.staleRule, recorded);
      const at = this.now();
      for (const { plan, stage } of stages)
        await settleStage(trx, plan, stage, at, recorded, this.options.engine);
    });
    this.logRecorded(recorded, reportersOf(reports), { devicesReported: true });
  }

  /**
   * A DeploymentResult a device sent on its own call (POST /api/v1/device/deployments/result): kept as the
   * device's last result, as a heartbeat carrying it would keep it, and applied to its deployment, in one
   * transaction. A heartbeat repeating it later is no news (the target row's digest). A result naming a plan
   * that is not one of the device's fleet's (another fleet's, one deleted since, none) is left out, logged: not
   * kept as the device's last result, nor applied. Not refused: the agent would hold it and the results behind
   * it, retrying, where the plan was deleted under an honest device.
   */
  async recordDeviceResult(report: ReportedResult): Promise<void> {
    const recorded: RecordedEvent[] = [];
    await this.db.transaction().execute(async (trx) => {
      const name = report.result.DeploymentName;
      if (name !== undefined && (await this.fleetsOfPlans(trx, [name])).get(name) !== report.fleetName) {
        this.logIgnored(report, `fleet ${report.fleetName} has no deployment plan named ${name}`, {});
        return;
      }
      await recordDeploymentResult(trx, report, report.result, report.receivedAt);
      const stages = await applyResults(trx, [report], this.staleRule, recorded);
      const at = this.now();
      for (const { plan, stage } of stages)
        await settleStage(trx, plan, stage, at, recorded, this.options.engine);
    });
    this.logRecorded(recorded, reportersOf([report]), { devicesReported: true });
  }

  /**
   * Ends what would otherwise wait forever: a device that took a deployment and did not report within the
   * plan's timeout is retried (attempts left) or FAILED with the reason; then every unfinished stage is
   * settled (finish, abort, auto-advance). First, plans an older build created without their handle rows get
   * them (plan-handles.ts); a plan whose stored model configs do not parse is skipped and answered in
   * `unreadablePlans`. Run periodically by every replica; idempotent.
   */
  async sweep(): Promise<{ timedOut: number; unreadablePlans: UnreadablePlan[] }> {
    // Every plan at this process's first sweep (an `init --force-migrate` may have run long before an old build's
    // replicas stopped creating plans), then the recent ones only.
    const handles = await recordMissingPlanHandles(
      this.db,
      this.handlesFilledOnce ? this.now() - FILL_IN_WINDOW_MS : undefined,
    );
    this.handlesFilledOnce = true;
    const at = this.now();
    const active = await this.db
      .selectFrom('deployment_stages')
      .select(['plan_name', 'name', 'status'])
      .where('status', 'in', ['INPROGRESS', 'STOPPING'])
      .execute();
    // started_at is the database's time the device took the deployment, through whichever replica.
    const databaseAt = await this.databaseNow();
    let timedOut = 0;
    for (const stage of active) {
      const recorded: RecordedEvent[] = [];
      await this.db.transaction().execute(async (trx) => {
        const options = await planOptions(trx, stage.plan_name);
        const cutoff = databaseAt - options.deviceTimeoutSeconds * 1000;
        const late = await trx
          .selectFrom('deployment_targets')
          .select(['device_name', 'attempts', 'started_at', 'status_message'])
          .where('plan_name', '=', stage.plan_name)
          .where('stage_name', '=', stage.name)
          .where('status', '=', 'INPROGRESS')
          .where('started_at', '<', cutoff)
          .execute();
        for (const target of late) {
          if (isHeldMessage(target.status_message)) continue;
          const retry = stage.status === 'INPROGRESS' && Number(target.attempts) <= options.maxRetries;
          const reason = `no result within ${options.deviceTimeoutSeconds} s of taking the deployment (attempt ${target.attempts})`;
          const message = retry ? `${reason}; retrying` : `timed out: ${reason}`;
          const changed = await trx
            .updateTable('deployment_targets')
            .set({
              status: retry ? 'READYTODEPLOY' : 'FAILED',
              status_message: message,
              updated_at: laterOf('updated_at', at),
              ...(!retry && { ended_at: at }),
            })
            .where('plan_name', '=', stage.plan_name)
            .where('device_name', '=', target.device_name)
            .where('status', '=', 'INPROGRESS')
            .where('attempts', '=', target.attempts)
            .executeTakeFirst();
          if (Number(changed.numUpdatedRows) === 0) continue;
          timedOut += 1;
          await recordEvent(
            trx,
            {
              plan: stage.plan_name,
              stage: stage.name,
              device: target.device_name,
              kind: retry ? 'DeviceRetried' : 'DeviceTimedOut',
              message,
            },
            at,
            recorded,
          );
        }
        await settleStage(trx, stage.plan_name, stage.name, at, recorded, this.options.engine);
      });
      this.logRecorded(recorded, SWEEPER);
    }
    return { timedOut, unreadablePlans: handles.unreadable };
  }

  /**
   * Deletes finished plans past `retentionMs` that no device's desired state comes from (plan-retention.ts),
   * each logged as `plan_deleted` (outcome `expired`) by the retention sweep.
   */
  async deleteExpiredPlans(
    retentionMs: number,
    after?: RetentionCursor,
  ): Promise<{ deleted: ExpiredPlan[]; kept: number; next?: RetentionCursor }> {
    const result = await deleteExpiredPlans(this.db, {
      engine: this.options.engine,
      retentionMs,
      now: this.now(),
      ...(after !== undefined && { after }),
    });
    for (const plan of result.deleted) {
      this.options.events?.info(RETENTION, {
        event: 'plan_deleted',
        outcome: 'expired',
        object: { plan: plan.name, fleet: plan.fleetName },
        message: `deployment plan ${plan.name} deleted: finished more than ${Math.round(retentionMs / 86_400_000)} day(s) ago (deployments.planRetentionDays), and no device's desired state comes from it`,
      });
    }
    return result;
  }

  /**
   * Logs the deployment events a committed change recorded, each naming `by` (whose call or report caused it,
   * auto-advance and settling included). Failures an operator must look at are warnings.
   */
  logRecorded(
    recorded: readonly RecordedEvent[],
    by: Actor,
    options: { fleet?: string; devicesReported?: boolean } = {},
  ): void {
    const log = this.options.events;
    if (log === undefined) return;
    const { devicesReported = false, ...extra } = options;
    for (const event of recorded) {
      // In a batch of devices' reports, what happened to one device was its own report's doing.
      const actor: Actor =
        devicesReported && event.device !== undefined ? { kind: 'device', device: event.device } : by;
      // An auto-advance is a stage started by a device's report (or the sweep): named as the advance it is.
      const line = {
        event: event.autoAdvance === true ? 'stage_advanced' : snakeCase(event.kind),
        outcome: OUTCOME_OF[event.kind],
        object: { plan: event.plan, stage: event.stage, device: event.device, ...extra },
        message: `deployment plan ${event.plan}${event.stage !== undefined ? ` stage ${event.stage}` : ''}${
          event.device !== undefined ? ` device ${event.device}` : ''
        }: ${event.message}`,
      };
      if (WARNED.has(event.kind)) log.warn(actor, line);
      else log.info(actor, line);
    }
  }

  /** DevicePackageAccess: a packaging job's package is downloadable by a fleet that a plan deploys it to. */
  async isDeployable(jobName: string, fleetName: string): Promise<boolean> {
    return this.fleetDeploys(fleetName, jobName, (c) => c.packagingJobName === jobName);
  }

  /** The same rule for an uploaded package (a model version uploaded as a signed .tar.gz). */
  async isUploadedPackageDeployable(
    modelName: string,
    modelVersion: string,
    fleetName: string,
  ): Promise<boolean> {
    return this.fleetDeploys(
      fleetName,
      modelName,
      (c) =>
        c.packagingJobName === undefined &&
        c.state === 'DEPLOY' &&
        c.modelName === modelName &&
        c.modelVersion === modelVersion,
    );
  }

  /**
   * Whether a plan for the fleet has a model config that `matches`. Every download asks (ranged resumes
   * included), and a fleet's plans accumulate: so the database first narrows them to those whose configs hold
   * `name` as a JSON string (as JSON.stringify wrote it), and only those are parsed and checked exactly.
   */
  private async fleetDeploys(
    fleetName: string,
    name: string,
    matches: (config: ModelConfig) => boolean,
  ): Promise<boolean> {
    const plans = await this.db
      .selectFrom('deployment_plans')
      .select('model_configs')
      .where('fleet_name', '=', fleetName)
      .where(containsLoosely('model_configs', JSON.stringify(name)))
      .execute();
    return plans.some((plan) =>
      modelConfigSchema.array().parse(JSON.parse(plan.model_configs)).some(matches),
    );
  }

  /**
   * A SELECTION stage names devices of the plan's fleet: a name that is not one (a typo, a device of another
   * fleet) is a 400 naming each such device, and the fleet any of them is registered in instead.
   */
  private async assertSelectedDevicesExist(
    trx: Transaction<DatabaseSchema>,
    fleetName: string,
    stages: ReturnType<typeof stageInputSchema.parse>[],
  ): Promise<void> {
    const problems: string[] = [];
    const unknownDevices: Record<string, string[]> = {};
    for (const stage of stages) {
      const unknown = await unknownSelectedDevices(trx, fleetName, stage.deviceSelection);
      if (unknown.length === 0) continue;
      const elsewhere = new Map(
        (
          await trx
            .selectFrom('devices')
            .select(['name', 'fleet_name'])
            .where('name', 'in', unknown)
            .execute()
        ).map((d) => [d.name, d.fleet_name]),
      );
      const named = unknown.map((name) =>
        elsewhere.has(name) ? `${name} (in fleet ${elsewhere.get(name)})` : name,
      );
      problems.push(`stage ${stage.name} names ${named.join(', ')}`);
      unknownDevices[stage.name] = unknown;
    }
    if (problems.length > 0) {
      throw invalid(
        `device(s) not registered in fleet ${fleetName}: ${problems.join('; ')}; a SELECTION stage deploys ` +
          `only to devices of the plan's fleet: register them in ${fleetName} first, or fix the names`,
        { fleet: fleetName, unknownDevices },
      );
    }
  }

  private async insertStages(
    trx: Transaction<DatabaseSchema>,
    planName: string,
    stages: ReturnType<typeof stageInputSchema.parse>[],
    firstPosition: number,
    at: number,
  ): Promise<void> {
    if (stages.length === 0) return;
    await trx
      .insertInto('deployment_stages')
      .values(
        stages.map((stage, i) => ({
          plan_name: planName,
          name: stage.name,
          position: firstPosition + i,
          selection: JSON.stringify(stage.deviceSelection),
          failure_policy: stage.failureHandlingPolicy,
          status: 'READYTODEPLOY',
          status_message: null,
          started_at: null,
          ended_at: null,
          updated_at: at,
        })),
      )
      .execute();
  }

  /** Takes the plan's model handles on its fleet; a handle another unfinished plan holds is a 409. */
  private async takeHandles(
    trx: Transaction<DatabaseSchema>,
    planName: string,
    fleetName: string,
    configs: ModelConfig[],
  ): Promise<void> {
    for (const config of configs) {
      const holder = await trx
        .selectFrom('deployment_handle_locks')
        .select('plan_name')
        .where('fleet_name', '=', fleetName)
        .where('model_handle', '=', config.modelHandle)
        .executeTakeFirst();
      const refuse = (holderName: string, open = '') =>
        conflict(
          `model handle ${config.modelHandle} is being rolled out to fleet ${fleetName} by plan ${holderName}${open}; ` +
            'finish, stop or delete that plan first (one unfinished plan per model handle and fleet)',
          { modelHandle: config.modelHandle, fleet: fleetName, plan: holderName },
        );
      if (holder !== undefined) {
        // Which of its stages keep it unfinished: an operator who stopped one stage may not see the next, unrun.
        const unfinished = await trx
          .selectFrom('deployment_stages')
          .select(['name', 'status'])
          .where('plan_name', '=', holder.plan_name)
          .where('status', 'in', ['READYTODEPLOY', 'INPROGRESS', 'STOPPING'])
          .orderBy('position')
          .execute();
        throw refuse(
          holder.plan_name,
          unfinished.length === 0
            ? ''
            : ` (its stage${unfinished.length > 1 ? 's' : ''} ${unfinished.map((st) => `${st.name} ${st.status}`).join(', ')} ${unfinished.length > 1 ? 'have' : 'has'} not ended)`,
        );
      }
      try {
        await trx
          .insertInto('deployment_handle_locks')
          .values({ fleet_name: fleetName, model_handle: config.modelHandle, plan_name: planName })
          .execute();
      } catch (error) {
        if (isUniqueViolation(error)) throw refuse('another plan created at the same moment');
        throw error;
      }
    }
  }

  private async planRow(db: Kysely<DatabaseSchema> | Transaction<DatabaseSchema>, planName: string) {
    const plan = await db
      .selectFrom('deployment_plans')
      .selectAll()
      .where('name', '=', planName)
      .executeTakeFirst();
    if (plan === undefined) throw notFound(`deployment plan ${planName}`, { plan: planName });
    return plan;
  }

  private async stageRow(
    db: Kysely<DatabaseSchema> | Transaction<DatabaseSchema>,
    planName: string,
    stageName: string,
  ) {
    await this.planRow(db, planName);
    const stage = await db
      .selectFrom('deployment_stages')
      .selectAll()
      .where('plan_name', '=', planName)
      .where('name', '=', stageName)
      .executeTakeFirst();
    if (stage === undefined)
      throw notFound(`stage ${stageName} of deployment plan ${planName}`, {
        plan: planName,
        stage: stageName,
      });
    return stage;
  }
}

function assertUnique(values: string[], what: string): void {
  const seen = new Set<string>();
  for (const value of values) {
    if (seen.has(value))
      throw invalid(`${what} ${value} appears twice; each ${what} must be unique`, { [what]: value });
    seen.add(value);
  }
}

/** An epoch-ms time of a device's report as ISO text, for the log. */
function timeOf(at: number | undefined): string | undefined {
  return at === undefined ? undefined : new Date(at).toISOString();
}
