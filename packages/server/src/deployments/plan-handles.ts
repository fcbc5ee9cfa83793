/**
 * deployment_plan_handles: which plan names which model handle, the index a device's desired state is read by
 * (desired-state.ts). createPlan writes a plan's rows with it; migration 0025 wrote those of plans before it.
 * A plan an older build created after the migration (a replica still running it during a rolling upgrade, with
 * forceMigrate) has none, and no device would be given it: the deployment sweep fills them in. A process's
 * first sweep looks at every plan (the migration may have run long before this build served: `init` or
 * `--force-migrate` while old replicas went on); later ones only at plans created in the last
 * FILL_IN_WINDOW_MS (new builds sweep every few seconds while old ones run), by the deployment_plans_newest
 * index, so the sweep does not rescan every plan for ever.
 */
import type { Kysely } from 'kysely';
import { isForeignKeyViolation, pastPosition, type DatabaseSchema } from '../storage/index.js';
import { modelConfigSchema } from './deployment-schemas.js';

/** Plans read per statement: the recent plans without handle rows are walked in pages of this many. */
const PLANS_PER_PAGE = 100;
/** How far back the sweep looks for plans without handle rows: a week, well past any rolling upgrade. */
export const FILL_IN_WINDOW_MS = 7 * 86_400_000;

/** A plan whose handle rows could not be written: its stored model configs do not parse. */
export interface UnreadablePlan {
  plan: string;
  reason: string;
}

/**
 * Writes the handle rows of the plans created since `now - FILL_IN_WINDOW_MS` that have none; answers how many
 * it filled in, and the plans it skipped because their model configs do not parse (one bad row must not stop
 * the sweep, nor the plans after it).
 */
export async function recordMissingPlanHandles(
  db: Kysely<DatabaseSchema>,
  /** Only plans created since (ms); undefined: every plan (once per process: see DeploymentService.sweep). */
  since: number | undefined,
): Promise<{ filled: number; unreadable: UnreadablePlan[] }> {
  let filled = 0;
  const unreadable: UnreadablePlan[] = [];
  let after: { createdAt: number; name: string } | undefined;
  for (;;) {
    const plans = await db
      .selectFrom('deployment_plans as p')
      .select(['p.name', 'p.fleet_name', 'p.model_configs', 'p.created_at'])
      .$if(since !== undefined, (q) => q.where('p.created_at', '>=', since!))
      .$if(after !== undefined, (q) => q.where(pastPosition('p.created_at', 'p.name', after!, 'asc')))
      .where((eb) =>
        eb.not(
          eb.exists(
            eb
              .selectFrom('deployment_plan_handles as h')
              .select('h.plan_name')
              .whereRef('h.plan_name', '=', 'p.name'),
          ),
        ),
      )
      .orderBy('p.created_at')
      .orderBy('p.name')
      .limit(PLANS_PER_PAGE)
      .execute();
    for (const plan of plans) {
      let handles: Set<string>;
      try {
        handles = new Set(
          modelConfigSchema
            .array()
            .parse(JSON.parse(plan.model_configs))
            .map((c) => c.modelHandle),
        );
      } catch (error) {
        unreadable.push({ plan: plan.name, reason: error instanceof Error ? error.message : String(error) });
        continue;
      }
      if (handles.size === 0) continue;
      try {
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
          // Another replica's sweep may fill the same plan in at the same moment.
          .onConflict((oc) => oc.doNothing())
          .execute();
      } catch (error) {
        // Deleted since the page was read (by an operator, or retention): nothing to fill in, and the sweep goes on.
        if (isForeignKeyViolation(error)) continue;
        throw error;
      }
      filled += 1;
    }
    const last = plans.at(-1);
    if (plans.length < PLANS_PER_PAGE || last === undefined) break;
    after = { createdAt: Number(last.created_at), name: last.name };
  }
  return { filled, unreadable };
}
