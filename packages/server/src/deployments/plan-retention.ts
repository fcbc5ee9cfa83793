/**
 * Retention of finished plans (deployments.planRetentionDays): a plan whose every stage finished before the
 * window, with no device still pending in it, is deleted with its stages, targets and events, unless a device's
 * desired state still comes from it. Kept, so that no device's current target changes:
 * - a plan that wins a model handle for a registered device (winningPlans, the rule GetDeployments answers by;
 *   a DO_NOTHING failure's hold counts), whether the device took part in it or gets it as a newcomer;
 * - a completed plan a device registered later could still get: unless, for each of its model handles, a newer
 *   completed plan naming the handle has a stage whose rule covers every newcomer the plan's stages cover.
 * What a swept plan gave is then only in the devices' own state; a later failure of the newer plan that
 * superseded it falls back to the plans still kept.
 */
import type { Kysely } from 'kysely';
import { selectableDevices } from '../devices/index.js';
import type { DatabaseSchema } from '../storage/index.js';
import { storedDeviceSelectionSchema, type DeviceSelection } from './deployment-schemas.js';
import { winningPlans } from './desired-state.js';
import { FINISHED_STAGE, PENDING_DEVICE } from './stage-progress.js';

/** Plans judged per sweep, oldest first: a sweep's work is bounded; the next sweep goes on. */
export const PLANS_PER_RETENTION_SWEEP = 200;

/** A plan the sweep deleted: for the log. */
export interface ExpiredPlan {
  name: string;
  fleetName: string;
}

/** True when every tag `outer` names is one `inner` also requires: a device `inner` covers carries them. */
function tagsImplied(outer: DeviceSelection['tags'], inner: DeviceSelection['tags']): boolean {
  return Object.entries(outer ?? {}).every(([key, value]) => inner?.[key] === value);
}

/**
 * Whether every newcomer `inner` selects (devices no stage targeted; see selectsNewcomer) is also one `outer`
 * selects. A partial percentage selects no newcomer.
 */
function coversNewcomers(outer: DeviceSelection, inner: DeviceSelection): boolean {
  if (inner.subsetType === 'PERCENTAGE' && inner.percentage !== 100) return true;
  if (!tagsImplied(outer.tags, inner.tags)) return false;
  switch (outer.subsetType) {
    case 'PERCENTAGE':
      return outer.percentage === 100;
    case 'NAMECONTAINS': {
      const text = (outer.deviceNameContains ?? '').toLowerCase();
      if (inner.subsetType === 'NAMECONTAINS')
        return (inner.deviceNameContains ?? '').toLowerCase().includes(text);
      if (inner.subsetType === 'SELECTION')
        return (inner.deviceNames ?? []).every((name) => name.toLowerCase().includes(text));
      return false;
    }
    case 'SELECTION': {
      if (inner.subsetType !== 'SELECTION') return false;
      const names = new Set(outer.deviceNames ?? []);
      return (inner.deviceNames ?? []).every((name) => names.has(name));
    }
  }
}

/** Where a sweep stopped: the last plan it judged, in (created_at, name) order. */
export interface RetentionCursor {
  createdAt: number;
  name: string;
}

/** The finished plans that ended before `before`, oldest first after `after`, with no device pending in them. */
async function expiredCandidates(
  db: Kysely<DatabaseSchema>,
  before: number,
  limit: number,
  after: RetentionCursor | undefined,
) {
  return db
    .selectFrom('deployment_plans as p')
    .select(['p.name', 'p.fleet_name', 'p.created_at'])
    .where('p.created_at', '<', before)
    .$if(after !== undefined, (q) =>
      q.where((eb) =>
        eb.or([
          eb('p.created_at', '>', after!.createdAt),
          eb.and([eb('p.created_at', '=', after!.createdAt), eb('p.name', '>', after!.name)]),
        ]),
      ),
    )
    .where((eb) =>
      eb.and([
        eb.exists(
          eb.selectFrom('deployment_stages as s').select('s.name').whereRef('s.plan_name', '=', 'p.name'),
        ),
        eb.not(
          eb.exists(
            eb
              .selectFrom('deployment_stages as s')
              .select('s.name')
              .whereRef('s.plan_name', '=', 'p.name')
              .where((inner) =>
                inner.or([
                  inner('s.status', 'not in', FINISHED_STAGE),
                  inner(inner.fn.coalesce('s.ended_at', 's.updated_at'), '>=', before),
                ]),
              ),
          ),
        ),
        eb.not(
          eb.exists(
            eb
              .selectFrom('deployment_targets as t')
              .select('t.device_name')
              .whereRef('t.plan_name', '=', 'p.name')
              .where('t.status', 'in', [...PENDING_DEVICE]),
          ),
        ),
      ]),
    )
    .orderBy('p.created_at')
    .orderBy('p.name')
    .limit(limit)
    .execute();
}

/**
 * Deletes the finished plans that ended more than `retentionMs` ago and that no device's desired state comes
 * from (see above), at most PLANS_PER_RETENTION_SWEEP judged per call. Idempotent: every replica may run it.
 */
export async function deleteExpiredPlans(
  db: Kysely<DatabaseSchema>,
  options: {
    retentionMs: number;
    now: number;
    after?: RetentionCursor;
    /** Plans judged at most (default PLANS_PER_RETENTION_SWEEP). */
    batch?: number;
  },
): Promise<{ deleted: ExpiredPlan[]; kept: number; next?: RetentionCursor }> {
  const before = options.now - options.retentionMs;
  const batch = options.batch ?? PLANS_PER_RETENTION_SWEEP;
  const candidates = await expiredCandidates(db, before, batch, options.after);
  // A full batch: the next sweep goes on after it (plans kept at the front must not hold the rest back for ever);
  // else it starts again from the oldest.
  const last = candidates.at(-1);
  const next =
    candidates.length === batch && last !== undefined
      ? { createdAt: Number(last.created_at), name: last.name }
      : undefined;
  const fleets = new Map<string, typeof candidates>();
  for (const plan of candidates) fleets.set(plan.fleet_name, [...(fleets.get(plan.fleet_name) ?? []), plan]);
  const deleted: ExpiredPlan[] = [];
  for (const [fleetName, plans] of fleets) {
    const kept = await plansStillSources(db, fleetName, plans);
    for (const plan of plans) {
      if (kept.has(plan.name)) continue;
      const gone = await db.transaction().execute(async (trx) => {
        // Still finished and untouched: a stage added since (addStages) would have made it unfinished.
        const still = await trx
          .selectFrom('deployment_stages')
          .select('name')
          .where('plan_name', '=', plan.name)
          .where((eb) =>
            eb.or([
              eb('status', 'not in', FINISHED_STAGE),
              eb(eb.fn.coalesce('ended_at', 'updated_at'), '>=', before),
            ]),
          )
          .executeTakeFirst();
        if (still !== undefined) return false;
        await trx.deleteFrom('deployment_targets').where('plan_name', '=', plan.name).execute();
        const removed = await trx
          .deleteFrom('deployment_plans')
          .where('name', '=', plan.name)
          .executeTakeFirst();
        await trx.deleteFrom('deployment_events').where('plan_name', '=', plan.name).execute();
        return Number(removed.numDeletedRows) > 0;
      });
      if (gone) deleted.push({ name: plan.name, fleetName });
    }
  }
  return { deleted, kept: candidates.length - deleted.length, ...(next !== undefined && { next }) };
}

/** Of the fleet's candidate plans, those a device's desired state (a registered one's, or a newcomer's) comes from. */
async function plansStillSources(
  db: Kysely<DatabaseSchema>,
  fleetName: string,
  plans: { name: string; created_at: number }[],
): Promise<Set<string>> {
  const names = plans.map((p) => p.name);
  const sources = new Set<string>();
  const stages = await db
    .selectFrom('deployment_stages')
    .select(['plan_name', 'status', 'selection'])
    .where('plan_name', 'in', names)
    .execute();
  const completed = new Set(
    names.filter((name) => stages.every((s) => s.plan_name !== name || s.status === 'DEPLOYED')),
  );

  // A newcomer registered later: a completed plan stays unless newer completed plans cover it for each handle.
  if (completed.size > 0) {
    const handles = await db
      .selectFrom('deployment_plan_handles')
      .select(['plan_name', 'model_handle', 'created_at'])
      .where('fleet_name', '=', fleetName)
      .where('model_handle', 'in', (eb) =>
        eb
          .selectFrom('deployment_plan_handles')
          .select('model_handle')
          .where('plan_name', 'in', [...completed]),
      )
      .execute();
    const others = [...new Set(handles.map((h) => h.plan_name))];
    const otherStages = new Map<string, { status: string; selection: DeviceSelection }[]>();
    for (let i = 0; i < others.length; i += 500) {
      for (const stage of await db
        .selectFrom('deployment_stages')
        .select(['plan_name', 'status', 'selection'])
        .where('plan_name', 'in', others.slice(i, i + 500))
        .execute()) {
        otherStages.set(stage.plan_name, [
          ...(otherStages.get(stage.plan_name) ?? []),
          { status: stage.status, selection: storedDeviceSelectionSchema.parse(JSON.parse(stage.selection)) },
        ]);
      }
    }
    const isCompleted = (name: string) => {
      const of = otherStages.get(name) ?? [];
      return of.length > 0 && of.every((s) => s.status === 'DEPLOYED');
    };
    for (const plan of plans) {
      if (!completed.has(plan.name)) continue;
      const own = (otherStages.get(plan.name) ?? []).map((s) => s.selection);
      const newer = (name: string, at: number) =>
        at > Number(plan.created_at) || (at === Number(plan.created_at) && name > plan.name);
      const covered = handles
        .filter((h) => h.plan_name === plan.name)
        .every((mine) =>
          handles.some(
            (h) =>
              h.model_handle === mine.model_handle &&
              newer(h.plan_name, Number(h.created_at)) &&
              isCompleted(h.plan_name) &&
              own.every((inner) =>
                (otherStages.get(h.plan_name) ?? []).some((outer) => coversNewcomers(outer.selection, inner)),
              ),
          ),
        );
      if (!covered) sources.add(plan.name);
    }
  }

  // Registered devices: those a candidate may apply to (it targeted them; or, completed, any of the fleet).
  const devices = new Set<string>();
  if ([...completed].some((name) => !sources.has(name))) {
    for (const device of await selectableDevices(db, fleetName)) devices.add(device.name);
  }
  const open = names.filter((name) => !sources.has(name) && !completed.has(name));
  for (let i = 0; i < open.length; i += 500) {
    const targets = await db
      .selectFrom('deployment_targets')
      .select('device_name')
      .distinct()
      .where('plan_name', 'in', open.slice(i, i + 500))
      .where('status', 'in', ['DEPLOYED', 'FAILED'])
      .execute();
    for (const target of targets) devices.add(target.device_name);
  }
  for (const deviceName of [...devices].sort()) {
    if (sources.size === plans.length) break;
    const { winner } = await winningPlans(db, { deviceName, fleetName });
    for (const plan of winner.values()) sources.add(plan);
  }
  return new Set(names.filter((name) => sources.has(name)));
}
