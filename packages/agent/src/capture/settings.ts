import { hostname } from 'node:os';
import { join } from 'node:path';
import { z } from 'zod';
import {
  AutoCaptureRuleSchema,
  DEFAULT_CAPTURE_DISK_QUOTA_BYTES,
  DEFAULT_CAPTURE_MIN_FREE_BYTES,
  DEFAULT_SPOOL_QUOTA_BYTES,
  type AgentConfig,
} from '../config/index.js';

// The config owns what its file may say about capture; capture builds on it (never the other way round).
export { AutoCaptureRuleSchema, DEFAULT_SPOOL_QUOTA_BYTES };
export type { AutoCaptureRule } from '../config/index.js';

/** Characters a key part may not hold: they would need escaping inside records and URLs. */
// eslint-disable-next-line no-control-regex -- control characters are what it refuses
const KEY_SAFE = /^[^"\\\u0000-\u001f]*$/;

export const CloudCredentialsSchema = z.discriminatedUnion('source', [
  z.object({ source: z.literal('default') }),
  z.object({
    source: z.literal('static'),
    accessKeyId: z.string().min(1),
    secretAccessKey: z.string().min(1),
    sessionToken: z.string().min(1).optional(),
  }),
  z.object({
    source: z.literal('iot'),
    endpoint: z.string().min(1),
    roleAlias: z.string().min(1),
    thingName: z.string().min(1),
    certFile: z.string().min(1),
    keyFile: z.string().min(1),
    caFile: z.string().min(1).optional(),
  }),
]);

/**
 * The least default cap on one capture. Shared memory exists for tensors larger than `-m` (4 MiB by default), so
 * the cap is not `-m` alone: a 1080p FP32 frame (24 MiB) predicted and captured through shm must keep working.
 */
export const DEFAULT_MAX_CAPTURE_BYTES = 64 * 1024 ** 2;

/** The cap on one capture when edgefleet_capture_max_bytes is unset: max(-m, 64 MiB). */
export function defaultMaxCaptureBytesFor(maxMessageBytes: number): number {
  return Math.max(maxMessageBytes, DEFAULT_MAX_CAPTURE_BYTES);
}

/** The capture buffer's byte budget when none is configured. */
export function defaultCaptureBufferBytes(maxCaptureBytes: number): number {
  return Math.max(256 * 1024 ** 2, 4 * maxCaptureBytes);
}

export const CaptureSettingsSchema = z
  .object({
    destination: z.enum(['Disk', 'Cloud', 'EdgeFleet']),
    diskPath: z.string().min(1),
    folderPrefix: z.string().regex(KEY_SAFE, 'no quotes, backslashes or control characters'),
    bufferSize: z.number().int().positive(),
    batchSize: z.number().int().positive(),
    pushPeriodSeconds: z.number().positive(),
    base64EmbedLimit: z.number().int().nonnegative(),
    periodicUpload: z.boolean(),
    periodicUploadPeriodSeconds: z.number().positive(),
    fleetName: z.string().min(1).regex(KEY_SAFE, 'no quotes, backslashes or control characters'),
    deviceName: z.string().min(1),
    /** The bucket, for Cloud captures and the periodic upload of Disk captures. */
    cloud: z
      .object({
        bucket: z.string().min(1),
        region: z.string().min(1),
        endpoint: z.string().url().optional(),
        forcePathStyle: z.boolean().optional(),
        caFile: z.string().min(1).optional(),
        credentials: CloudCredentialsSchema,
      })
      .optional(),
    /** The control plane, for EdgeFleet captures: its device API and the device's enrolled identity. */
    edgefleet: z
      .object({
        endpoint: z.string().url(),
        certFile: z.string().min(1),
        keyFile: z.string().min(1),
        caFile: z.string().min(1).optional(),
        /** The fleet's output bucket, for data-ref URLs. */
        bucket: z.string().min(1).optional(),
      })
      .optional(),
    /** Also write each batch in the SageMaker Model Monitor data-capture format. */
    modelMonitorFormat: z.boolean().default(false),
    /** Periodic upload: keep Disk captures after uploading them (marked) instead of removing them. */
    keepUploadedFiles: z.boolean().default(false),
    /** Bytes the Disk destination's files may take (edgefleet_capture_disk_quota_bytes). */
    diskQuotaBytes: z.number().int().positive().default(DEFAULT_CAPTURE_DISK_QUOTA_BYTES),
    /** Free bytes Disk captures leave on their file system (edgefleet_capture_min_free_bytes; the spool's: spool.minFreeBytes). */
    diskMinFreeBytes: z.number().int().nonnegative().default(DEFAULT_CAPTURE_MIN_FREE_BYTES),
    spool: z.object({
      dir: z.string().min(1),
      quotaBytes: z.number().int().positive(),
      /**
       * Free bytes kept on the spool's file system (edgefleet_capture_min_free_bytes): captures are refused below
       * it while batches go to the spool.
       */
      minFreeBytes: z.number().int().nonnegative().default(DEFAULT_CAPTURE_MIN_FREE_BYTES),
      retryInitialMs: z.number().int().positive().default(1000),
      retryMaxMs: z.number().int().positive().default(300_000),
    }),
    statusRetention: z
      .object({ maxAgeMs: z.number().int().positive(), maxEntries: z.number().int().positive() })
      .default({ maxAgeMs: 24 * 3600_000, maxEntries: 100_000 }),
    /** How far in the future an inference_timestamp may lie (client and agent clocks) before OUT_OF_RANGE. */
    futureToleranceMs: z.number().int().nonnegative().default(1000),
    /** Batches written at the same time. */
    writeConcurrency: z.number().int().min(1).max(16).default(2),
    /** Attempts at writing a batch to disk before its captures are marked FAILURE. */
    maxDiskWriteAttempts: z.number().int().min(1).default(5),
    autoCapture: z.array(AutoCaptureRuleSchema).default([]),
    /**
     * Most bytes one capture may hold, tensors and auxiliary data together, inline or in shared memory: by default
     * max(-m, 64 MiB) (the agent passes defaultMaxCaptureBytesFor(-m)). Larger ones: RESOURCE_EXHAUSTED.
     */
    maxCaptureBytes: z.number().int().positive().default(DEFAULT_MAX_CAPTURE_BYTES),
    /**
     * Most bytes the captures held (accepted, not yet written) may hold together, besides bufferSize captures;
     * absent: max(256 MiB, 4 × maxCaptureBytes). Beyond it: RESOURCE_EXHAUSTED, as for a full buffer.
     */
    bufferBytes: z.number().int().positive().optional(),
  })
  .superRefine((settings, ctx) => {
    if (settings.batchSize > settings.bufferSize) {
      ctx.addIssue({
        code: 'custom',
        path: ['batchSize'],
        message: `the batch size (${settings.batchSize}) exceeds the buffer size (${settings.bufferSize})`,
      });
    }
    if (settings.destination === 'EdgeFleet' && settings.edgefleet === undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['edgefleet'],
        message: 'EdgeFleet captures need the device API endpoint and the device certificate',
      });
    }
    if ((settings.destination === 'Cloud' || settings.periodicUpload) && settings.cloud === undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['cloud'],
        message: 'Cloud captures and the periodic upload need a bucket',
      });
    }
  });
export type CaptureSettings = z.infer<typeof CaptureSettingsSchema>;
export type CaptureSettingsInput = z.input<typeof CaptureSettingsSchema>;

/**
 * Settings the SageMaker config file has no key for. The agent's config carries them (`edgefleet_capture_*` keys,
 * see docs/config.md); extras given here win over the config's, for code that embeds the capture service.
 */
export interface CaptureExtras {
  modelMonitorFormat?: boolean;
  keepUploadedFiles?: boolean;
  spoolQuotaBytes?: number;
  /** S3-compatible endpoint for the bucket (MinIO, Ceph, …). Default: the environment's AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS. */
  s3Endpoint?: string;
  s3ForcePathStyle?: boolean;
  /** IoT role alias; default `SageMakerEdge-<fleet>` (what Edge Manager created). */
  iotRoleAlias?: string;
  autoCapture?: z.input<typeof AutoCaptureRuleSchema>[];
  /** The largest capture when the config sets none (edgefleet_capture_max_bytes): the daemon passes max(-m, 64 MiB). */
  defaultMaxCaptureBytes?: number;
}

/**
 * The capture settings of an agent config: the SageMaker keys and the `edgefleet_capture_*` keys, each of the
 * latter overridden by the same setting in extras. Credentials: the IoT credentials
 * provider when the config names its endpoint, certificate and key (as SageMaker Edge devices were set up);
 * otherwise the AWS SDK's default chain.
 */
export function captureSettingsFromConfig(
  config: AgentConfig,
  extras: CaptureExtras = {},
  env: Readonly<Record<string, string | undefined>> = {},
): CaptureSettings {
  const {
    modelMonitorFormat,
    keepUploadedFiles,
    spoolQuotaBytes,
    s3Endpoint,
    s3ForcePathStyle,
    iotRoleAlias,
    autoCapture,
    maxCaptureBytes,
    ...capture
  } = config.capture;
  const { provider, device, storage } = config;
  const fleetName = device.fleetName ?? 'default';
  const deviceName = device.name ?? hostname();
  const needsBucket = capture.destination === 'Cloud' || capture.periodicUpload;
  const endpoint = extras.s3Endpoint ?? s3Endpoint ?? env.AWS_ENDPOINT_URL_S3 ?? env.AWS_ENDPOINT_URL;
  const forcePathStyle = extras.s3ForcePathStyle ?? s3ForcePathStyle;
  const { iotCredentialEndpoint, certFile, certKeyFile } = provider;
  return CaptureSettingsSchema.parse({
    ...capture,
    fleetName,
    deviceName,
    ...(needsBucket &&
      provider.s3BucketName !== undefined && {
        cloud: {
          bucket: provider.s3BucketName,
          region: device.region ?? 'us-east-1',
          ...(endpoint !== undefined && endpoint !== '' && { endpoint }),
          ...(forcePathStyle !== undefined && { forcePathStyle }),
          ...(provider.caCertFile !== undefined && { caFile: provider.caCertFile }),
          credentials:
            iotCredentialEndpoint !== undefined && certFile !== undefined && certKeyFile !== undefined
              ? {
                  source: 'iot',
                  endpoint: iotCredentialEndpoint,
                  roleAlias: extras.iotRoleAlias ?? iotRoleAlias ?? `SageMakerEdge-${fleetName}`,
                  thingName: device.iotThingName ?? deviceName,
                  certFile,
                  keyFile: certKeyFile,
                  ...(provider.caCertFile !== undefined && { caFile: provider.caCertFile }),
                }
              : { source: 'default' },
        },
      }),
    ...(capture.destination === 'EdgeFleet' &&
      provider.endpoint !== undefined &&
      certFile !== undefined &&
      certKeyFile !== undefined && {
        edgefleet: {
          endpoint: provider.endpoint,
          certFile,
          keyFile: certKeyFile,
          ...(provider.caCertFile !== undefined && { caFile: provider.caCertFile }),
          ...(provider.s3BucketName !== undefined && { bucket: provider.s3BucketName }),
        },
      }),
    modelMonitorFormat: extras.modelMonitorFormat ?? modelMonitorFormat,
    keepUploadedFiles: extras.keepUploadedFiles ?? keepUploadedFiles,
    spool: {
      dir: join(storage.localDataRootPath, 'capture-spool'),
      quotaBytes: extras.spoolQuotaBytes ?? spoolQuotaBytes,
      minFreeBytes: capture.diskMinFreeBytes,
    },
    autoCapture: extras.autoCapture ?? autoCapture,
    ...((maxCaptureBytes ?? extras.defaultMaxCaptureBytes) !== undefined && {
      maxCaptureBytes: maxCaptureBytes ?? extras.defaultMaxCaptureBytes,
    }),
  } satisfies CaptureSettingsInput);
}
