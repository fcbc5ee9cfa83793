/**
 * Retention of finished plans (deployments.planRetentionDays): a plan whose every stage finished before the
 * window, with no device still pending in it, is deleted with its stages, targets and events, unless a device's
 * desired state still comes from it or may soon again. Kept, so that no device's current target changes:
 * - a plan that wins a model handle (winningPlans, the rule GetDeployments answers by; a DO_NOTHING failure's
 *   hold counts) for a registered device, or for a device name with targets in the fleet's plans on its
 *   handles (deregistered, or moved to another fleet: its targets remain, and give it its state again once back);
 * - a completed plan a device registered later could still get: unless, for each of its model handles, a newer
 *   completed plan naming the handle has a stage whose rule covers every newcomer the plan's stages cover;
 * - a plan one of whose handles another (unfinished) plan holds: a device failing that one may fall back to it.
 * What a swept plan gave is then only in the devices' own state. The delete re-checks it in its own transaction,
 * so that what changed since the judgement counts: on SQLite, whose one connection the transaction holds, by the
 * fleet's revision (migration 0026; triggers move it on every write to what the judgement reads): unchanged, the
 * judgement stands without judging every device again; on PostgreSQL, whose queries hold no one else up, by
 * judging again after locking every plan of the fleet on the plans' handles.
 */
import { sql, type Kysely } from 'kysely';
import { selectableDevices } from '../devices/index.js';
import {
  pastPosition,
  type DatabaseEngine,
  type DatabaseSchema,
  type KeysetPosition,
} from '../storage/index.js';
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

/** Devices judged between two turns of the event loop. */
const DEVICES_PER_TURN = 50;

/** Where a sweep stopped: the last plan it judged, in (created_at, name) order. */
export type RetentionCursor = KeysetPosition;

/**
 * The finished plans that ended before `before`, oldest first after `after`, with no device pending in them;
 * `among`: of those plans only.
 */
async function expiredCandidates(
  db: Kysely<DatabaseSchema>,
  before: number,
  limit: number,
  after: RetentionCursor | undefined,
  among?: readonly string[],
) {
  return db
    .selectFrom('deployment_plans as p')
    .select(['p.name', 'p.fleet_name', 'p.created_at'])
    .where('p.created_at', '<', before)
    .$if(among !== undefined, (q) => q.where('p.name', 'in', [...among!]))
    .$if(after !== undefined, (q) => q.where(pastPosition('p.created_at', 'p.name', after!, 'asc')))
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
    /** The database's (ServerDatabase.engine): how the delete's transaction re-checks the judgement. */
    engine: DatabaseEngine;
    retentionMs: number;
    now: number;
    after?: RetentionCursor;
    /** Plans judged at most (default PLANS_PER_RETENTION_SWEEP). */
    batch?: number;
    /** Runs between the first judgement and the delete's transaction (a seam for tests of what changes meanwhile). */
    beforeDelete?: (planNames: readonly string[]) => Promise<void>;
    /** Runs inside the delete's transaction once its locks are held (a seam for tests of writers meanwhile). */
    whileLocked?: () => Promise<void>;
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
    // Read before the judgement: a write while it runs (it lets requests in) moves it too.
    const revision = options.engine === 'sqlite' ? await fleetRevision(db, fleetName) : undefined;
    // Judged first outside any transaction: most candidates past retention stay (the only plan on a handle, a
    // fallback), and judging them costs no lock. Those that would go are checked again inside the delete's.
    const kept = await plansStillSources(db, fleetName, plans);
    const doomed = plans.filter((plan) => !kept.has(plan.name)).map((plan) => plan.name);
    if (doomed.length === 0) continue;
    await options.beforeDelete?.(doomed);
    const gone = await db.transaction().execute(async (trx) => {
      if (options.engine === 'postgres') await lockJudgedPlans(trx, fleetName, doomed);
      // SQLite: its one connection runs no other transaction meanwhile, and this write makes it the writer.
      else
        await trx
          .updateTable('deployment_plans')
          .set((eb) => ({ updated_at: eb.ref('updated_at') }))
          .where('name', 'in', [...doomed].sort())
          .execute();
      await options.whileLocked?.();
      // Still finished before the window, no device pending (a stage added since makes it unfinished).
      const still = await expiredCandidates(trx, before, doomed.length, undefined, doomed);
      // No unfinished plan of the fleet holds one of its handles: a device failing it, or cancelled from it,
      // could fall back to this one.
      const held = await trx
        .selectFrom('deployment_handle_locks as l')
        .innerJoin('deployment_plan_handles as h', (join) =>
          join.onRef('h.model_handle', '=', 'l.model_handle').onRef('h.fleet_name', '=', 'l.fleet_name'),
        )
        .select('h.plan_name')
        .distinct()
        .where('l.fleet_name', '=', fleetName)
        .where('h.plan_name', 'in', doomed)
        .whereRef('l.plan_name', '<>', 'h.plan_name')
        .execute();
      const heldNames = new Set(held.map((h) => h.plan_name));
      const open = still.filter((plan) => !heldNames.has(plan.name));
      // Still no device's desired state (nor a newcomer's) comes from it: judged again unless, on SQLite, nothing
      // the judgement read was written since (the fleet's revision has not moved), when it stands as it was.
      const unchanged = revision !== undefined && (await fleetRevision(trx, fleetName)) === revision;
      const sources =
        open.length > 0 && !unchanged ? await plansStillSources(trx, fleetName, open) : new Set<string>();
      const removed: string[] = [];
      for (const plan of open) {
        if (sources.has(plan.name)) continue;
        await trx.deleteFrom('deployment_targets').where('plan_name', '=', plan.name).execute();
        const result = await trx
          .deleteFrom('deployment_plans')
          .where('name', '=', plan.name)
          .executeTakeFirst();
        await trx.deleteFrom('deployment_events').where('plan_name', '=', plan.name).execute();
        if (Number(result.numDeletedRows) > 0) removed.push(plan.name);
      }
      return removed;
    });
    for (const name of gone) deleted.push({ name, fleetName });
  }
  return { deleted, kept: candidates.length - deleted.length, ...(next !== undefined && { next }) };
}

/** SQLite: the fleet's revision (migration 0026), 0 before anything the judgement reads was first written. */
async function fleetRevision(db: Kysely<DatabaseSchema>, fleetName: string): Promise<number> {
  const row = await db
    .selectFrom('deployment_fleet_revisions')
    .select('revision')
    .where('fleet_name', '=', fleetName)
    .executeTakeFirst();
  return Number(row?.revision ?? 0);
}

/** The fleet's plans naming any model handle these plans name (a subquery of plan names). */
function plansSharingHandles(db: Kysely<DatabaseSchema>, fleetName: string, planNames: readonly string[]) {
  return db
    .selectFrom('deployment_plan_handles as h')
    .select('h.plan_name')
    .where('h.fleet_name', '=', fleetName)
    .where('h.model_handle', 'in', (eb) =>
      eb
        .selectFrom('deployment_plan_handles as mine')
        .select('mine.model_handle')
        .where('mine.plan_name', 'in', [...planNames]),
    );
}

/**
 * PostgreSQL: holds, until the delete commits, what the judgement rests on that a writer could change meanwhile:
 * first the fleet's retention lock (replicas sweeping the fleet take turns, so that two never lock overlapping
 * plans in different orders), then every plan of the fleet naming one of the doomed plans' handles, in name
 * order (a delete of a newer plan, or a stage added to one, waits until this ends, or has committed before
 * the check reads). An unfinished plan holds its handles (deployment_handle_locks), and the check reads those.
 */
async function lockJudgedPlans(
  trx: Kysely<DatabaseSchema>,
  fleetName: string,
  doomed: readonly string[],
): Promise<void> {
  await sql`select pg_advisory_xact_lock(hashtext('edgefleet plan retention'), hashtext(${fleetName}))`.execute(
    trx,
  );
  await trx
    .selectFrom('deployment_plans')
    .select('name')
    .where((eb) =>
      eb.or([eb('name', 'in', [...doomed]), eb('name', 'in', plansSharingHandles(trx, fleetName, doomed))]),
    )
    .orderBy('name')
    .forUpdate()
    .execute();
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

  // Registered devices a completed candidate may apply to as newcomers.
  const devices = new Set<string>();
  if ([...completed].some((name) => !sources.has(name))) {
    for (const device of await selectableDevices(db, fleetName)) devices.add(device.name);
  }
  // Every device name with a target in a plan of the fleet naming the candidates' handles, registered or not:
  // a deregistered device keeps its targets, as does one moved to another fleet, and re-registered under that
  // name (or moved back) it is given its desired state from them again (winningPlans judges the name as such;
  // a newcomer's share it has only while registered in the fleet).
  if (names.some((name) => !sources.has(name))) {
    const targeted = await db
      .selectFrom('deployment_targets as t')
      .select('t.device_name')
      .distinct()
      .where('t.plan_name', 'in', plansSharingHandles(db, fleetName, names))
      .execute();
    for (const target of targeted) devices.add(target.device_name);
  }
  let judged = 0;
  for (const deviceName of [...devices].sort()) {
    // Done once every candidate is a source; `sources` also gathers winners that are not candidates.
    if (names.every((name) => sources.has(name))) break;
    const { winner } = await winningPlans(db, { deviceName, fleetName });
    for (const plan of winner.values()) sources.add(plan);
    // SQLite's statements run on the event loop: let requests in between (PostgreSQL's queries yield anyway).
    judged += 1;
    if (judged % DEVICES_PER_TURN === 0) await new Promise((resolve) => setImmediate(resolve));
  }
  return new Set(names.filter((name) => sources.has(name)));
}
