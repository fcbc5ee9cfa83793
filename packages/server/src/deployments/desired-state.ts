/**
 * One desired state per device, computed from the plans of its fleet (GetDeployments):
 * - a plan whose started stage targeted the device counts while the device's status there is READYTODEPLOY,
 *   INPROGRESS or DEPLOYED (a FAILED or STOPPED device falls back to what earlier plans gave it, except that
 *   a device that FAILED under DO_NOTHING keeps what it has of the plan's model handles: nothing is sent for
 *   them until a later plan names them);
 * - a plan whose every stage is DEPLOYED also counts for a device no stage targeted, when a stage's rule
 *   covers it (it joined the fleet, or was re-registered, after the rollout: continuous deployment);
 * - per model handle the latest plan (creation order) wins.
 * Plans are read per model handle, newest first, through deployment_plan_handles, until one applies: a poll
 * reads the few newest plans that may apply to the device, not the fleet's history of finished plans.
 * Fetching it marks the device's READYTODEPLOY deployments INPROGRESS (taken): a device that never asks
 * stays pending, with its last-seen time, and is never shown as in progress.
 */
import { packageUrlOf, type EdgeDeployment, type GetDeploymentsResult } from '@edgefleet/core';
import { sql, type Kysely, type RawBuilder, type Transaction } from 'kysely';
import { selectableDevices } from '../devices/index.js';
import { laterOf, pastPosition, type DatabaseSchema } from '../storage/index.js';
import {
  storedDeviceSelectionSchema,
  modelConfigSchema,
  planOptionsSchema,
  type FailurePolicy,
  type ModelConfig,
} from './deployment-schemas.js';
import { selectsNewcomer } from './device-selection.js';

/** The device API path of a DEPLOY config's package (core's PackageUrl, which devices check). */
export function packagePathOf(config: ModelConfig): string | undefined {
  if (config.packagingJobName !== undefined)
    return packageUrlOf({ kind: 'job', job: config.packagingJobName });
  if (config.modelName !== undefined && config.modelVersion !== undefined) {
    return packageUrlOf({ kind: 'uploaded', modelName: config.modelName, modelVersion: config.modelVersion });
  }
  return undefined;
}

interface ApplicablePlan {
  name: string;
  /** Holds its model handles without sending them (a device that FAILED under DO_NOTHING keeps what it has). */
  holdsOnly?: boolean;
  configs: ModelConfig[];
  policy: FailurePolicy;
  allowDowngrade: boolean;
}

/** The columns of a stage the desired state reads. */
interface StageRow {
  plan_name: string;
  name: string;
  status: string;
  selection: string;
  failure_policy: string;
  position: number;
}

/** Candidate plans read per model handle in a first round; a handle left undecided reads more, four times as many. */
const FIRST_ROUND_PER_HANDLE = 4;
/**
 * Most candidate plans read per model handle in one round: a device walking back through a long history of plans
 * that do not apply to it (one per device on a shared handle) goes on in rounds of this many, so one statement
 * returns at most HANDLES_PER_STATEMENT times this many rows.
 */
const MAX_ROUND_PER_HANDLE = 256;
/** Handles asked for in one statement (a UNION ALL of one walk each): below SQLite's 500 compound terms. */
const HANDLES_PER_STATEMENT = 100;

/** A plan that may apply to a device for a model handle: it targeted the device, or it completed. */
interface Candidate {
  plan_name: string;
  model_handle: string;
  created_at: number;
}

/** Where a handle's walk stopped: its last candidate, in (created_at, plan_name) descending order. */
type HandleCursor = { createdAt: number; planName: string } | undefined;

/**
 * The model handles the fleet's plans name, each once: a skip from one to the next along the
 * deployment_plan_handles_newest index (one index seek per handle), not a read of every plan's rows.
 */
async function fleetHandles(db: Kysely<DatabaseSchema>, fleetName: string): Promise<string[]> {
  const { rows } = await sql<{ handle: string | null }>`with recursive handles(handle) as (
      select min(model_handle) from deployment_plan_handles where fleet_name = ${fleetName}
      union all
      select (select min(h.model_handle) from deployment_plan_handles as h
              where h.fleet_name = ${fleetName} and h.model_handle > handles.handle)
      from handles where handles.handle is not null
    ) select handle from handles where handle is not null`.execute(db);
  return rows.map((row) => row.handle!);
}

/**
 * The plans of the fleet naming `handle` that may apply to the device, newest first after `after`, at most
 * `limit`: those that targeted it and completed ones (every stage DEPLOYED) that a newcomer may get. A plan not
 * started, under way, failed or stopped without the device gives it nothing. An index walk backwards that stops
 * at `limit` candidates. Exported for the test of its query plan.
 */
export function candidatesOf(
  db: Kysely<DatabaseSchema>,
  device: { deviceName: string; fleetName: string },
  handle: string,
  after: HandleCursor,
  limit: number,
) {
  return db
    .selectFrom('deployment_plan_handles as h')
    .select(['h.plan_name', 'h.model_handle', 'h.created_at'])
    .where('h.fleet_name', '=', device.fleetName)
    .where('h.model_handle', '=', handle)
    .$if(after !== undefined, (q) =>
      q.where(
        pastPosition(
          'h.created_at',
          'h.plan_name',
          { createdAt: after!.createdAt, name: after!.planName },
          'desc',
        ),
      ),
    )
    .where((eb) =>
      eb.or([
        eb.exists(
          eb
            .selectFrom('deployment_targets as t')
            .select('t.plan_name')
            .whereRef('t.plan_name', '=', 'h.plan_name')
            .where('t.device_name', '=', device.deviceName),
        ),
        eb.and([
          eb.exists(
            eb
              .selectFrom('deployment_stages as s')
              .select('s.name')
              .whereRef('s.plan_name', '=', 'h.plan_name'),
          ),
          eb.not(
            eb.exists(
              eb
                .selectFrom('deployment_stages as s')
                .select('s.name')
                .whereRef('s.plan_name', '=', 'h.plan_name')
                .where('s.status', '!=', 'DEPLOYED'),
            ),
          ),
        ]),
      ]),
    )
    .orderBy('h.created_at', 'desc')
    .orderBy('h.plan_name', 'desc')
    .limit(limit);
}

/** The candidates of each handle (candidatesOf), newest first per handle: one statement per HANDLES_PER_STATEMENT. */
async function candidatesPerHandle(
  db: Kysely<DatabaseSchema>,
  device: { deviceName: string; fleetName: string },
  walks: readonly { handle: string; after: HandleCursor }[],
  limit: number,
): Promise<Candidate[]> {
  const found: Candidate[] = [];
  for (let i = 0; i < walks.length; i += HANDLES_PER_STATEMENT) {
    // Each walk wrapped as a subquery: a compound SELECT may not order or limit its terms on SQLite.
    const terms = walks
      .slice(i, i + HANDLES_PER_STATEMENT)
      .map(({ handle, after }, n) =>
        db.selectFrom(candidatesOf(db, device, handle, after, limit).as(`c${n}`)).selectAll(),
      );
    let query = terms[0]!;
    for (const term of terms.slice(1)) query = query.unionAll(term);
    const rows = await query.execute();
    for (const row of rows) found.push({ ...row, created_at: Number(row.created_at) });
  }
  // A UNION ALL keeps no order: newest first per handle again.
  return found.sort(
    (a, b) =>
      b.created_at - a.created_at || (a.plan_name < b.plan_name ? 1 : a.plan_name > b.plan_name ? -1 : 0),
  );
}

/** Whether, and how, a plan applies to the device: undefined when it gives it nothing. */
function applicabilityOf(
  plan: { name: string; model_configs: string; options: string },
  planStages: readonly StageRow[],
  target: { stage_name: string; status: string } | undefined,
  coversNewcomer: () => boolean,
): ApplicablePlan | undefined {
  const options = planOptionsSchema.parse(JSON.parse(plan.options));
  const configs = modelConfigSchema.array().parse(JSON.parse(plan.model_configs));
  if (target !== undefined) {
    const stage = planStages.find((s) => s.name === target.stage_name);
    const live =
      target.status === 'DEPLOYED' ||
      target.status === 'INPROGRESS' ||
      (target.status === 'READYTODEPLOY' && stage?.status === 'INPROGRESS');
    if (stage !== undefined && target.status === 'FAILED' && stage.failure_policy === 'DO_NOTHING') {
      // DO_NOTHING left the device's good models on their new versions: an earlier plan must not take
      // them back (anti-rollback would refuse, and fail that plan on the device), so the device keeps them.
      return { name: plan.name, configs, policy: 'DO_NOTHING', allowDowngrade: false, holdsOnly: true };
    }
    if (!live || stage === undefined) return undefined;
    return {
      name: plan.name,
      configs,
      policy: stage.failure_policy as FailurePolicy,
      allowDowngrade: options.allowDowngrade,
    };
  }
  const completed = planStages.length > 0 && planStages.every((s) => s.status === 'DEPLOYED');
  if (!completed || !coversNewcomer()) return undefined;
  return {
    name: plan.name,
    configs,
    policy: planStages[planStages.length - 1]?.failure_policy as FailurePolicy,
    allowDowngrade: options.allowDowngrade,
  };
}

/**
 * The plans whose model configs the device's desired state comes from, oldest first: each won at least one
 * model handle (a plan that holds its handles, `holdsOnly`, included: it sends nothing but keeps older plans
 * from taking them back). Reads only; GetDeployments and the plan retention sweep both decide by it.
 */
export async function winningPlans(
  trx: Kysely<DatabaseSchema>,
  device: { deviceName: string; fleetName: string },
  /** Candidate plans read per handle in one round at most (default MAX_ROUND_PER_HANDLE). */
  maxRoundPerHandle = MAX_ROUND_PER_HANDLE,
): Promise<{ applicable: ApplicablePlan[]; winner: Map<string, string> }> {
  // The newest plan that applies to the device wins each model handle, so for each handle the plans naming it
  // are judged newest first, and older ones are not read once one applies: a fleet's growing history of
  // finished plans is not read and parsed on every poll. A handle whose newest candidates all give the device
  // nothing (it failed them, a newer plan's rule does not cover it) reads further back.
  const judged = new Map<string, ApplicablePlan | undefined>();
  const createdAt = new Map<string, number>();
  const winner = new Map<string, string>();
  let self: Awaited<ReturnType<typeof selectableDevices>>[number] | null | undefined;
  // Each handle's walk: where it stopped; a handle decided, or out of candidates, walks no further.
  let walks = (await fleetHandles(trx, device.fleetName)).map((handle) => ({
    handle,
    after: undefined as HandleCursor,
  }));
  for (
    let perHandle = Math.min(FIRST_ROUND_PER_HANDLE, maxRoundPerHandle);
    walks.length > 0;
    perHandle = Math.min(perHandle * 4, maxRoundPerHandle)
  ) {
    const candidates = await candidatesPerHandle(trx, device, walks, perHandle);
    const fresh = [...new Set(candidates.map((c) => c.plan_name))].filter((name) => !judged.has(name));
    for (let i = 0; i < fresh.length; i += 500) {
      // Plans per IN (…) list: well under both engines' bind-parameter limits.
      const names = fresh.slice(i, i + 500);
      const plans = await trx
        .selectFrom('deployment_plans')
        .select(['name', 'model_configs', 'options', 'created_at'])
        .where('name', 'in', names)
        .execute();
      const stages = await trx
        .selectFrom('deployment_stages')
        .select(['plan_name', 'name', 'status', 'selection', 'failure_policy', 'position'])
        .where('plan_name', 'in', names)
        .orderBy('position')
        .execute();
      const targets = await trx
        .selectFrom('deployment_targets')
        .select(['plan_name', 'stage_name', 'status'])
        .where('device_name', '=', device.deviceName)
        .where('plan_name', 'in', names)
        .execute();
      const targetOf = new Map(targets.map((t) => [t.plan_name, t]));
      const stagesOf = new Map<string, StageRow[]>();
      for (const stage of stages)
        stagesOf.set(stage.plan_name, [...(stagesOf.get(stage.plan_name) ?? []), stage]);
      // Read once, only when a completed plan that did not target the device is judged.
      if (self === undefined && plans.some((p) => !targetOf.has(p.name))) {
        self = (await selectableDevices(trx, device.fleetName, [device.deviceName]))[0] ?? null;
      }
      for (const plan of plans) {
        const planStages = stagesOf.get(plan.name) ?? [];
        const me = self;
        createdAt.set(plan.name, Number(plan.created_at));
        judged.set(
          plan.name,
          applicabilityOf(plan, planStages, targetOf.get(plan.name), () =>
            me === null || me === undefined
              ? false
              : planStages.some((s) =>
                  selectsNewcomer(storedDeviceSelectionSchema.parse(JSON.parse(s.selection)), me),
                ),
          ),
        );
      }
    }
    // Candidates come newest first per handle: the first that applies wins it.
    const last = new Map<string, HandleCursor>();
    const seen = new Map<string, number>();
    for (const { plan_name: plan, model_handle: handle, created_at: at } of candidates) {
      seen.set(handle, (seen.get(handle) ?? 0) + 1);
      last.set(handle, { createdAt: at, planName: plan });
      if (!winner.has(handle) && judged.get(plan) !== undefined) winner.set(handle, plan);
    }
    // Undecided and not yet out of candidates (a full round): walk on from where it stopped.
    walks = walks
      .filter(({ handle }) => !winner.has(handle) && (seen.get(handle) ?? 0) >= perHandle)
      .map(({ handle }) => ({ handle, after: last.get(handle) }));
  }

  // The plans that won a handle, oldest first (creation time, then name), as every plan was once listed.
  const applicable = [...new Set(winner.values())]
    .sort((a, b) => createdAt.get(a)! - createdAt.get(b)! || (a < b ? -1 : a > b ? 1 : 0))
    .map((name) => judged.get(name)!);
  return { applicable, winner };
}

export async function desiredDeployments(
  trx: Transaction<DatabaseSchema>,
  device: { deviceName: string; fleetName: string },
  now: number,
  /**
   * When the device takes a deployment, judged by every replica's sweep (device timeout): the database's clock
   * (databaseNowMs, read in the update itself), or `now` where that is the clock (one process, tests).
   */
  takenAt: number | RawBuilder<number>,
): Promise<GetDeploymentsResult> {
  const { applicable, winner } = await winningPlans(trx, device);

  // The device's deployments not yet taken, of a stage under way, are taken now (whatever they win).
  const taken = (
    await trx
      .selectFrom('deployment_targets as t')
      .innerJoin('deployment_stages as s', (join) =>
        join.onRef('s.plan_name', '=', 't.plan_name').onRef('s.name', '=', 't.stage_name'),
      )
      .innerJoin('deployment_plans as p', 'p.name', 't.plan_name')
      .select('t.plan_name')
      .where('t.device_name', '=', device.deviceName)
      .where('t.status', '=', 'READYTODEPLOY')
      .where('s.status', '=', 'INPROGRESS')
      .where('p.fleet_name', '=', device.fleetName)
      .execute()
  ).map((row) => row.plan_name);

  const deployments: EdgeDeployment[] = [];
  for (const plan of applicable) {
    if (plan.holdsOnly) continue;
    const definitions = plan.configs
      .filter((c) => winner.get(c.modelHandle) === plan.name)
      .map((c) =>
        c.state === 'UNDEPLOY'
          ? { ModelHandle: c.modelHandle, State: 'UNDEPLOY' as const }
          : {
              ModelHandle: c.modelHandle,
              State: 'DEPLOY' as const,
              ...(c.modelName !== undefined && { ModelName: c.modelName }),
              ...(c.modelVersion !== undefined && { ModelVersion: c.modelVersion }),
              ...(packagePathOf(c) !== undefined && { PackageUrl: packagePathOf(c) }),
              ...(c.sha256 !== undefined && { Sha256: c.sha256 }),
              ...(c.sizeBytes !== undefined && { Size: c.sizeBytes }),
            },
      );
    if (definitions.length === 0) continue;
    deployments.push({
      DeploymentName: plan.name,
      Type: 'Model',
      FailureHandlingPolicy: plan.policy,
      Definitions: definitions,
      ...(plan.allowDowngrade && { AllowDowngrade: true }),
    });
  }

  if (taken.length > 0) {
    await trx
      .updateTable('deployment_targets')
      .set((eb) => ({
        status: 'INPROGRESS',
        attempts: eb('attempts', '+', 1),
        started_at: takenAt,
        status_message: null,
        updated_at: laterOf('updated_at', now),
      }))
      .where('device_name', '=', device.deviceName)
      .where('plan_name', 'in', taken)
      .where('status', '=', 'READYTODEPLOY')
      .execute();
  }
  return { Deployments: deployments };
}
