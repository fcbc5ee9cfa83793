/**
 * One desired state per device, computed from the plans of its fleet (GetDeployments):
 * - a plan whose started stage targeted the device counts while the device's status there is READYTODEPLOY,
 *   INPROGRESS or DEPLOYED (a FAILED or STOPPED device falls back to what earlier plans gave it, except that
 *   a device that FAILED under DO_NOTHING keeps what it has of the plan's model handles: nothing is sent for
 *   them until a later plan names them);
 * - a plan whose every stage is DEPLOYED also counts for a device no stage targeted, when a stage's rule
 *   covers it (it joined the fleet, or was re-registered, after the rollout: continuous deployment);
 * - per model handle the latest plan (creation order) wins.
 * Fetching it marks the device's READYTODEPLOY deployments INPROGRESS (taken): a device that never asks
 * stays pending, with its last-seen time, and is never shown as in progress.
 */
import { packageUrlOf, type EdgeDeployment, type GetDeploymentsResult } from '@edgefleet/core';
import type { Transaction } from 'kysely';
import { selectableDevices } from '../devices/index.js';
import { laterOf, type DatabaseSchema } from '../storage/index.js';
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

export async function desiredDeployments(
  trx: Transaction<DatabaseSchema>,
  device: { deviceName: string; fleetName: string },
  now: number,
): Promise<GetDeploymentsResult> {
  // Only plans that can still apply to the device: those that targeted it, and completed ones (every stage
  // DEPLOYED) that a newcomer may get. A plan not started, under way, failed or stopped without the device
  // gives it nothing, so a fleet's growing plan history is not read and parsed on every poll.
  const plans = await trx
    .selectFrom('deployment_plans')
    .select(['name', 'model_configs', 'options'])
    .where('fleet_name', '=', device.fleetName)
    .where((eb) =>
      eb.or([
        eb.exists(
          eb
            .selectFrom('deployment_targets')
            .select('deployment_targets.plan_name')
            .whereRef('deployment_targets.plan_name', '=', 'deployment_plans.name')
            .where('deployment_targets.device_name', '=', device.deviceName),
        ),
        eb.and([
          eb.exists(
            eb
              .selectFrom('deployment_stages')
              .select('deployment_stages.name')
              .whereRef('deployment_stages.plan_name', '=', 'deployment_plans.name'),
          ),
          eb.not(
            eb.exists(
              eb
                .selectFrom('deployment_stages')
                .select('deployment_stages.name')
                .whereRef('deployment_stages.plan_name', '=', 'deployment_plans.name')
                .where('deployment_stages.status', '!=', 'DEPLOYED'),
            ),
          ),
        ]),
      ]),
    )
    .orderBy('created_at')
    .orderBy('name')
    .execute();
  if (plans.length === 0) return { Deployments: [] };
  const stages: StageRow[] = [];
  // Plans per IN (…) list: well under both engines' bind-parameter limits.
  for (let i = 0; i < plans.length; i += 500) {
    stages.push(
      ...(await trx
        .selectFrom('deployment_stages')
        .select(['plan_name', 'name', 'status', 'selection', 'failure_policy', 'position'])
        .where(
          'plan_name',
          'in',
          plans.slice(i, i + 500).map((p) => p.name),
        )
        .orderBy('position')
        .execute()),
    );
  }
  const targets = await trx
    .selectFrom('deployment_targets')
    .select(['plan_name', 'stage_name', 'status'])
    .where('device_name', '=', device.deviceName)
    .execute();
  const targetOf = new Map(targets.map((t) => [t.plan_name, t]));
  const stagesOf = new Map<string, StageRow[]>();
  for (const stage of stages)
    stagesOf.set(stage.plan_name, [...(stagesOf.get(stage.plan_name) ?? []), stage]);
  let self: Awaited<ReturnType<typeof selectableDevices>>[number] | undefined;

  const applicable: ApplicablePlan[] = [];
  const taken: string[] = [];
  for (const plan of plans) {
    const planStages = stagesOf.get(plan.name) ?? [];
    const options = planOptionsSchema.parse(JSON.parse(plan.options));
    const configs = modelConfigSchema.array().parse(JSON.parse(plan.model_configs));
    const target = targetOf.get(plan.name);
    if (target !== undefined) {
      const stage = planStages.find((s) => s.name === target.stage_name);
      const live =
        target.status === 'DEPLOYED' ||
        target.status === 'INPROGRESS' ||
        (target.status === 'READYTODEPLOY' && stage?.status === 'INPROGRESS');
      if (stage !== undefined && target.status === 'FAILED' && stage.failure_policy === 'DO_NOTHING') {
        // DO_NOTHING left the device's good models on their new versions: an earlier plan must not take
        // them back (anti-rollback would refuse, and fail that plan on the device), so the device keeps them.
        applicable.push({
          name: plan.name,
          configs,
          policy: 'DO_NOTHING',
          allowDowngrade: false,
          holdsOnly: true,
        });
        continue;
      }
      if (!live || stage === undefined) continue;
      if (target.status === 'READYTODEPLOY') taken.push(plan.name);
      applicable.push({
        name: plan.name,
        configs,
        policy: stage.failure_policy as FailurePolicy,
        allowDowngrade: options.allowDowngrade,
      });
      continue;
    }
    const completed = planStages.length > 0 && planStages.every((s) => s.status === 'DEPLOYED');
    if (!completed) continue;
    self ??= (await selectableDevices(trx, device.fleetName, [device.deviceName]))[0];
    if (self === undefined) continue;
    const me = self;
    if (
      !planStages.some((s) => selectsNewcomer(storedDeviceSelectionSchema.parse(JSON.parse(s.selection)), me))
    ) {
      continue;
    }
    applicable.push({
      name: plan.name,
      configs,
      policy: planStages[planStages.length - 1]?.failure_policy as FailurePolicy,
      allowDowngrade: options.allowDowngrade,
    });
  }

  // The latest plan wins each model handle.
  const winner = new Map<string, string>();
  for (const plan of applicable) for (const config of plan.configs) winner.set(config.modelHandle, plan.name);
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
        started_at: now,
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
