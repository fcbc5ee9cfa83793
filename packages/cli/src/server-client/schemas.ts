/**
 * What the server's operator API answers, as the CLI relies on it. Objects are loose: fields a newer server
 * adds pass through to `--json` output untouched; fields the CLI reads are checked.
 */
import { z } from 'zod';

const isoTime = z.string().min(1);

export const tagSchema = z.object({ key: z.string(), value: z.string() });
export type Tag = z.infer<typeof tagSchema>;

export const errorBodySchema = z.looseObject({
  code: z.string(),
  message: z.string(),
  details: z.record(z.string(), z.unknown()).optional(),
});

export const fleetSchema = z.looseObject({
  name: z.string(),
  description: z.string().optional(),
  outputConfig: z.looseObject({ s3OutputLocation: z.string(), kmsKeyId: z.string().optional() }),
  roleArn: z.string().optional(),
  tags: z.array(tagSchema),
  deviceCount: z.number(),
  createdAt: isoTime,
  updatedAt: isoTime,
  /** Only in a create or update answer: what the server could not check, or where captures go instead. */
  warnings: z.array(z.string()).optional(),
});
export type Fleet = z.infer<typeof fleetSchema>;

export const fleetListSchema = z.looseObject({
  fleets: z.array(fleetSchema),
  nextToken: z.string().optional(),
});

export const deviceSummarySchema = z.looseObject({
  name: z.string(),
  fleetName: z.string(),
  description: z.string().optional(),
  iotThingName: z.string().optional(),
  tags: z.array(tagSchema),
  registeredAt: isoTime,
  latestHeartbeat: isoTime.optional(),
  agentVersion: z.string().optional(),
  status: z.enum(['online', 'offline']),
  models: z.array(z.looseObject({ name: z.string(), version: z.string() })),
  deployedModelsNotLoadedCount: z.number().int().optional(),
});
export type DeviceSummary = z.infer<typeof deviceSummarySchema>;

export const certificateSchema = z.looseObject({
  serial: z.string(),
  fingerprintSha256: z.string(),
  subject: z.string(),
  notBefore: isoTime,
  notAfter: isoTime,
  issuedAt: isoTime,
  revokedAt: isoTime.optional(),
});
export type Certificate = z.infer<typeof certificateSchema>;

export const deviceSchema = deviceSummarySchema.extend({
  updatedAt: isoTime,
  models: z.array(
    z.looseObject({
      name: z.string(),
      version: z.string(),
      latestSampleTime: isoTime.optional(),
      latestInference: isoTime.optional(),
    }),
  ),
  identity: z.looseObject({ status: z.string(), certificate: certificateSchema.optional() }),
  deploymentResult: z.unknown().optional(),
  deployedModelsNotLoaded: z
    .array(
      z.looseObject({
        modelHandle: z.string(),
        deploymentName: z.string(),
        modelName: z.string().optional(),
        modelVersion: z.string().optional(),
        unloadedByApplication: z.boolean(),
        since: isoTime.optional(),
        reason: z.string(),
      }),
    )
    .optional(),
});
export type Device = z.infer<typeof deviceSchema>;

export const deviceListSchema = z.looseObject({
  devices: z.array(deviceSummarySchema),
  nextToken: z.string().optional(),
});

export const registeredDevicesSchema = z.looseObject({ devices: z.array(deviceSchema) });

export const enrollmentTokenSchema = z.looseObject({
  token: z.string(),
  deviceName: z.string(),
  fleetName: z.string(),
  expiresAt: isoTime,
  deviceEndpoint: z.string(),
});
export type EnrollmentToken = z.infer<typeof enrollmentTokenSchema>;

export const issuedCertificateSchema = z.looseObject({
  deviceName: z.string(),
  fleetName: z.string(),
  certificatePem: z.string(),
  caCertificatePem: z.string(),
  serial: z.string(),
  fingerprintSha256: z.string(),
  notBefore: isoTime,
  notAfter: isoTime,
  deviceEndpoint: z.string(),
  agentConfig: z.record(z.string(), z.string()),
});
export type IssuedCertificate = z.infer<typeof issuedCertificateSchema>;

export const certificateListSchema = z.looseObject({ certificates: z.array(certificateSchema) });
export const revokedSchema = z.looseObject({ revoked: z.number() });
export const deviceCaSchema = z.looseObject({ certificatePem: z.string(), deviceEndpoint: z.string() });

export const fleetReportSchema = z.looseObject({
  fleetName: z.string(),
  description: z.string().optional(),
  outputConfig: z.looseObject({ s3OutputLocation: z.string() }),
  reportGenerated: isoTime,
  /** Capture uploads to the fleet's output fail now; older servers leave it out. */
  outputOutage: z.looseObject({ message: z.string() }).optional(),
  deviceStats: z.looseObject({
    connectedDeviceCount: z.number(),
    registeredDeviceCount: z.number(),
    /** Older servers leave it out. */
    neverSeenDeviceCount: z.number().optional(),
  }),
  agentVersions: z.array(z.looseObject({ version: z.string(), agentCount: z.number() })),
  modelStats: z.array(
    z.looseObject({
      modelName: z.string(),
      modelVersion: z.string(),
      offlineDeviceCount: z.number(),
      connectedDeviceCount: z.number(),
      activeDeviceCount: z.number(),
      samplingDeviceCount: z.number(),
    }),
  ),
});
export type FleetReport = z.infer<typeof fleetReportSchema>;

export const metricSeriesSchema = z.looseObject({
  metricName: z.string(),
  dimension: z.string().optional(),
  modelName: z.string().optional(),
  modelVersion: z.string().optional(),
  points: z.array(
    z.looseObject({
      timestamp: isoTime,
      min: z.number(),
      max: z.number(),
      avg: z.number(),
      count: z.number(),
    }),
  ),
});
export type MetricSeries = z.infer<typeof metricSeriesSchema>;

export const deviceMetricsSchema = z.looseObject({
  deviceName: z.string(),
  since: isoTime,
  until: isoTime,
  step: z.number(),
  series: z.array(metricSeriesSchema),
});
export type DeviceMetrics = z.infer<typeof deviceMetricsSchema>;

export const apiTokenSchema = z.looseObject({
  id: z.string(),
  name: z.string(),
  scope: z.string(),
  createdAt: isoTime,
  revokedAt: isoTime.optional(),
});
export type ApiToken = z.infer<typeof apiTokenSchema>;
export const createdApiTokenSchema = apiTokenSchema.extend({ token: z.string() });
export const apiTokenListSchema = z.looseObject({
  tokens: z.array(apiTokenSchema),
  nextToken: z.string().optional(),
});
export const accessKeySchema = z.looseObject({
  accessKeyId: z.string(),
  name: z.string(),
  scope: z.string(),
  deviceName: z.string().optional(),
  createdAt: isoTime,
  revokedAt: isoTime.optional(),
  endedReason: z.string().optional(),
});
export type AccessKey = z.infer<typeof accessKeySchema>;
export const createdAccessKeySchema = accessKeySchema.extend({ secretAccessKey: z.string() });
export const accessKeyListSchema = z.looseObject({
  accessKeys: z.array(accessKeySchema),
  nextToken: z.string().optional(),
});
export const whoamiSchema = z.looseObject({ tokenId: z.string(), name: z.string(), scope: z.string() });

const tensorSchema = z.looseObject({ name: z.string(), dataType: z.string(), shape: z.array(z.number()) });

export const modelSchema = z.looseObject({
  name: z.string(),
  description: z.string().optional(),
  versionCount: z.number(),
  latestVersion: z.string().optional(),
  createdAt: isoTime,
  updatedAt: isoTime,
});
export type Model = z.infer<typeof modelSchema>;
export const modelListSchema = z.looseObject({
  models: z.array(modelSchema),
  nextToken: z.string().optional(),
});

export const modelVersionSchema = z.looseObject({
  modelName: z.string(),
  version: z.string(),
  sourceKind: z.string(),
  sizeBytes: z.number(),
  sha256: z.string(),
  inputs: z.array(tensorSchema),
  outputs: z.array(tensorSchema),
  createdAt: isoTime,
  /** Upload answers only: devices enrolled by the server will refuse this package (and why). */
  warning: z.string().optional(),
});
export type ModelVersion = z.infer<typeof modelVersionSchema>;
export const modelVersionListSchema = z.looseObject({
  versions: z.array(modelVersionSchema),
  nextToken: z.string().optional(),
});

export const packagingJobSchema = z.looseObject({
  name: z.string(),
  modelName: z.string(),
  modelVersion: z.string(),
  status: z.string(),
  statusMessage: z.string().optional(),
  outputS3Location: z.string().optional(),
  artifact: z
    .looseObject({ key: z.string(), location: z.string(), sizeBytes: z.number(), sha256: z.string() })
    .optional(),
  modelSignature: z.string().optional(),
  createdAt: isoTime,
  updatedAt: isoTime,
});
export type PackagingJob = z.infer<typeof packagingJobSchema>;
export const packagingJobListSchema = z.looseObject({
  jobs: z.array(packagingJobSchema),
  nextToken: z.string().optional(),
});

export const deploymentStageSchema = z.looseObject({
  name: z.string(),
  deviceSelection: z.looseObject({
    subsetType: z.string(),
    percentage: z.number().optional(),
    deviceNames: z.array(z.string()).optional(),
    deviceNameContains: z.string().optional(),
    tags: z.record(z.string(), z.string()).optional(),
  }),
  failureHandlingPolicy: z.string(),
  status: z.string(),
  statusMessage: z.string().optional(),
  successCount: z.number(),
  pendingCount: z.number(),
  failedCount: z.number(),
  stoppedCount: z.number(),
  startedAt: isoTime.optional(),
  endedAt: isoTime.optional(),
});
export type DeploymentStage = z.infer<typeof deploymentStageSchema>;
export const deploymentPlanSchema = z.looseObject({
  name: z.string(),
  fleetName: z.string(),
  modelConfigs: z.array(
    z.looseObject({
      modelHandle: z.string(),
      state: z.string(),
      packagingJobName: z.string().optional(),
      modelName: z.string().optional(),
      modelVersion: z.string().optional(),
    }),
  ),
  options: z.looseObject({}),
  successCount: z.number(),
  pendingCount: z.number(),
  failedCount: z.number(),
  stages: z.array(deploymentStageSchema),
  createdAt: isoTime,
  updatedAt: isoTime,
});

/** The create's answer: the plan, and warnings about uploaded packages devices will refuse (older servers: none). */
export const createdDeploymentPlanSchema = deploymentPlanSchema.extend({
  warnings: z.array(z.string()).optional(),
});
export type DeploymentPlan = z.infer<typeof deploymentPlanSchema>;
export const deploymentPlanListSchema = z.looseObject({
  plans: z.array(deploymentPlanSchema),
  nextToken: z.string().optional(),
});
export const stageDeviceSchema = z.looseObject({
  planName: z.string(),
  stageName: z.string(),
  deviceName: z.string(),
  status: z.string(),
  statusMessage: z.string().optional(),
  attempts: z.number(),
  startedAt: isoTime.optional(),
  endedAt: isoTime.optional(),
  lastSeenAt: isoTime.optional(),
});
export type StageDevice = z.infer<typeof stageDeviceSchema>;
export const stageDeviceListSchema = z.looseObject({
  devices: z.array(stageDeviceSchema),
  nextToken: z.string().optional(),
});
export const deploymentEventSchema = z.looseObject({
  id: z.string(),
  kind: z.string(),
  message: z.string(),
  stageName: z.string().optional(),
  deviceName: z.string().optional(),
  at: isoTime,
});
export type DeploymentEventView = z.infer<typeof deploymentEventSchema>;
export const deploymentEventListSchema = z.looseObject({
  events: z.array(deploymentEventSchema),
  nextToken: z.string().optional(),
});

export const signingRootSchema = z.looseObject({ certificatePem: z.string(), fingerprintSha256: z.string() });
