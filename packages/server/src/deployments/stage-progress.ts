/**
 * How a stage moves, as functions over the database (no state in memory, so any replica may run any of
 * them at any time): start a stage (snapshot its devices), settle it (abort, finish, auto-advance) and
 * record events. Every status change is a conditional UPDATE (`… where status = <what it was>`), so when two
 * replicas race, exactly one makes the change and records its event; the other changes nothing.
 */
import type { Kysely, Transaction } from 'kysely';
import { selectableDevices } from '../devices/index.js';
import { conflict } from '../errors/index.js';
import { laterOf, lockingRows, type DatabaseEngine, type DatabaseSchema } from '../storage/index.js';
import {
  storedDeviceSelectionSchema,
  planOptionsSchema,
  type DeploymentEventKind,
  type DeviceSelection,
  type PlanOptions,
  type StageStatus,
  type StopReason,
} from './deployment-schemas.js';
import { selectDevices } from './device-selection.js';
import { eventId } from './event-id.js';

export type Executor = Kysely<DatabaseSchema> | Transaction<DatabaseSchema>;

// Rows per multi-row INSERT: 10 columns × 500 stays far below both engines' bound-parameter limits.
const ROWS_PER_INSERT = 500;

/** Stage statuses after which nothing more happens to the stage. */
export const FINISHED_STAGE: readonly StageStatus[] = ['DEPLOYED', 'FAILED', 'STOPPED'];
/** Device statuses still waiting for the device: not taken yet, or taken and not reported. */
export const PENDING_DEVICE = ['READYTODEPLOY', 'INPROGRESS'] as const;

/** A deployment event as recorded: what the server's log says of it once its transaction commits. */
export interface RecordedEvent {
  plan: string;
  stage?: string;
  device?: string;
  kind: DeploymentEventKind;
  message: string;
  /** A StageStarted by auto-advance (a device's report or the sweep), not by a person: logged as stage_advanced. */
  autoAdvance?: true;
}

/**
 * Records the event, and adds it to `recorded`: the caller logs what its transaction recorded once it has
 * committed (a rolled-back change must not show in the log).
 */
export async function recordEvent(
  db: Executor,
  event: RecordedEvent,
  at: number,
  recorded: RecordedEvent[],
): Promise<void> {
  await db
    .insertInto('deployment_events')
    .values({
      id: eventId(at),
      plan_name: event.plan,
      stage_name: event.stage ?? null,
      device_name: event.device ?? null,
      kind: event.kind,
      message: event.message,
      at,
    })
    .execute();
  recorded.push(event);
}

/** Records the event unless the same one (plan, stage, kind, message) was recorded before: settling repeats. */
async function recordEventOnce(
  db: Executor,
  event: { plan: string; stage: string; kind: DeploymentEventKind; message: string },
  at: number,
  recorded: RecordedEvent[],
): Promise<void> {
  const earlier = await db
    .selectFrom('deployment_events')
    .select('id')
    .where('plan_name', '=', event.plan)
    .where('stage_name', '=', event.stage)
    .where('kind', '=', event.kind)
    .where('message', '=', event.message)
    .executeTakeFirst();
  if (earlier === undefined) await recordEvent(db, event, at, recorded);
}

export async function planOptions(db: Executor, planName: string): Promise<PlanOptions> {
  const row = await db
    .selectFrom('deployment_plans')
    .select('options')
    .where('name', '=', planName)
    .executeTakeFirstOrThrow();
  return planOptionsSchema.parse(JSON.parse(row.options));
}

export interface StageCounts {
  READYTODEPLOY: number;
  INPROGRESS: number;
  DEPLOYED: number;
  FAILED: number;
  STOPPED: number;
  total: number;
}

export async function stageCounts(db: Executor, planName: string, stageName: string): Promise<StageCounts> {
  const rows = await db
    .selectFrom('deployment_targets')
    .select(['status', (eb) => eb.fn.countAll<number>().as('count')])
    .where('plan_name', '=', planName)
    .where('stage_name', '=', stageName)
    .groupBy('status')
    .execute();
  const counts: StageCounts = {
    READYTODEPLOY: 0,
    INPROGRESS: 0,
    DEPLOYED: 0,
    FAILED: 0,
    STOPPED: 0,
    total: 0,
  };
  for (const row of rows) {
    const n = Number(row.count);
    if (row.status in counts) counts[row.status as keyof StageCounts] += n;
    counts.total += n;
  }
  return counts;
}

/**
 * The names a SELECTION stage gives that are not devices of the fleet now (none for the other subset types,
 * whose rules may rightly select nothing). A name the operator spelled out must exist: a typo would otherwise
 * make a stage that deploys to nobody and "succeeds".
 */
export async function unknownSelectedDevices(
  db: Executor,
  fleetName: string,
  selection: DeviceSelection,
): Promise<string[]> {
  if (selection.subsetType !== 'SELECTION') return [];
  const names = [...new Set(selection.deviceNames ?? [])];
  const found = new Set((await selectableDevices(db, fleetName, names)).map((d) => d.name));
  return names.filter((name) => !found.has(name));
}

function notReady(planName: string, stageName: string, status: string): Error {
  return conflict(
    `stage ${stageName} of plan ${planName} is ${status}; only a READYTODEPLOY stage can start`,
    { plan: planName, stage: stageName, status },
  );
}

/**
 * Starts a READYTODEPLOY stage: marks it INPROGRESS and writes its snapshot, the devices it targets, chosen
 * from the fleet's devices now (devices registered later are not added; see device-selection.ts). Earlier
 * stages must have been started first, so percentages are taken in order. True once started; false only for an
 * auto-advance (`options.autoAdvance`) that found the stage started meanwhile by another transaction (a report
 * to another replica, the sweep), or no longer startable (gone, or naming a device deregistered since its caller
 * looked): the caller's transaction (a device's result, a heartbeat's batch) must not fail for it. An operator's
 * start in those cases is refused (409).
 */
export async function startStage(
  trx: Transaction<DatabaseSchema>,
  planName: string,
  stageName: string,
  now: number,
  reason: string,
  recorded: RecordedEvent[],
  options: { autoAdvance?: boolean } = {},
): Promise<boolean> {
  const stages = await trx
    .selectFrom('deployment_stages')
    .selectAll()
    .where('plan_name', '=', planName)
    .orderBy('position')
    .execute();
  const stage = stages.find((s) => s.name === stageName);
  if (stage === undefined) {
    if (options.autoAdvance === true) return false;
    throw conflict(`stage ${stageName} of plan ${planName} does not exist`);
  }
  const plan = await trx
    .selectFrom('deployment_plans')
    .select('fleet_name')
    .where('name', '=', planName)
    .executeTakeFirstOrThrow();
  // Its own status first: a stage that already ran gets no advice meant for one that never started. An
  // auto-advance that finds it started already (another transaction committed first) got what it wanted.
  if (stage.status !== 'READYTODEPLOY') {
    if (options.autoAdvance === true) return false;
    throw notReady(planName, stageName, stage.status);
  }
  const waiting = stages.find((s) => s.position < stage.position && s.status === 'READYTODEPLOY');
  if (waiting !== undefined) {
    throw conflict(
      `stage ${stageName} of plan ${planName} cannot start before stage ${waiting.name}, which comes first; ` +
        'start the stages in order',
      { plan: planName, stage: stageName, before: waiting.name },
    );
  }
  const selection = storedDeviceSelectionSchema.parse(JSON.parse(stage.selection));
  // Checked when the stage was added; a named device deregistered since then is refused here, not skipped.
  const unknown = await unknownSelectedDevices(trx, plan.fleet_name, selection);
  if (unknown.length > 0) {
    // settleStage checked the devices before and records why it holds; a device deregistered since then must
    // not fail the reporting device's transaction either: the stage waits for an operator.
    if (options.autoAdvance === true) return false;
    // A stage added again goes last: say so, and name the (never started) stages to add again after it.
    const later = stages.filter((s) => s.position > stage.position).map((s) => s.name);
    const redo =
      later.length === 0
        ? `delete stage ${stageName} and add it again with devices that exist`
        : `a stage added again goes after the last one, so to keep the order delete stages ` +
          `${[stageName, ...later].join(', ')} and add them again in that order, ${stageName} with devices ` +
          'that exist';
    throw conflict(
      `stage ${stageName} of plan ${planName} names device(s) no longer registered in fleet ` +
        `${plan.fleet_name}: ${unknown.join(', ')}; ${redo}`,
      { plan: planName, stage: stageName, fleet: plan.fleet_name, unknownDevices: unknown },
    );
  }
  const started = await trx
    .updateTable('deployment_stages')
    .set({
      status: 'INPROGRESS',
      started_at: now,
      updated_at: laterOf('updated_at', now),
      status_message: null,
    })
    .where('plan_name', '=', planName)
    .where('name', '=', stageName)
    .where('status', '=', 'READYTODEPLOY')
    .executeTakeFirst();
  if (Number(started.numUpdatedRows) === 0) {
    // The update waited for the transaction that started it (PostgreSQL's row lock), and now matches nothing.
    if (options.autoAdvance === true) return false;
    // Another request changed it between the read above and this update: started, stopped or deleted it.
    throw conflict(
      `stage ${stageName} of plan ${planName} was changed by another request meanwhile (started, stopped or deleted); look at the plan again`,
      {
        plan: planName,
        stage: stageName,
      },
    );
  }
  const taken = await trx
    .selectFrom('deployment_targets')
    .select('device_name')
    .where('plan_name', '=', planName)
    .execute();
  const names = selection.subsetType === 'SELECTION' ? selection.deviceNames : undefined;
  const fleet = await selectableDevices(trx, plan.fleet_name, names);
  const chosen = selectDevices(planName, selection, fleet, new Set(taken.map((t) => t.device_name)));
  const rows = chosen.map((deviceName) => ({
    plan_name: planName,
    device_name: deviceName,
    stage_name: stageName,
    fleet_name: plan.fleet_name,
    status: 'READYTODEPLOY',
    status_message: null,
    stop_reason: null,
    attempts: 0,
    result_digest: null,
    started_at: null,
    ended_at: null,
    updated_at: now,
  }));
  for (let i = 0; i < rows.length; i += ROWS_PER_INSERT) {
    await trx
      .insertInto('deployment_targets')
      .values(rows.slice(i, i + ROWS_PER_INSERT))
      .execute();
  }
  await recordEvent(
    trx,
    {
      plan: planName,
      stage: stageName,
      kind: 'StageStarted',
      message: `stage started (${reason}); it targets ${rows.length} device(s)`,
      ...(options.autoAdvance === true && { autoAdvance: true as const }),
    },
    now,
    recorded,
  );
  return true;
}

/**
 * The stage's devices that have not taken the deployment (READYTODEPLOY) will not: STOPPED because the stage
 * was stopped or aborted, and ended then (a stopped device's deployment is over, as a failed or deployed one's is).
 */
export async function stopUnstartedDevices(
  db: Executor,
  planName: string,
  stageName: string,
  reason: Extract<StopReason, 'stage-stopped' | 'stage-aborted'>,
  now: number,
): Promise<void> {
  const message =
    reason === 'stage-stopped' ? 'not started: the stage was stopped' : 'not started: the stage was aborted';
  await db
    .updateTable('deployment_targets')
    .set({
      status: 'STOPPED',
      stop_reason: reason,
      status_message: message,
      ended_at: now,
      updated_at: laterOf('updated_at', now),
    })
    .where('plan_name', '=', planName)
    .where('stage_name', '=', stageName)
    .where('status', '=', 'READYTODEPLOY')
    .execute();
}

/**
 * How many of the stage's STOPPED devices were cancelled (an operator's cancel, a deregistration) rather than
 * left unstarted by a stop or an abort: their stop_reason, recorded when they were stopped, says which.
 */
async function cancelledCount(db: Executor, planName: string, stageName: string): Promise<number> {
  const cancelled: StopReason[] = ['cancelled', 'deregistered'];
  const row = await db
    .selectFrom('deployment_targets')
    .select((eb) => eb.fn.countAll<number>().as('count'))
    .where('plan_name', '=', planName)
    .where('stage_name', '=', stageName)
    .where('status', '=', 'STOPPED')
    .where('stop_reason', 'in', cancelled)
    .executeTakeFirstOrThrow();
  return Number(row.count);
}

/**
 * Brings a started stage's status in line with its devices: aborts it when failures pass the plan's
 * threshold (its devices not yet started are then not started), finishes it when no device is pending
 * (DEPLOYED, or FAILED when any failed; a STOPPING stage becomes STOPPED), starts the next stage when the
 * plan auto-advances and enough devices are DEPLOYED, and frees the plan's model handles once every stage
 * has finished. Safe to run any number of times, on any replica. `engine`: the database's (ServerDatabase.engine),
 * for the lock on the next stage's row that an auto-advance takes (lockingRows).
 */
export async function settleStage(
  trx: Transaction<DatabaseSchema>,
  planName: string,
  stageName: string,
  now: number,
  recorded: RecordedEvent[],
  engine: DatabaseEngine,
): Promise<void> {
  const stage = await trx
    .selectFrom('deployment_stages')
    .select(['status', 'position'])
    .where('plan_name', '=', planName)
    .where('name', '=', stageName)
    .executeTakeFirst();
  if (stage === undefined) return;
  const options = await planOptions(trx, planName);
  const counts = await stageCounts(trx, planName, stageName);
  const setStage = async (from: StageStatus, to: StageStatus, message: string | null) => {
    const result = await trx
      .updateTable('deployment_stages')
      .set({ status: to, status_message: message, ended_at: now, updated_at: laterOf('updated_at', now) })
      .where('plan_name', '=', planName)
      .where('name', '=', stageName)
      .where('status', '=', from)
      .executeTakeFirst();
    return Number(result.numUpdatedRows) === 1;
  };
  let status = stage.status as StageStatus;

  const finished = counts.DEPLOYED + counts.FAILED;
  const abort = options.abort;
  if (status === 'INPROGRESS' && abort !== undefined && counts.FAILED > 0 && finished >= abort.minDevices) {
    const overCount = abort.failedCount !== undefined && counts.FAILED >= abort.failedCount;
    const overPercent =
      abort.failedPercent !== undefined && counts.FAILED * 100 >= abort.failedPercent * finished;
    if (overCount || overPercent) {
      const message =
        `aborted: ${counts.FAILED} of ${finished} finished device(s) failed (threshold: ` +
        `${[
          abort.failedCount !== undefined ? `${abort.failedCount} devices` : undefined,
          abort.failedPercent !== undefined ? `${abort.failedPercent}%` : undefined,
        ]
          .filter(Boolean)
          .join(' or ')}, after ${abort.minDevices}); devices not yet started will not start`;
      if (await setStage('INPROGRESS', 'FAILED', message)) {
        await stopUnstartedDevices(trx, planName, stageName, 'stage-aborted', now);
        await recordEvent(
          trx,
          { plan: planName, stage: stageName, kind: 'StageAborted', message },
          now,
          recorded,
        );
        status = 'FAILED';
      }
    }
  }

  if ((status === 'INPROGRESS' || status === 'STOPPING') && counts.READYTODEPLOY + counts.INPROGRESS === 0) {
    if (status === 'STOPPING') {
      const cancelled = await cancelledCount(trx, planName, stageName);
      const message = `stopped: ${counts.DEPLOYED} deployed, ${counts.FAILED} failed, ${
        cancelled > 0 ? `${cancelled} cancelled, ` : ''
      }${counts.STOPPED - cancelled} not started`;
      if (await setStage('STOPPING', 'STOPPED', message)) {
        await recordEvent(
          trx,
          { plan: planName, stage: stageName, kind: 'StageStopped', message },
          now,
          recorded,
        );
        status = 'STOPPED';
      }
    } else if (counts.DEPLOYED === 0 && counts.STOPPED > 0 && counts.FAILED === 0) {
      const message = `stopped: every device (${counts.STOPPED}) was cancelled`;
      if (await setStage('INPROGRESS', 'STOPPED', message)) {
        await recordEvent(
          trx,
          { plan: planName, stage: stageName, kind: 'StageStopped', message },
          now,
          recorded,
        );
        status = 'STOPPED';
      }
    } else if (counts.FAILED > 0) {
      const message = `${counts.FAILED} of ${counts.total} device(s) failed`;
      if (await setStage('INPROGRESS', 'FAILED', message)) {
        await recordEvent(
          trx,
          { plan: planName, stage: stageName, kind: 'StageFailed', message },
          now,
          recorded,
        );
        status = 'FAILED';
      }
    } else {
      const message = `${counts.DEPLOYED} device(s) deployed`;
      if (await setStage('INPROGRESS', 'DEPLOYED', null)) {
        await recordEvent(
          trx,
          { plan: planName, stage: stageName, kind: 'StageDeployed', message },
          now,
          recorded,
        );
        status = 'DEPLOYED';
      }
    }
  }

  const advance = options.autoAdvance;
  if (
    advance !== undefined &&
    (status === 'INPROGRESS' || status === 'DEPLOYED') &&
    counts.DEPLOYED * 100 >= advance.successPercent * counts.total
  ) {
    // Locked before its status is read, so that this read and startStage's see one state: another transaction
    // that starts it (a report to another replica, the sweep) has committed before, or waits until this one ends.
    const next = await lockingRows(
      engine,
      trx
        .selectFrom('deployment_stages')
        .select(['name', 'status', 'selection'])
        .where('plan_name', '=', planName)
        .where('position', '>', stage.position)
        .orderBy('position')
        .limit(1),
    ).executeTakeFirst();
    if (next?.status === 'READYTODEPLOY') {
      const plan = await trx
        .selectFrom('deployment_plans')
        .select('fleet_name')
        .where('name', '=', planName)
        .executeTakeFirstOrThrow();
      const unknown = await unknownSelectedDevices(
        trx,
        plan.fleet_name,
        storedDeviceSelectionSchema.parse(JSON.parse(next.selection)),
      );
      // A stage that deployed no device proved nothing (0 of 0 would count as every device): auto-advance
      // waits for an operator, as it does for a next stage that names devices no longer in the fleet.
      const held =
        counts.DEPLOYED === 0
          ? `auto-advance does not start stage ${next.name}: stage ${stageName} deployed no device (it ` +
            'selected none); start the next stage by hand'
          : unknown.length > 0
            ? `auto-advance does not start stage ${next.name}: it names device(s) no longer registered in ` +
              `fleet ${plan.fleet_name}: ${unknown.join(', ')}`
            : undefined;
      if (held !== undefined) {
        await recordEventOnce(
          trx,
          { plan: planName, stage: stageName, kind: 'AutoAdvanceHeld', message: held },
          now,
          recorded,
        );
      } else {
        const started = await startStage(
          trx,
          planName,
          next.name,
          now,
          `auto-advance: ${counts.DEPLOYED} of ${counts.total} device(s) of stage ${stageName} deployed`,
          recorded,
          { autoAdvance: true },
        );
        // Not started: another transaction started it (and settles it); this one goes on.
        if (started) await settleStage(trx, planName, next.name, now, recorded, engine);
      }
    }
  }
  await releaseFinishedPlan(trx, planName);
}

/** Frees the plan's model handles on its fleet once every stage has finished (another plan may then take them). */
export async function releaseFinishedPlan(db: Executor, planName: string): Promise<void> {
  const open = await db
    .selectFrom('deployment_stages')
    .select('name')
    .where('plan_name', '=', planName)
    .where('status', 'not in', FINISHED_STAGE)
    .executeTakeFirst();
  if (open === undefined) {
    await db.deleteFrom('deployment_handle_locks').where('plan_name', '=', planName).execute();
  }
}
