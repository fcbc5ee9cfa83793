/**
 * The device-API messages the fleet client sends and receives, in Edge Manager's data-plane shapes
 * (SendHeartbeat, GetDeviceRegistration; /work/shared/spec/sagemaker-cloud-api.md): PascalCase fields,
 * timestamps in epoch seconds.
 */
import { z } from 'zod';

/** Most models one heartbeat lists (the server refuses more). */
export const MAX_MODELS_PER_HEARTBEAT = 256;

export const METRIC_NAME_PATTERN = /^[a-zA-Z0-9](-*[a-zA-Z0-9])*$/;
export const DIMENSION_PATTERN = /^[a-zA-Z0-9](-*[a-zA-Z0-9/])*$/;
export const MODEL_NAME_PATTERN = /^[a-zA-Z0-9](-*[a-zA-Z0-9])*$/;
export const VERSION_PATTERN = /^[a-zA-Z0-9 _.]+$/;
const DEVICE_NAME_PATTERN = /^[a-zA-Z0-9](-*_*[a-zA-Z0-9])*$/;

const epochSeconds = z.number().nonnegative();

export const edgeMetricSchema = z.strictObject({
  Dimension: z.string().max(1000).regex(DIMENSION_PATTERN).optional(),
  MetricName: z.string().max(100).regex(METRIC_NAME_PATTERN),
  Value: z.number().refine(Number.isFinite, 'expected a finite number'),
  Timestamp: epochSeconds,
});
export type EdgeMetric = z.infer<typeof edgeMetricSchema>;

export const heartbeatModelSchema = z.strictObject({
  ModelName: z.string().max(255).regex(MODEL_NAME_PATTERN),
  ModelVersion: z.string().min(1).max(64).regex(VERSION_PATTERN),
  LatestSampleTime: epochSeconds.optional(),
  LatestInference: epochSeconds.optional(),
  ModelMetrics: z.array(edgeMetricSchema).max(500),
});
export type HeartbeatModel = z.infer<typeof heartbeatModelSchema>;

export const sendHeartbeatRequestSchema = z.strictObject({
  AgentMetrics: z.array(edgeMetricSchema).max(500),
  Models: z.array(heartbeatModelSchema).max(MAX_MODELS_PER_HEARTBEAT),
  AgentVersion: z.string().min(1).max(64).regex(VERSION_PATTERN),
  DeviceName: z.string().max(63).regex(DEVICE_NAME_PATTERN),
  DeviceFleetName: z.string().max(63).regex(DEVICE_NAME_PATTERN),
});
export type SendHeartbeatRequest = z.infer<typeof sendHeartbeatRequestSchema>;

export const deviceRegistrationResultSchema = z.object({
  DeviceRegistration: z.string().min(1),
  /** Seconds, as a string (as Edge Manager sent it). */
  CacheTTL: z.string().optional(),
});
export type DeviceRegistrationResult = z.infer<typeof deviceRegistrationResultSchema>;

export const heartbeatResultSchema = z.object({});

/** The error body of the EdgeFleet server (`code`, `message`) or Edge Manager's (`Message`). */
export const deviceApiErrorSchema = z.object({
  code: z.string().optional(),
  message: z.string().optional(),
  Message: z.string().optional(),
});
