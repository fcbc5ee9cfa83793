/**
 * The Edge Manager data-plane shapes (SendHeartbeat, GetDeviceRegistration) as devices send them: PascalCase
 * fields and epoch-second timestamps, so an agent written against SageMaker Edge needs no translation.
 */
import { z } from 'zod';

export const MAX_MODELS_PER_HEARTBEAT = 256;
export const MAX_METRICS_PER_LIST = 500;

/** Data-plane DeviceName / DeviceFleetName: `^[a-zA-Z0-9](-*_*[a-zA-Z0-9])*$`, 63. */
const dataPlaneName = z
  .string()
  .max(63)
  .regex(/^[a-zA-Z0-9](-*_*[a-zA-Z0-9])*$/, 'expected letters and digits joined by - or _ (max 63)');

const versionSchema = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[a-zA-Z0-9 _.]+$/, 'expected letters, digits, spaces, _ and .');

/** Epoch seconds (the AWS JSON protocol's timestamp) or an ISO 8601 string; parsed to epoch milliseconds. */
export const timestampSchema = z
  .union([z.number().nonnegative().max(1e11), z.iso.datetime({ offset: true })])
  .transform((value) => (typeof value === 'number' ? Math.round(value * 1000) : Date.parse(value)));

export const edgeMetricSchema = z.object({
  Dimension: z
    .string()
    .max(1000)
    .regex(/^[a-zA-Z0-9](-*[a-zA-Z0-9/])*$/, 'expected letters, digits, - and /')
    .optional(),
  MetricName: z
    .string()
    .max(100)
    .regex(/^[a-zA-Z0-9](-*[a-zA-Z0-9])*$/, 'expected letters and digits joined by -'),
  Value: z.number().refine(Number.isFinite, 'expected a finite number'),
  Timestamp: timestampSchema.optional(),
});
export type EdgeMetric = z.output<typeof edgeMetricSchema>;

const metricsList = z.array(edgeMetricSchema).max(MAX_METRICS_PER_LIST);

export const heartbeatModelSchema = z.object({
  ModelName: z
    .string()
    .max(255)
    .regex(/^[a-zA-Z0-9](-*[a-zA-Z0-9])*$/, 'expected letters and digits joined by -'),
  ModelVersion: versionSchema,
  LatestSampleTime: timestampSchema.optional(),
  LatestInference: timestampSchema.optional(),
  ModelMetrics: metricsList.optional(),
});

const entityName = z
  .string()
  .max(63)
  .regex(/^[a-zA-Z0-9](-*[a-zA-Z0-9])*$/, 'expected letters and digits joined by -');

export const deploymentResultSchema = z.object({
  DeploymentName: entityName.optional(),
  DeploymentStatus: entityName.optional(),
  DeploymentStatusMessage: z.string().max(4096).optional(),
  DeploymentStartTime: timestampSchema.optional(),
  DeploymentEndTime: timestampSchema.optional(),
  DeploymentModels: z
    .array(
      z.object({
        ModelHandle: entityName.optional(),
        ModelName: z.string().max(255).optional(),
        ModelVersion: versionSchema.optional(),
        DesiredState: z.enum(['DEPLOY', 'UNDEPLOY']).optional(),
        State: z.enum(['DEPLOY', 'UNDEPLOY']).optional(),
        Status: z.enum(['SUCCESS', 'FAIL']).optional(),
        StatusReason: z.string().max(4096).optional(),
        RollbackFailureReason: z.string().max(4096).optional(),
      }),
    )
    .max(MAX_MODELS_PER_HEARTBEAT)
    .optional(),
});
export type DeploymentResult = z.output<typeof deploymentResultSchema>;

export const sendHeartbeatSchema = z.object({
  AgentMetrics: metricsList.optional(),
  Models: z
    .array(heartbeatModelSchema)
    .max(MAX_MODELS_PER_HEARTBEAT)
    .optional()
    .describe('The models loaded on the device now (replaces the previous list); omit to leave it unchanged'),
  AgentVersion: versionSchema,
  DeviceName: dataPlaneName,
  DeviceFleetName: dataPlaneName,
  DeploymentResult: deploymentResultSchema.optional(),
});
export type SendHeartbeatRequest = z.output<typeof sendHeartbeatSchema>;
export type SendHeartbeatInput = z.input<typeof sendHeartbeatSchema>;

export const getDeviceRegistrationSchema = z.object({
  DeviceName: dataPlaneName,
  DeviceFleetName: dataPlaneName,
});

export const deviceRegistrationResultSchema = z.object({
  DeviceRegistration: z.enum(['REGISTERED', 'NOT_REGISTERED']),
  CacheTTL: z
    .string()
    .describe('Seconds the agent may cache this answer, as a string (as Edge Manager sent it)'),
});
