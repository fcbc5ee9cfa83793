import { z } from 'zod';
import { accessKeyActor } from '../../audit/index.js';
import {
  MAX_SELECTED_DEVICE_NAMES,
  type DeploymentService,
  type PlanView,
  type StageInput,
} from '../../deployments/index.js';
import type { DeviceStore } from '../../devices/index.js';
import { deviceNameSchema, entityNameSchema, fleetNameSchema } from '../../fields/index.js';
import type { ArnBuilder } from '../arns.js';
import { defineOperation, epochSeconds, present, type OperationModule } from '../operation.js';
import { awsTagList, fromAwsTags } from './aws-tags.js';
import {
  pageOf,
  pageOfList,
  pagingInput,
  requireNameOrder,
  timeFilterInput,
  withinTimeFilters,
} from './paging.js';

/** SageMaker's DeploymentStage → the native StageInput (the same members, camelCase). */
const deploymentStage = z
  .object({
    StageName: entityNameSchema,
    DeviceSelectionConfig: z
      .object({
        DeviceSubsetType: z.enum(['PERCENTAGE', 'SELECTION', 'NAMECONTAINS']),
        Percentage: z.int().min(0).max(100).optional(),
        DeviceNames: z.array(deviceNameSchema).min(1).max(MAX_SELECTED_DEVICE_NAMES).optional(),
        DeviceNameContains: deviceNameSchema.optional(),
      })
      .superRefine((selection, ctx) => {
        // Said here in SageMaker's member names (the native rule names its own).
        const needs = {
          PERCENTAGE: 'Percentage',
          SELECTION: 'DeviceNames',
          NAMECONTAINS: 'DeviceNameContains',
        } as const;
        const member = needs[selection.DeviceSubsetType];
        if (selection[member] === undefined)
          ctx.addIssue({
            code: 'custom',
            path: [member],
            message: `required when DeviceSubsetType is ${selection.DeviceSubsetType}`,
          });
      }),
    DeploymentConfig: z
      .object({ FailureHandlingPolicy: z.enum(['ROLLBACK_ON_FAILURE', 'DO_NOTHING']) })
      .optional(),
  })
  .transform(
    (stage): StageInput =>
      present({
        name: stage.StageName,
        deviceSelection: present({
          subsetType: stage.DeviceSelectionConfig.DeviceSubsetType,
          percentage: stage.DeviceSelectionConfig.Percentage,
          deviceNames: stage.DeviceSelectionConfig.DeviceNames,
          deviceNameContains: stage.DeviceSelectionConfig.DeviceNameContains,
        }) as StageInput['deviceSelection'],
        failureHandlingPolicy: stage.DeploymentConfig?.FailureHandlingPolicy,
      }) as StageInput,
  );

type Stage = PlanView['stages'][number];
const seconds = (iso: string | undefined) => (iso === undefined ? undefined : epochSeconds(Date.parse(iso)));

function stageSummary(stage: Stage) {
  return {
    StageName: stage.name,
    DeviceSelectionConfig: present({
      DeviceSubsetType: stage.deviceSelection.subsetType,
      Percentage: stage.deviceSelection.percentage,
      DeviceNames: stage.deviceSelection.deviceNames,
      DeviceNameContains: stage.deviceSelection.deviceNameContains,
    }),
    DeploymentConfig: { FailureHandlingPolicy: stage.failureHandlingPolicy },
    DeploymentStatus: present({
      StageStatus: stage.status,
      EdgeDeploymentSuccessInStage: stage.successCount,
      EdgeDeploymentPendingInStage: stage.pendingCount,
      EdgeDeploymentFailedInStage: stage.failedCount,
      EdgeDeploymentStatusMessage: stage.statusMessage,
      EdgeDeploymentStageStartTime: seconds(stage.startedAt),
    }),
  };
}

function planSummary(plan: PlanView, arns: ArnBuilder) {
  return {
    EdgeDeploymentPlanArn: arns.edgeDeploymentPlan(plan.name),
    EdgeDeploymentPlanName: plan.name,
    DeviceFleetName: plan.fleetName,
    EdgeDeploymentSuccess: plan.successCount,
    EdgeDeploymentPending: plan.pendingCount,
    EdgeDeploymentFailed: plan.failedCount,
    CreationTime: seconds(plan.createdAt),
    LastModifiedTime: seconds(plan.updatedAt),
  };
}

/** Stages are paged by position; the token carries the last position shown, zero-padded to sort as text. */
const positionKey = (index: number) => String(index).padStart(4, '0');

export interface DeploymentPlanOperationDeps {
  deployments: DeploymentService;
  devices: Pick<DeviceStore, 'find'>;
}

/**
 * CreateEdgeDeploymentPlan … ListStageDevices, mapped member by member onto DeploymentService (the rules —
 * selection, model handles, stage order, failure handling — live there only).
 */
export function deploymentPlanOperations({
  deployments,
  devices,
}: DeploymentPlanOperationDeps): OperationModule {
  const planName = { EdgeDeploymentPlanName: entityNameSchema };
  const stageRef = z.object({ ...planName, StageName: entityNameSchema });
  return {
    CreateEdgeDeploymentPlan: defineOperation({
      mutating: true,
      input: z.object({
        ...planName,
        ModelConfigs: z
          .array(z.object({ ModelHandle: entityNameSchema, EdgePackagingJobName: entityNameSchema }))
          .min(1),
        DeviceFleetName: fleetNameSchema,
        Stages: z.array(deploymentStage).optional(),
        Tags: awsTagList.optional(),
      }),
      run: async (input, { arns, key }) => {
        const plan = await deployments.createPlan(
          {
            name: input.EdgeDeploymentPlanName,
            fleetName: input.DeviceFleetName,
            modelConfigs: input.ModelConfigs.map((config) => ({
              modelHandle: config.ModelHandle,
              packagingJobName: config.EdgePackagingJobName,
            })),
            stages: input.Stages ?? [],
            tags: fromAwsTags(input.Tags ?? []),
          },
          accessKeyActor(key),
        );
        // (Only packaging jobs here, which the server signs: createPlan's warnings, about uploaded packages, do
        // not arise, and AWS's answer has no place for them.)
        return { EdgeDeploymentPlanArn: arns.edgeDeploymentPlan(plan.name) };
      },
    }),

    CreateEdgeDeploymentStage: defineOperation({
      mutating: true,
      input: z.object({ ...planName, Stages: z.array(deploymentStage) }),
      run: async (input) => {
        await deployments.addStages(input.EdgeDeploymentPlanName, input.Stages);
        return {};
      },
    }),

    StartEdgeDeploymentStage: defineOperation({
      mutating: true,
      input: stageRef,
      run: async (input, { key }) => {
        // AWS starts a stage whatever became of the stages before it; the native API's refusal after a
        // FAILED stage is not applied here (docs/sagemaker-compatibility.md).
        await deployments.startStage(
          input.EdgeDeploymentPlanName,
          input.StageName,
          { force: true },
          accessKeyActor(key),
        );
        return {};
      },
    }),

    StopEdgeDeploymentStage: defineOperation({
      mutating: true,
      input: stageRef,
      run: async (input, { key }) => {
        await deployments.stopStage(input.EdgeDeploymentPlanName, input.StageName, accessKeyActor(key));
        return {};
      },
    }),

    DeleteEdgeDeploymentPlan: defineOperation({
      mutating: true,
      input: z.object(planName),
      run: async (input, { key }) => {
        await deployments.deletePlan(input.EdgeDeploymentPlanName, accessKeyActor(key));
        return {};
      },
    }),

    DeleteEdgeDeploymentStage: defineOperation({
      mutating: true,
      input: stageRef,
      run: async (input) => {
        await deployments.deleteStage(input.EdgeDeploymentPlanName, input.StageName);
        return {};
      },
    }),

    DescribeEdgeDeploymentPlan: defineOperation({
      mutating: false,
      input: z.object({
        ...planName,
        NextToken: pagingInput.shape.NextToken,
        MaxResults: z.int().min(1).max(10).optional(),
      }),
      run: async (input, { arns }) => {
        const plan = await deployments.describePlan(input.EdgeDeploymentPlanName);
        const page = pageOfList(
          'DescribeEdgeDeploymentPlan',
          input,
          plan.stages.map((stage, index) => ({ stage, key: positionKey(index) })),
          (item) => item.key,
        );
        const { EdgeDeploymentPlanArn, EdgeDeploymentPlanName, DeviceFleetName, ...counts } = planSummary(
          plan,
          arns,
        );
        return present({
          EdgeDeploymentPlanArn,
          EdgeDeploymentPlanName,
          // An uploaded package or an UNDEPLOY config (EdgeFleet's) has no packaging job to name.
          ModelConfigs: plan.modelConfigs.map((config) =>
            present({ ModelHandle: config.modelHandle, EdgePackagingJobName: config.packagingJobName }),
          ),
          DeviceFleetName,
          ...counts,
          Stages: page.items.map((item) => stageSummary(item.stage)),
          NextToken: page.nextToken,
        });
      },
    }),

    ListEdgeDeploymentPlans: defineOperation({
      mutating: false,
      input: pagingInput.extend(timeFilterInput.shape).extend({
        NameContains: z.string().max(63).optional(),
        DeviceFleetNameContains: z.string().max(63).optional(),
        SortBy: z.enum(['NAME', 'DEVICE_FLEET_NAME', 'CREATION_TIME', 'LAST_MODIFIED_TIME']).optional(),
        SortOrder: z.enum(['Ascending', 'Descending']).optional(),
      }),
      run: async (input, { arns }) => {
        requireNameOrder('edge deployment plans', 'NAME', input);
        const page = await pageOf(
          'ListEdgeDeploymentPlans',
          input,
          (after, limit) => deployments.listPlans({ limit, ...present({ after }) }),
          (plan) => plan.name,
        );
        const contains = (text: string, part?: string) =>
          part === undefined || text.toLowerCase().includes(part.toLowerCase());
        const kept = page.items.filter(
          (plan) =>
            contains(plan.name, input.NameContains) &&
            contains(plan.fleetName, input.DeviceFleetNameContains) &&
            withinTimeFilters(
              { createdAt: Date.parse(plan.createdAt), updatedAt: Date.parse(plan.updatedAt) },
              input,
            ),
        );
        return present({
          EdgeDeploymentPlanSummaries: kept.map((plan) => present(planSummary(plan, arns))),
          NextToken: page.nextToken,
        });
      },
    }),

    ListStageDevices: defineOperation({
      mutating: false,
      input: pagingInput.extend({
        ...stageRef.shape,
        // A device is in at most one stage of a plan here, so devices of other stages are never listed.
        ExcludeDevicesDeployedInOtherStage: z.boolean().optional(),
      }),
      run: async (input, { arns }) => {
        const page = await pageOf(
          'ListStageDevices',
          input,
          (after, limit) =>
            deployments.stageDevices(input.EdgeDeploymentPlanName, input.StageName, {
              limit,
              ...present({ after }),
            }),
          (device) => device.deviceName,
        );
        const summaries = [];
        for (const device of page.items) {
          const record = await devices.find(device.deviceName);
          summaries.push(
            present({
              EdgeDeploymentPlanArn: arns.edgeDeploymentPlan(device.planName),
              EdgeDeploymentPlanName: device.planName,
              StageName: input.StageName,
              DeployedStageName: device.stageName,
              DeviceFleetName: device.fleetName,
              DeviceName: device.deviceName,
              DeviceArn: arns.device(device.fleetName, device.deviceName),
              DeviceDeploymentStatus: device.status,
              DeviceDeploymentStatusMessage: device.statusMessage,
              Description: record?.description,
              DeploymentStartTime: seconds(device.startedAt),
            }),
          );
        }
        return present({ DeviceDeploymentSummaries: summaries, NextToken: page.nextToken });
      },
    }),
  };
}
