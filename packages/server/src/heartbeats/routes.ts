import {
  deviceRegistrationResultSchema,
  getDeviceRegistrationRequestSchema,
  MAX_METRICS_PER_HEARTBEAT,
  sendHeartbeatRequestSchema,
  sendHeartbeatResultSchema,
} from '@edgefleet/core';
import type { FastifyPluginAsync } from 'fastify';
import type { Kysely } from 'kysely';
import { z } from 'zod';
import type { DeviceStore } from '../devices/index.js';
import { deviceNameSchema, fleetNameSchema } from '../fields/index.js';
import type { FleetOutputOutage, FleetStore } from '../fleets/index.js';
import { defineRoute } from '../http/routes.js';
import { requireDevice } from '../identity/index.js';
import type { DatabaseEngine, DatabaseSchema } from '../storage/index.js';
import { fleetReport } from './fleet-report.js';
import type { HeartbeatService } from './heartbeat-service.js';
import { queryDeviceMetrics } from './metrics-query.js';

const iso = (ms: number) => new Date(ms).toISOString();

/** SendHeartbeat's paths: the device API's, its SageMaker name (also the facade's data-plane route). */
export const SEND_HEARTBEAT_URLS: readonly string[] = ['/api/v1/device/heartbeat', '/SendHeartbeat'];

/** Device API routes (mutual TLS): SendHeartbeat and GetDeviceRegistration, native paths and SageMaker names. */
export const heartbeatDeviceRoutes: FastifyPluginAsync<{
  heartbeats: HeartbeatService;
  /** Largest SendHeartbeat body (heartbeat.maxBodyBytes). */
  maxBodyBytes: number;
}> = async (app, { heartbeats, maxBodyBytes }) => {
  for (const url of SEND_HEARTBEAT_URLS) {
    defineRoute(app, {
      method: 'POST',
      url,
      auth: 'device',
      tag: 'device',
      summary: 'SendHeartbeat: agent version and metrics, models on the device, last deployment result',
      description:
        `At most ${MAX_METRICS_PER_HEARTBEAT} metrics in all (400 beyond), a body of at most ` +
        'heartbeat.maxBodyBytes (413). When the device has stored heartbeat.metricBytesPerDevicePerHour of ' +
        'metrics this hour, the state (version, models, deployment result, time) is still recorded and the ' +
        'answer is 200, but the metrics are dropped and MetricsDropped says so.',
      body: sendHeartbeatRequestSchema,
      response: sendHeartbeatResultSchema,
      bodyLimit: maxBodyBytes,
      handler: async ({ body, request }) => heartbeats.record(requireDevice(request), body),
    });
  }
  for (const url of ['/api/v1/device/registration', '/GetDeviceRegistration']) {
    defineRoute(app, {
      method: 'POST',
      url,
      auth: 'device',
      tag: 'device',
      summary: 'GetDeviceRegistration: whether the device is registered, and how long to cache the answer',
      body: getDeviceRegistrationRequestSchema,
      response: deviceRegistrationResultSchema,
      handler: async ({ body, request }) => heartbeats.registration(requireDevice(request), body),
    });
  }
};

const fleetReportSchema = z.object({
  fleetName: z.string(),
  description: z.string().optional(),
  outputConfig: z.object({ s3OutputLocation: z.string(), kmsKeyId: z.string().optional() }),
  reportGenerated: z.iso.datetime(),
  outputOutage: z
    .object({
      outputLocation: z.string(),
      since: z.iso.datetime().describe('When the first upload of this outage failed'),
      lastFailure: z.iso
        .datetime()
        .describe(
          'When an upload last failed in this outage (recorded at most once a minute: within a minute)',
        ),
      problem: z
        .enum(['missing-bucket', 'forbidden', 'credentials', 'unreachable'])
        .describe(
          "missing-bucket, forbidden and credentials are the operator's to fix; unreachable may pass",
        ),
      reason: z
        .string()
        .describe('What is wrong and what would fix it (never the S3 endpoint or credentials)'),
      message: z.string().describe('The whole of it in one sentence, as the CLI and console show it'),
    })
    .optional()
    .describe(
      "Capture uploads to the fleet's output location fail (answered 503: devices keep their captures and " +
        'retry); absent while they land. Cleared by the next upload that lands, or a new output location.',
    ),
  deviceStats: z.object({
    connectedDeviceCount: z.int(),
    registeredDeviceCount: z.int(),
    neverSeenDeviceCount: z
      .int()
      .describe(
        'Registered devices never heard from (no heartbeat yet); offline = registered − connected − this',
      ),
  }),
  agentVersions: z.array(z.object({ version: z.string(), agentCount: z.int() })),
  modelStats: z.array(
    z.object({
      modelName: z.string(),
      modelVersion: z.string(),
      offlineDeviceCount: z.int(),
      connectedDeviceCount: z.int(),
      activeDeviceCount: z.int(),
      samplingDeviceCount: z.int(),
    }),
  ),
});

const metricsQuerySchema = z.object({
  since: z.iso.datetime().optional().describe('Start (inclusive); default one hour before until'),
  until: z.iso.datetime().optional().describe('End (exclusive); default now'),
  step: z.coerce.number().int().min(1).max(86_400).default(60).describe('Bucket width in seconds'),
  metricName: z.string().min(1).max(100).optional(),
  modelName: z.string().min(1).max(255).optional(),
});

const OUTAGE_PROBLEM_TEXT: Record<z.infer<typeof outageProblemSchema>, string> = {
  'missing-bucket': 'missing bucket',
  forbidden: 'access refused',
  credentials: 'no credentials',
  unreachable: 'unreachable',
};
const outageProblemSchema = fleetReportSchema.shape.outputOutage.unwrap().shape.problem;

function outageView(outage: FleetOutputOutage) {
  const problem = outageProblemSchema.catch('unreachable').parse(outage.problem);
  const since = iso(outage.since);
  const lastFailure = iso(outage.lastFailureAt);
  return {
    outputLocation: outage.outputLocation,
    since,
    lastFailure,
    problem,
    reason: outage.reason,
    message:
      `output location ${outage.outputLocation} ${OUTAGE_PROBLEM_TEXT[problem]} since ${since} ` +
      `(last failed upload ${lastFailure}): ${outage.reason}; devices keep their captures and retry`,
  };
}

/** Operator routes: the fleet report and device metric series. */
export const heartbeatOperatorRoutes: FastifyPluginAsync<{
  db: Kysely<DatabaseSchema>;
  /** Which SQL the metric series' aggregation is written in. */
  engine: DatabaseEngine;
  fleets: FleetStore;
  devices: DeviceStore;
  offlineAfterMs: number;
  /** Most metrics one query reads (heartbeat.maxMetricsPerQuery). */
  maxMetricsPerQuery: number;
}> = async (app, deps) => {
  defineRoute(app, {
    method: 'GET',
    url: '/api/v1/fleets/:fleet/report',
    auth: 'read',
    tag: 'fleets',
    summary: 'Fleet report: connected/registered devices, agent versions, per-model device counts',
    params: z.object({ fleet: fleetNameSchema }),
    response: fleetReportSchema,
    handler: async ({ params }) => {
      const report = await fleetReport(deps.db, deps.fleets, params.fleet, {
        offlineAfterMs: deps.offlineAfterMs,
      });
      return {
        fleetName: report.fleetName,
        ...(report.description !== null ? { description: report.description } : {}),
        outputConfig: {
          s3OutputLocation: report.outputConfig.s3OutputLocation,
          ...(report.outputConfig.kmsKeyId !== null ? { kmsKeyId: report.outputConfig.kmsKeyId } : {}),
        },
        reportGenerated: iso(report.reportGenerated),
        ...(report.outputOutage !== undefined && { outputOutage: outageView(report.outputOutage) }),
        deviceStats: report.deviceStats,
        agentVersions: report.agentVersions,
        modelStats: report.modelStats,
      };
    },
  });

  defineRoute(app, {
    method: 'GET',
    url: '/api/v1/devices/:device/metrics',
    auth: 'read',
    tag: 'devices',
    summary: "A device's metric time series (agent and per-model), bucketed: min, max, avg, count",
    description:
      'A window holding more than heartbeat.maxMetricsPerQuery stored metrics (of every name) is refused (400): ' +
      'narrow it.',
    params: z.object({ device: deviceNameSchema }),
    query: metricsQuerySchema,
    response: z.object({
      deviceName: z.string(),
      since: z.iso.datetime(),
      until: z.iso.datetime(),
      step: z.int(),
      series: z.array(
        z.object({
          metricName: z.string(),
          dimension: z.string().optional(),
          modelName: z.string().optional(),
          modelVersion: z.string().optional(),
          points: z.array(
            z.object({
              timestamp: z.iso.datetime(),
              min: z.number(),
              max: z.number(),
              avg: z.number(),
              count: z.int(),
            }),
          ),
        }),
      ),
    }),
    handler: async ({ params, query }) => {
      await deps.devices.get(params.device);
      const until = query.until !== undefined ? Date.parse(query.until) : Date.now();
      const since = query.since !== undefined ? Date.parse(query.since) : until - 3_600_000;
      const series = await queryDeviceMetrics(deps.db, deps.engine, {
        deviceName: params.device,
        since,
        until,
        stepMs: query.step * 1000,
        maxMetrics: deps.maxMetricsPerQuery,
        ...(query.metricName !== undefined ? { metricName: query.metricName } : {}),
        ...(query.modelName !== undefined ? { modelName: query.modelName } : {}),
      });
      return {
        deviceName: params.device,
        since: iso(since),
        until: iso(until),
        step: query.step,
        series: series.map((s) => ({
          metricName: s.metricName,
          ...(s.dimension !== null ? { dimension: s.dimension } : {}),
          ...(s.modelName !== null ? { modelName: s.modelName } : {}),
          ...(s.modelVersion !== null ? { modelVersion: s.modelVersion } : {}),
          points: s.points.map((p) => ({ ...p, timestamp: iso(p.timestamp) })),
        })),
      };
    },
  });
};
