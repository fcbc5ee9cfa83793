/**
 * The device↔server contract: every message a device and the control plane exchange, in Edge Manager's
 * data-plane shapes (SendHeartbeat, GetDeviceRegistration, GetDeployments; /work/shared/spec/sagemaker-cloud-api.md):
 * PascalCase fields, timestamps as epoch seconds (or ISO 8601). The agent builds `z.input` values and sends
 * them; the server parses the same schemas and works on `z.output` values, whose timestamps are epoch ms.
 * Unknown fields are dropped, not refused, so either side may be newer.
 */
import { z } from 'zod';
import {
  dataPlaneNameSchema,
  DIMENSION_PATTERN,
  entityNameSchema,
  MAX_MESSAGE_LENGTH,
  MAX_METRICS_PER_HEARTBEAT,
  MAX_METRICS_PER_LIST,
  MAX_MODELS_PER_HEARTBEAT,
  METRIC_NAME_PATTERN,
  modelNameSchema,
  textSchema,
  versionSchema,
} from './field-rules.js';
import { packageUrlSchema } from './package-url.js';

/** Latest epoch second a timestamp may name (year 5138): beyond it, seconds and milliseconds get confused. */
export const MAX_EPOCH_SECONDS = 1e11;

/** Epoch seconds (the AWS JSON protocol's timestamp) or an ISO 8601 string; parsed to epoch milliseconds. */
export const timestampSchema = z
  .union([z.number().nonnegative().max(MAX_EPOCH_SECONDS), z.iso.datetime({ offset: true })])
  .transform((value) => (typeof value === 'number' ? Math.round(value * 1000) : Date.parse(value)));

export const edgeMetricSchema = z.object({
  Dimension: z.string().max(1000).regex(DIMENSION_PATTERN, 'expected letters, digits, - and /').optional(),
  MetricName: z.string().max(100).regex(METRIC_NAME_PATTERN, 'expected letters and digits joined by -'),
  Value: z.number().refine(Number.isFinite, 'expected a finite number'),
  Timestamp: timestampSchema.optional(),
});
/** A metric as the server reads it (Timestamp in epoch ms). */
export type EdgeMetric = z.output<typeof edgeMetricSchema>;
/** A metric as a device sends it (Timestamp in epoch seconds). */
export type EdgeMetricInput = z.input<typeof edgeMetricSchema>;

const metricsList = z.array(edgeMetricSchema).max(MAX_METRICS_PER_LIST);

export const heartbeatModelSchema = z.object({
  ModelName: modelNameSchema,
  ModelVersion: versionSchema,
  LatestSampleTime: timestampSchema.optional(),
  LatestInference: timestampSchema.optional(),
  ModelMetrics: metricsList.optional(),
});
export type HeartbeatModel = z.output<typeof heartbeatModelSchema>;
export type HeartbeatModelInput = z.input<typeof heartbeatModelSchema>;

export const modelStateSchema = z.enum(['DEPLOY', 'UNDEPLOY']);
export const deploymentModelStatusSchema = z.enum(['SUCCESS', 'FAIL']);

/** What the device did with the last deployment it was given (SendHeartbeat.DeploymentResult). */
export const deploymentResultSchema = z.object({
  DeploymentName: entityNameSchema.optional(),
  DeploymentStatus: entityNameSchema.optional(),
  DeploymentStatusMessage: textSchema(MAX_MESSAGE_LENGTH).optional(),
  DeploymentStartTime: timestampSchema.optional(),
  DeploymentEndTime: timestampSchema.optional(),
  DeploymentModels: z
    .array(
      z.object({
        ModelHandle: entityNameSchema.optional(),
        ModelName: modelNameSchema.optional(),
        ModelVersion: versionSchema.optional(),
        DesiredState: modelStateSchema.optional(),
        State: modelStateSchema.optional(),
        Status: deploymentModelStatusSchema.optional(),
        StatusReason: textSchema(MAX_MESSAGE_LENGTH).optional(),
        RollbackFailureReason: textSchema(MAX_MESSAGE_LENGTH).optional(),
        // EdgeFleet's (optional, so an older agent's result still parses): the server retries only failures
        // before the switch, where the old version kept serving.
        FailedAfterSwitch: z
          .boolean()
          .optional()
          .describe(
            "With Status FAIL: true when this model's new version was switched in and then failed (health " +
              'window, crash loop) or could not be rolled back; false when it failed before its switch, or ' +
              'was rolled back only because another model of the deployment failed. Absent: not known',
          ),
      }),
    )
    .max(MAX_MODELS_PER_HEARTBEAT)
    .optional(),
});
export type DeploymentResult = z.output<typeof deploymentResultSchema>;
export type DeploymentResultInput = z.input<typeof deploymentResultSchema>;

/**
 * EdgeFleet's: a handle whose deployment is committed on the device but that serves nothing now (an application
 * unloaded it through the agent's API, or it did not load at the agent's start). Edge Manager had no word for it.
 */
export const deployedModelNotLoadedSchema = z.object({
  ModelHandle: entityNameSchema,
  DeploymentName: entityNameSchema,
  ModelName: modelNameSchema.optional(),
  ModelVersion: versionSchema.optional(),
  UnloadedByApplication: z
    .boolean()
    .describe('true when an application unloaded it (UnLoadModel, REST unload)'),
  Since: timestampSchema.optional().describe('When the application unloaded it'),
  Reason: textSchema(MAX_MESSAGE_LENGTH),
});
export type DeployedModelNotLoaded = z.output<typeof deployedModelNotLoadedSchema>;
export type DeployedModelNotLoadedInput = z.input<typeof deployedModelNotLoadedSchema>;

export const sendHeartbeatRequestSchema = z
  .object({
    AgentMetrics: metricsList.optional(),
    Models: z
      .array(heartbeatModelSchema)
      .max(MAX_MODELS_PER_HEARTBEAT)
      .optional()
      .describe(
        'The models loaded on the device now (replaces the previous list); omit to leave it unchanged',
      ),
    AgentVersion: versionSchema,
    DeviceName: dataPlaneNameSchema,
    DeviceFleetName: dataPlaneNameSchema,
    DeploymentResult: deploymentResultSchema.optional(),
    DeployedModelsNotLoaded: z
      .array(deployedModelNotLoadedSchema)
      .max(MAX_MODELS_PER_HEARTBEAT)
      .optional()
      .describe(
        "EdgeFleet's: deployed handles serving nothing now (replaces the previous list; empty: all serve). Send it in every heartbeat: omitted, the server keeps no list (the agent does not report it: an older one, or deployments off)",
      ),
  })
  .superRefine((heartbeat, ctx) => {
    const count =
      (heartbeat.AgentMetrics?.length ?? 0) +
      (heartbeat.Models ?? []).reduce((sum, model) => sum + (model.ModelMetrics?.length ?? 0), 0);
    if (count > MAX_METRICS_PER_HEARTBEAT)
      ctx.addIssue({
        code: 'custom',
        path: [],
        message: `the heartbeat carries ${count} metrics (AgentMetrics and all Models' ModelMetrics together); expected at most ${MAX_METRICS_PER_HEARTBEAT}: send the rest in the next heartbeat`,
      });
  });
/** A heartbeat as a device sends it. */
export type SendHeartbeatRequest = z.input<typeof sendHeartbeatRequestSchema>;
/** A heartbeat as the server reads it (timestamps in epoch ms). */
export type ReceivedHeartbeat = z.output<typeof sendHeartbeatRequestSchema>;

export const sendHeartbeatResultSchema = z.object({
  /**
   * EdgeFleet's addition, absent from SageMaker's answer: the heartbeat's state was recorded but its metrics
   * were dropped, because the device has stored its hourly metric quota. Clients may ignore it (the agent
   * does): the heartbeat succeeded.
   */
  MetricsDropped: z
    .object({
      Message: z.string(),
      QuotaBytes: z.int(),
      UsedBytes: z.int(),
      /** Seconds until the quota's clock hour ends. */
      RetryAfterSeconds: z.int(),
    })
    .optional(),
});
export type SendHeartbeatResult = z.infer<typeof sendHeartbeatResultSchema>;

/** The device's own names, which its certificate must match (GetDeviceRegistration, GetDeployments). */
export const deviceIdsSchema = z.object({
  DeviceName: dataPlaneNameSchema,
  DeviceFleetName: dataPlaneNameSchema,
});
export type DeviceIds = z.infer<typeof deviceIdsSchema>;

export const getDeviceRegistrationRequestSchema = deviceIdsSchema;

export const deviceRegistrationResultSchema = z.object({
  DeviceRegistration: z
    .string()
    .min(1)
    .max(1000)
    .describe('REGISTERED, or another state (e.g. NOT_REGISTERED) that tells the device to stop'),
  CacheTTL: z
    .string()
    .max(1000)
    .optional()
    .describe('Seconds the agent may cache this answer, as a string (as Edge Manager sent it)'),
});
export type DeviceRegistrationResult = z.infer<typeof deviceRegistrationResultSchema>;

export const getDeploymentsRequestSchema = deviceIdsSchema;

/** One deployment the device should apply (GetDeployments.Deployments[]). */
export const edgeDeploymentSchema = z.object({
  DeploymentName: entityNameSchema.optional(),
  Type: z.enum(['Model']).optional(),
  FailureHandlingPolicy: z.enum(['ROLLBACK_ON_FAILURE', 'DO_NOTHING']).optional(),
  Definitions: z
    .array(
      z.object({
        ModelHandle: entityNameSchema.optional(),
        S3Url: z
          .string()
          .max(1024)
          .regex(/^s3:\/\/([^/]+)\/?(.*)$/, 'expected s3://bucket/key')
          .optional(),
        Checksum: z
          .object({
            Type: z.enum(['SHA1']).optional(),
            Sum: z
              .string()
              .max(63)
              .regex(/^[a-z0-9](-*[a-z0-9])*$/, 'expected lower-case hex')
              .optional(),
          })
          .optional(),
        State: modelStateSchema.optional(),
        // EdgeFleet's members (Edge Manager devices ignore them): where and what to download, over the device API.
        ModelName: modelNameSchema.optional().describe("The package's own model name (manifest.json)"),
        ModelVersion: versionSchema.optional().describe("The package's version: what anti-rollback compares"),
        PackageUrl: packageUrlSchema
          .optional()
          .describe(
            'The signed package (.tar.gz) on the device API, fetched over mTLS; supports HTTP Range. Only ' +
              '/api/v1/device/packages/{job} or /api/v1/device/model-packages/{model}/{version}, each segment ' +
              'encoded as encodeURIComponent writes it: ".", "..", "//", "\\" and encoded slashes are refused',
          ),
        Sha256: z
          .string()
          .regex(/^[a-f0-9]{64}$/, 'expected 64 lower-case hex digits')
          .optional()
          .describe('SHA-256 of the package file'),
        Size: z.number().int().nonnegative().optional().describe('Size of the package file in bytes'),
      }),
    )
    .optional(),
  AllowDowngrade: z
    .boolean()
    .optional()
    .describe('An EdgeFleet rollback plan: the device may install a version older than the one it runs'),
});
export type EdgeDeployment = z.infer<typeof edgeDeploymentSchema>;

export const getDeploymentsResultSchema = z.object({
  Deployments: z.array(edgeDeploymentSchema).optional(),
});
export type GetDeploymentsResult = z.infer<typeof getDeploymentsResultSchema>;

/** The error body of every EdgeFleet server answer that fails. */
export const errorBodySchema = z
  .object({
    code: z.string().describe('Stable machine-readable error code, e.g. NotFound, ValidationError'),
    message: z.string().describe('What was wrong and what was expected'),
    details: z.record(z.string(), z.unknown()).optional(),
  })
  .describe('Error');
export type ErrorBody = z.infer<typeof errorBodySchema>;

/** What a device reads from a failed answer: EdgeFleet's body (`code`, `message`) or Edge Manager's (`Message`). */
export const deviceApiErrorSchema = z.object({
  code: z.string().optional(),
  message: z.string().optional(),
  Message: z.string().optional(),
});
