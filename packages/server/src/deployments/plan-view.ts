/** A deployment plan's view (DescribeEdgeDeploymentPlan) from its stored rows, and what a plan listing asks. */
import type { Kysely, Selectable } from 'kysely';
import { pastPosition, type DatabaseSchema } from '../storage/index.js';
import {
  modelConfigSchema,
  planOptionsSchema,
  storedDeviceSelectionSchema,
  type DeviceDeploymentStatus,
  type PlanView,
  type StageStatus,
} from './deployment-schemas.js';

const iso = (ms: number) => new Date(ms).toISOString();

/** A plan's view from its row, its stages (in position order) and its targets counted by stage and status. */
export function planViewOf(
  plan: Selectable<DatabaseSchema['deployment_plans']>,
  stages: Selectable<DatabaseSchema['deployment_stages']>[],
  counts: { stage_name: string; status: string; count: number | string | bigint }[],
): PlanView {
  const count = (stage: string | undefined, ...statuses: DeviceDeploymentStatus[]) =>
    counts
      .filter(
        (c) =>
          (stage === undefined || c.stage_name === stage) &&
          statuses.includes(c.status as DeviceDeploymentStatus),
      )
      .reduce((sum, c) => sum + Number(c.count), 0);
  return {
    name: plan.name,
    fleetName: plan.fleet_name,
    modelConfigs: modelConfigSchema.array().parse(JSON.parse(plan.model_configs)),
    options: planOptionsSchema.parse(JSON.parse(plan.options)),
    tags: JSON.parse(plan.tags) as PlanView['tags'],
    successCount: count(undefined, 'DEPLOYED'),
    pendingCount: count(undefined, 'READYTODEPLOY', 'INPROGRESS'),
    failedCount: count(undefined, 'FAILED'),
    stages: stages.map((stage) => ({
      name: stage.name,
      deviceSelection: storedDeviceSelectionSchema.parse(JSON.parse(stage.selection)),
      failureHandlingPolicy: stage.failure_policy as 'ROLLBACK_ON_FAILURE' | 'DO_NOTHING',
      status: stage.status as StageStatus,
      ...(stage.status_message !== null && { statusMessage: stage.status_message }),
      successCount: count(stage.name, 'DEPLOYED'),
      pendingCount: count(stage.name, 'READYTODEPLOY', 'INPROGRESS'),
      failedCount: count(stage.name, 'FAILED'),
      stoppedCount: count(stage.name, 'STOPPED'),
      ...(stage.started_at !== null && { startedAt: iso(stage.started_at) }),
      ...(stage.ended_at !== null && { endedAt: iso(stage.ended_at) }),
    })),
    createdAt: iso(plan.created_at),
    updatedAt: iso(plan.updated_at),
  };
}

/** What `listPlans` lists: `afterNewest` continues a newest-first listing, `after` a name-order one. */
export interface PlanListQuery {
  limit: number;
  order?: 'name' | 'newest';
  after?: string;
  afterNewest?: { createdAt: number; name: string };
  fleetName?: string;
  stageStatus?: StageStatus[];
}

/**
 * The plan list's query (DeploymentService.listPlans; exported for the test of its query plan): newest first it walks
 * deployment_plans_newest, or deployment_plans_fleet_newest for one fleet, from the page's position.
 */
export function planListQuery(db: Kysely<DatabaseSchema>, query: PlanListQuery) {
  let rows = db.selectFrom('deployment_plans').selectAll().limit(query.limit);
  if (query.order === 'newest') {
    rows = rows.orderBy('created_at', 'desc').orderBy('name', 'desc');
    const after = query.afterNewest;
    if (after !== undefined) {
      rows = rows.where(pastPosition('created_at', 'name', after, 'desc'));
    }
  } else {
    rows = rows.orderBy('name');
    if (query.after !== undefined) rows = rows.where('name', '>', query.after);
  }
  if (query.fleetName !== undefined) rows = rows.where('fleet_name', '=', query.fleetName);
  const statuses = query.stageStatus ?? [];
  if (statuses.length > 0) {
    rows = rows.where((eb) =>
      eb.exists(
        eb
          .selectFrom('deployment_stages')
          .select('deployment_stages.name')
          .whereRef('deployment_stages.plan_name', '=', 'deployment_plans.name')
          .where('deployment_stages.status', 'in', statuses),
      ),
    );
  }
  return rows;
}
