/**
 * Deployment plans at the operator boundary: SageMaker's shapes (CreateEdgeDeploymentPlan, DeploymentStage,
 * DescribeEdgeDeploymentPlan, ListStageDevices) in the server's camelCase, with the same enums, so a facade
 * maps one onto the other field by field; EdgeFleet's additions (tags in a selection, undeploy, timeouts,
 * retries, auto-advance, abort criteria, downgrade) are optional members.
 */
import { ModelNameSchema, ModelVersionSchema } from '@edgefleet/core';
import { z } from 'zod';
import {
  deviceNameSchema,
  entityNameSchema,
  fleetNameSchema,
  MAX_TAGS,
  tagListSchema,
  tagSchema,
} from '../fields/index.js';

export const failurePolicySchema = z.enum(['ROLLBACK_ON_FAILURE', 'DO_NOTHING']);
export type FailurePolicy = z.infer<typeof failurePolicySchema>;

/** SageMaker's StageStatus (CREATING is never stored: a stage exists once its plan is written). */
export const stageStatusSchema = z.enum([
  'READYTODEPLOY',
  'STARTING',
  'INPROGRESS',
  'DEPLOYED',
  'FAILED',
  'STOPPING',
  'STOPPED',
]);
export type StageStatus = z.infer<typeof stageStatusSchema>;

/** SageMaker's DeviceDeploymentStatus. */
export const deviceDeploymentStatusSchema = z.enum([
  'READYTODEPLOY',
  'INPROGRESS',
  'DEPLOYED',
  'FAILED',
  'STOPPING',
  'STOPPED',
]);
export type DeviceDeploymentStatus = z.infer<typeof deviceDeploymentStatusSchema>;

/**
 * Why a device's deployment ended STOPPED (EdgeFleet's, kept with the row when it is stopped): an operator
 * cancelled it, the device was deregistered, or it had not started when its stage was stopped or aborted.
 */
export const stopReasonSchema = z.enum(['cancelled', 'deregistered', 'stage-stopped', 'stage-aborted']);
export type StopReason = z.infer<typeof stopReasonSchema>;
/**
 * A stored stop reason as the API shows it: one this server does not know (written by a newer replica during a
 * rolling upgrade, or by hand) is `unknown`, so one such row cannot break a whole list.
 */
export const shownStopReasonSchema = z.enum([...stopReasonSchema.options, 'unknown']);
export type ShownStopReason = z.infer<typeof shownStopReasonSchema>;

/** The stored stop reason as the API shows it (shownStopReasonSchema). */
export function shownStopReason(stored: string): ShownStopReason {
  const known = stopReasonSchema.safeParse(stored);
  return known.success ? known.data : 'unknown';
}

export const MAX_SELECTED_DEVICE_NAMES = 1000;
export const MAX_STAGES = 20;
export const MAX_MODEL_CONFIGS = 20;

/** Most tags one stage's selection may require (as many as a resource may carry: fields' MAX_TAGS). */
export const MAX_SELECTION_TAGS = MAX_TAGS;

const subsetTypeSchema = z.enum(['PERCENTAGE', 'SELECTION', 'NAMECONTAINS']);

/** A stage's selection as stored (read back as written; selections stored before the tag limit included). */
export const storedDeviceSelectionSchema = z.object({
  subsetType: subsetTypeSchema,
  percentage: z.int().optional(),
  deviceNames: z.array(z.string()).optional(),
  deviceNameContains: z.string().optional(),
  tags: z.record(z.string(), z.string()).optional(),
});
export type DeviceSelection = z.infer<typeof storedDeviceSelectionSchema>;

/** A stage's selection as an operator gives it. */
export const deviceSelectionSchema = z
  .strictObject({
    subsetType: subsetTypeSchema,
    percentage: z.int().min(0).max(100).optional().describe('PERCENTAGE: share of the fleet, 0-100'),
    deviceNames: z
      .array(deviceNameSchema)
      .min(1)
      .max(MAX_SELECTED_DEVICE_NAMES)
      .optional()
      .describe(`SELECTION: the devices, at most ${MAX_SELECTED_DEVICE_NAMES}`),
    deviceNameContains: entityNameSchema.optional().describe('NAMECONTAINS: case-insensitive substring'),
    tags: z
      .record(tagSchema.shape.key, tagSchema.shape.value, {
        error: (issue) =>
          issue.code === 'invalid_key'
            ? 'expected tag keys of 1-128 letters, digits, spaces and _ . : / = + - @'
            : undefined,
      })
      .superRefine((tags, ctx) => {
        const count = Object.keys(tags).length;
        if (count > MAX_SELECTION_TAGS)
          ctx.addIssue({
            code: 'custom',
            message: `a selection requires at most ${MAX_SELECTION_TAGS} tags; got ${count}`,
          });
      })
      .optional()
      .describe(
        `EdgeFleet: only devices carrying every one of these tags (key → value); at most ${MAX_SELECTION_TAGS} ` +
          'tags, keys 1-128 and values 0-256 characters (letters, digits, spaces and _ . : / = + - @), as ' +
          "SageMaker's tags. An empty value matches only devices whose tag is empty, not every device with the key",
      ),
  })
  .superRefine((selection, ctx) => {
    const needs = { PERCENTAGE: 'percentage', SELECTION: 'deviceNames', NAMECONTAINS: 'deviceNameContains' };
    const field = needs[selection.subsetType] as keyof typeof selection;
    if (selection[field] === undefined) {
      ctx.addIssue({
        code: 'custom',
        path: [field],
        message: `subsetType ${selection.subsetType} needs ${field}`,
      });
    }
  });

export const stageInputSchema = z.strictObject({
  name: entityNameSchema.describe('StageName, unique in its plan'),
  deviceSelection: deviceSelectionSchema,
  failureHandlingPolicy: failurePolicySchema.default('ROLLBACK_ON_FAILURE'),
});
export type StageInput = z.input<typeof stageInputSchema>;

export const modelConfigInputSchema = z
  .strictObject({
    modelHandle: entityNameSchema.describe('The name device applications use for the model'),
    packagingJobName: entityNameSchema.optional().describe("DEPLOY a COMPLETED packaging job's package"),
    modelName: ModelNameSchema.optional().describe(
      'With modelVersion: DEPLOY an uploaded signed package instead',
    ),
    modelVersion: ModelVersionSchema.optional(),
    state: z.enum(['DEPLOY', 'UNDEPLOY']).default('DEPLOY').describe('UNDEPLOY removes the model'),
  })
  .superRefine((config, ctx) => {
    if (config.state !== 'DEPLOY') return;
    const uploaded = config.modelName !== undefined || config.modelVersion !== undefined;
    if (config.packagingJobName === undefined && !uploaded) {
      ctx.addIssue({
        code: 'custom',
        path: ['packagingJobName'],
        message: 'DEPLOY needs a packagingJobName, or the modelName and modelVersion of an uploaded package',
      });
    } else if (config.packagingJobName !== undefined && uploaded) {
      ctx.addIssue({
        code: 'custom',
        path: ['modelName'],
        message: 'name either a packagingJobName or an uploaded package (modelName, modelVersion), not both',
      });
    } else if (uploaded && (config.modelName === undefined || config.modelVersion === undefined)) {
      ctx.addIssue({
        code: 'custom',
        path: [config.modelName === undefined ? 'modelName' : 'modelVersion'],
        message: 'an uploaded package needs both modelName and modelVersion',
      });
    }
  });

export const planOptionsSchema = z.strictObject({
  deviceTimeoutSeconds: z
    .int()
    .min(10)
    .max(30 * 86_400)
    .default(3600)
    .describe('A device that took the deployment and reports no result in this time is FAILED (or retried)'),
  maxRetries: z.int().min(0).max(10).default(1).describe('Further attempts after a device fails'),
  allowDowngrade: z.boolean().default(false).describe('A rollback plan: devices may install older versions'),
  autoAdvance: z
    .strictObject({ successPercent: z.int().min(1).max(100) })
    .optional()
    .describe('Start the next stage once this share of the current stage is DEPLOYED'),
  abort: z
    .strictObject({
      failedCount: z.int().min(1).optional(),
      failedPercent: z.int().min(1).max(100).optional(),
      minDevices: z.int().min(1).default(1).describe('Judge only once this many devices have finished'),
    })
    .refine((a) => a.failedCount !== undefined || a.failedPercent !== undefined, {
      message: 'abort needs failedCount or failedPercent',
    })
    .optional()
    .describe('Fail the stage, and start no more of its devices, when failures pass a threshold'),
});
export type PlanOptions = z.output<typeof planOptionsSchema>;

export const createPlanSchema = z.strictObject({
  name: entityNameSchema.describe('EdgeDeploymentPlanName'),
  fleetName: fleetNameSchema,
  modelConfigs: z.array(modelConfigInputSchema).min(1).max(MAX_MODEL_CONFIGS),
  stages: z.array(stageInputSchema).max(MAX_STAGES).default([]),
  options: planOptionsSchema.default(planOptionsSchema.parse({})),
  tags: tagListSchema.optional(),
});
export type CreatePlanInput = z.input<typeof createPlanSchema>;

/** A model config as stored: the package it names is resolved when the plan is created. */
export const modelConfigSchema = z.object({
  modelHandle: z.string(),
  state: z.enum(['DEPLOY', 'UNDEPLOY']),
  packagingJobName: z.string().optional().describe('Absent for an uploaded package'),
  modelName: z.string().optional(),
  modelVersion: z.string().optional(),
  sha256: z.string().optional(),
  sizeBytes: z.int().optional(),
});
export type ModelConfig = z.infer<typeof modelConfigSchema>;

const iso = z.iso.datetime();

export const stageViewSchema = z.object({
  name: z.string(),
  deviceSelection: storedDeviceSelectionSchema,
  failureHandlingPolicy: failurePolicySchema,
  status: stageStatusSchema,
  statusMessage: z.string().optional(),
  successCount: z.int(),
  pendingCount: z.int(),
  failedCount: z.int(),
  stoppedCount: z.int(),
  startedAt: iso.optional(),
  endedAt: iso.optional(),
});

export const planViewSchema = z.object({
  name: z.string(),
  fleetName: z.string(),
  modelConfigs: z.array(modelConfigSchema),
  options: planOptionsSchema,
  tags: tagListSchema,
  successCount: z.int(),
  pendingCount: z.int(),
  failedCount: z.int(),
  stages: z.array(stageViewSchema),
  createdAt: iso,
  updatedAt: iso,
});
export type PlanView = z.input<typeof planViewSchema>;

export const planSummarySchema = planViewSchema.omit({ stages: true, modelConfigs: true, options: true });

export const stageDeviceSchema = z.object({
  planName: z.string(),
  stageName: z.string(),
  fleetName: z.string(),
  deviceName: z.string(),
  status: deviceDeploymentStatusSchema,
  statusMessage: z.string().optional(),
  stopReason: shownStopReasonSchema
    .optional()
    .describe(
      'Why a STOPPED device stopped: cancelled (by an operator), deregistered, or not started when its stage was stopped (stage-stopped) or aborted (stage-aborted); unknown: a reason this server does not know (recorded by a newer one; statusMessage says it in words)',
    ),
  attempts: z.int().describe('Times the device took the deployment'),
  startedAt: iso.optional().describe('When the device last took it (DeploymentStartTime)'),
  endedAt: iso.optional(),
  lastSeenAt: iso.optional().describe("The device's last heartbeat: a pending device may be offline"),
});
export type StageDeviceView = z.input<typeof stageDeviceSchema>;

export const deploymentEventSchema = z.object({
  id: z.string(),
  planName: z.string(),
  stageName: z.string().optional(),
  deviceName: z.string().optional(),
  kind: z.enum([
    'PlanCreated',
    'StageStarted',
    'StageStopped',
    'StageDeployed',
    'StageFailed',
    'StageAborted',
    'DeviceFailed',
    'DeviceRetried',
    'DeviceTimedOut',
    'DeviceCancelled',
    'DeviceRolledBack',
    'AutoAdvanceHeld',
  ]),
  message: z.string(),
  at: iso,
});
export type DeploymentEvent = z.input<typeof deploymentEventSchema>;
export type DeploymentEventKind = DeploymentEvent['kind'];
