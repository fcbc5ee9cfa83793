/**
 * deployment_plan_handles: which plan names which model handle, the index a device's desired state is read by
 * (desired-state.ts). createPlan writes a plan's rows with it; migration 0025 wrote those of plans before it.
 * A plan an older build created after the migration (a replica still running it during a rolling upgrade, with
 * forceMigrate) has none, and no device would be given it: the deployment sweep fills them in.
 */
import type { Kysely } from 'kysely';
import type { DatabaseSchema } from '../storage/index.js';
import { modelConfigSchema } from './deployment-schemas.js';

/** Plans filled in per call: the sweep runs every few seconds and goes on. */
const PLANS_PER_CALL = 100;

/** Writes the handle rows of plans that have none; answers how many plans it filled in. */
export async function recordMissingPlanHandles(db: Kysely<DatabaseSchema>): Promise<number> {
  const plans = await db
    .selectFrom('deployment_plans as p')
    .select(['p.name', 'p.fleet_name', 'p.model_configs', 'p.created_at'])
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
    .limit(PLANS_PER_CALL)
    .execute();
  for (const plan of plans) {
    const handles = new Set(
      modelConfigSchema
        .array()
        .parse(JSON.parse(plan.model_configs))
        .map((c) => c.modelHandle),
    );
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
      // Another replica's sweep may fill the same plan in at the same moment.
      .onConflict((oc) => oc.doNothing())
      .execute();
  }
  return plans.length;
}
