import {
  ModelNameSchema,
  ModelVersionSchema,
  deploymentResultSchema,
  deviceIdsSchema,
  getDeploymentsRequestSchema,
  getDeploymentsResultSchema,
  sendHeartbeatResultSchema,
  UPLOADED_PACKAGE_ROUTE,
} from '@edgefleet/core';
import { operatorActorOf } from '../audit/index.js';
import type { FastifyPluginAsync } from 'fastify';
import { z } from 'zod';
import type { BlobStore } from '../blobs/index.js';
import { DomainError } from '../errors/index.js';
import type { ModelStore } from '../models/index.js';
import { sendPackage } from '../packaging/index.js';
import { deviceNameSchema, entityNameSchema, fleetNameSchema } from '../fields/index.js';
import { assertActsAsItself } from '../heartbeats/index.js';
import { ApiError } from '../http/errors.js';
import { decodePageToken, pageQuerySchema, toPage } from '../http/pagination.js';
import { defineRoute } from '../http/routes.js';
import { requireDevice } from '../identity/index.js';
import {
  MAX_STAGES,
  createPlanSchema,
  deploymentEventSchema,
  deviceDeploymentStatusSchema,
  stageStatusSchema,
  planViewSchema,
  stageDeviceSchema,
  stageInputSchema,
} from './deployment-schemas.js';
import type { DeploymentService } from './deployment-service.js';

const planParams = z.object({ plan: entityNameSchema });
const stageParams = planParams.extend({ stage: entityNameSchema });
const deviceParams = planParams.extend({ device: deviceNameSchema });
const startStageBodySchema = z.strictObject({
  force: z.boolean().default(false).describe('Start it even though an earlier stage of the plan FAILED'),
});

/** The create's answer: the plan, and what the operator should know about the packages it deploys. */
const createdPlanSchema = planViewSchema.extend({
  warnings: z
    .array(z.string())
    .optional()
    .describe(
      'For each uploaded package (modelName/modelVersion) that devices enrolled by this server will refuse ' +
        "(unsigned, signed with a key or under a root other than the server's package-signing root, or with a " +
        'certificate not valid now), why and what to do, as its upload warned, checked again now; the plan is ' +
        'created all the same. Absent when there is nothing to say.',
    ),
});

/** Operator routes: plans, stages, stage devices and events (SageMaker's deployment plan operations). */
export const deploymentRoutes: FastifyPluginAsync<{ deployments: DeploymentService }> = async (
  app,
  { deployments },
) => {
  defineRoute(app, {
    method: 'POST',
    url: '/api/v1/deployment-plans',
    auth: 'admin',
    tag: 'deployments',
    summary: 'Create a deployment plan (CreateEdgeDeploymentPlan): models for a fleet, and ordered stages',
    description:
      'A DEPLOY model config names a COMPLETED packaging job; UNDEPLOY removes the model handle from devices. ' +
      '409 when another unfinished plan rolls out one of the model handles to the same fleet.',
    body: createPlanSchema,
    response: createdPlanSchema,
    status: 201,
    handler: async ({ body, request }) => deployments.createPlan(body, operatorActorOf(request)),
  });

  defineRoute(app, {
    method: 'GET',
    url: '/api/v1/deployment-plans',
    auth: 'read',
    tag: 'deployments',
    summary: 'List deployment plans in name order or newest first (ListEdgeDeploymentPlans)',
    description:
      '404 when `fleetName` names no fleet (a typo must not look like a fleet without plans). `order=newest` ' +
      'lists the latest created first; `stageStatus` (repeatable) lists only plans with a stage in one of ' +
      'those statuses (INPROGRESS and STOPPING: rollouts under way; FAILED: failed ones), however many plans ' +
      'there are. A nextToken continues the listing it came from, in its order.',
    query: pageQuerySchema.extend({
      fleetName: fleetNameSchema.optional(),
      order: z
        .enum(['name', 'newest'])
        .default('name')
        .describe('name (A to Z) or newest (latest created first, then name Z to A)'),
      stageStatus: z
        .union([stageStatusSchema, z.array(stageStatusSchema).max(stageStatusSchema.options.length)], {
          // The union's own message ("Invalid input") names neither the value nor what was expected.
          error: (issue) =>
            `expected one or more of ${stageStatusSchema.options.join(', ')} (repeat the parameter for several), not ${JSON.stringify(issue.input)}`,
        })
        .optional()
        .transform((value) => (value === undefined ? [] : Array.isArray(value) ? value : [value]))
        .describe('Only plans with a stage in this status; repeatable (any of them)'),
    }),
    response: z.object({ plans: z.array(planViewSchema), nextToken: z.string().optional() }),
    handler: async ({ query }) => {
      const filters = {
        limit: query.limit + 1,
        order: query.order,
        stageStatus: query.stageStatus,
        ...(query.fleetName !== undefined && { fleetName: query.fleetName }),
      };
      if (query.order === 'newest') {
        const afterNewest = decodeNewestPosition(query.nextToken);
        const rows = await deployments.listPlans({ ...filters, ...(afterNewest && { afterNewest }) });
        const page = toPage(NEWEST_PLANS, rows, query.limit, (p) =>
          JSON.stringify([Date.parse(p.createdAt), p.name]),
        );
        return { plans: page.items, ...(page.nextToken && { nextToken: page.nextToken }) };
      }
      const after = decodePageToken('deployment-plans', query.nextToken);
      const rows = await deployments.listPlans({ ...filters, ...(after !== undefined && { after }) });
      const page = toPage('deployment-plans', rows, query.limit, (p) => p.name);
      return { plans: page.items, ...(page.nextToken && { nextToken: page.nextToken }) };
    },
  });

  defineRoute(app, {
    method: 'GET',
    url: '/api/v1/deployment-plans/:plan',
    auth: 'read',
    tag: 'deployments',
    summary:
      'Describe a deployment plan: stages, their statuses and device counts (DescribeEdgeDeploymentPlan)',
    params: planParams,
    response: planViewSchema,
    handler: async ({ params }) => deployments.describePlan(params.plan),
  });

  defineRoute(app, {
    method: 'DELETE',
    url: '/api/v1/deployment-plans/:plan',
    auth: 'admin',
    tag: 'deployments',
    summary: 'Delete a deployment plan with no stage under way (DeleteEdgeDeploymentPlan)',
    params: planParams,
    status: 204,
    handler: async ({ params, request }) => {
      await deployments.deletePlan(params.plan, operatorActorOf(request));
      return undefined;
    },
  });

  defineRoute(app, {
    method: 'POST',
    url: '/api/v1/deployment-plans/:plan/stages',
    auth: 'admin',
    tag: 'deployments',
    summary: 'Add stages at the end of a plan (CreateEdgeDeploymentStage)',
    params: planParams,
    body: z.strictObject({ stages: z.array(stageInputSchema).min(1).max(MAX_STAGES) }),
    response: planViewSchema,
    status: 201,
    handler: async ({ params, body }) => deployments.addStages(params.plan, body.stages),
  });

  defineRoute(app, {
    method: 'DELETE',
    url: '/api/v1/deployment-plans/:plan/stages/:stage',
    auth: 'admin',
    tag: 'deployments',
    summary: 'Delete a stage that never started (DeleteEdgeDeploymentStage)',
    params: stageParams,
    response: planViewSchema,
    handler: async ({ params }) => deployments.deleteStage(params.plan, params.stage),
  });

  defineRoute(app, {
    method: 'POST',
    url: '/api/v1/deployment-plans/:plan/stages/:stage/start',
    auth: 'admin',
    tag: 'deployments',
    summary: 'Start a stage (StartEdgeDeploymentStage): the devices it selects now are its devices',
    description:
      '409 naming the stage when an earlier stage of the plan FAILED (a canary exists to stop the rollout), ' +
      'unless the body says force: true.',
    params: stageParams,
    // No body (as the CLI sent before --force) reads as null: not forced.
    body: startStageBodySchema.nullish(),
    response: planViewSchema,
    handler: async ({ params, body, request }) =>
      deployments.startStage(
        params.plan,
        params.stage,
        { force: body?.force ?? false },
        operatorActorOf(request),
      ),
  });

  defineRoute(app, {
    method: 'POST',
    url: '/api/v1/deployment-plans/:plan/stages/:stage/stop',
    auth: 'admin',
    tag: 'deployments',
    summary: 'Stop a stage (StopEdgeDeploymentStage): devices not started are not; those mid-update finish',
    params: stageParams,
    response: planViewSchema,
    handler: async ({ params, request }) =>
      deployments.stopStage(params.plan, params.stage, operatorActorOf(request)),
  });

  defineRoute(app, {
    method: 'GET',
    url: '/api/v1/deployment-plans/:plan/stages/:stage/devices',
    auth: 'read',
    tag: 'deployments',
    summary: "A stage's devices in name order, with status, reason and last-seen time (ListStageDevices)",
    description: '`status` lists only the devices in that status (say FAILED, to find the ones to look at).',
    params: stageParams,
    query: pageQuerySchema.extend({
      status: deviceDeploymentStatusSchema.optional().describe('Only devices in this deployment status'),
    }),
    response: z.object({ devices: z.array(stageDeviceSchema), nextToken: z.string().optional() }),
    handler: async ({ params, query }) => {
      const after = decodePageToken('stage-devices', query.nextToken);
      const rows = await deployments.stageDevices(params.plan, params.stage, {
        limit: query.limit + 1,
        ...(after !== undefined && { after }),
        ...(query.status !== undefined && { status: query.status }),
      });
      const page = toPage('stage-devices', rows, query.limit, (d) => d.deviceName);
      return { devices: page.items, ...(page.nextToken && { nextToken: page.nextToken }) };
    },
  });

  defineRoute(app, {
    method: 'POST',
    url: '/api/v1/deployment-plans/:plan/devices/:device/cancel',
    auth: 'admin',
    tag: 'deployments',
    summary: "Cancel one device's deployment: it is STOPPED and goes back to what earlier plans gave it",
    params: deviceParams,
    response: stageDeviceSchema,
    handler: async ({ params, request }) =>
      deployments.cancelDevice(params.plan, params.device, operatorActorOf(request)),
  });

  defineRoute(app, {
    method: 'GET',
    url: '/api/v1/deployment-plans/:plan/events',
    auth: 'read',
    tag: 'deployments',
    summary:
      "A plan's events in time order or newest first: plan created, stage started/deployed/failed/aborted/" +
      'stopped, device failed/retried/timed out/cancelled/rolled back, auto-advance held (why the next stage ' +
      'did not start)',
    description: '`order=newest` lists the latest first; its nextToken continues to older ones.',
    params: planParams,
    query: pageQuerySchema.extend({
      order: z
        .enum(['oldest', 'newest'])
        .default('oldest')
        .describe('oldest first (time order) or newest first'),
    }),
    response: z.object({ events: z.array(deploymentEventSchema), nextToken: z.string().optional() }),
    handler: async ({ params, query }) => {
      // Each order has its own tokens: a position in one read in the other would skip or repeat events.
      const list = query.order === 'newest' ? 'deployment-events-newest' : 'deployment-events';
      const after = decodePageToken(list, query.nextToken);
      const rows = await deployments.events(params.plan, {
        limit: query.limit + 1,
        order: query.order,
        ...(after !== undefined && { after }),
      });
      const page = toPage(list, rows, query.limit, (e) => e.id);
      return { events: page.items, ...(page.nextToken && { nextToken: page.nextToken }) };
    },
  });
};

export const deploymentResultRequestSchema = deviceIdsSchema.extend({
  DeploymentResult: deploymentResultSchema,
});

/**
 * Device routes (mutual TLS): GetDeployments (native path and Edge Manager's name), and a device's
 * DeploymentResult on its own (heartbeats carry it too).
 */
export const deploymentDeviceRoutes: FastifyPluginAsync<{
  deployments: DeploymentService;
  models: Pick<ModelStore, 'getVersion'>;
  blobs: BlobStore;
  /** The result route's body limit: a DeploymentResult's, as inside SendHeartbeat (heartbeat.maxBodyBytes). */
  resultBodyLimit: number;
}> = async (app, { deployments, models, blobs, resultBodyLimit }) => {
  for (const url of ['/api/v1/device/deployments', '/GetDeployments']) {
    defineRoute(app, {
      method: 'POST',
      url,
      auth: 'device',
      tag: 'device',
      summary: "GetDeployments: the device's desired models (package URL on the device API, SHA-256, size)",
      body: getDeploymentsRequestSchema,
      response: getDeploymentsResultSchema,
      handler: async ({ body, request }) => {
        const device = requireDevice(request);
        assertActsAsItself(device, body);
        return deployments.deploymentsFor(device);
      },
    });
  }
  defineRoute(app, {
    method: 'GET',
    // The route a PackageUrl names (core's contract), so that the two cannot drift apart.
    url: `${UPLOADED_PACKAGE_ROUTE}:model/:version`,
    auth: 'device',
    tag: 'device',
    summary:
      "Download an uploaded package (a model version uploaded as a .tar.gz) a plan deploys to the device's fleet",
    description:
      'HTTP Range as for /api/v1/device/packages/{job}; 403 unless a plan of the fleet deploys it.',
    params: z.object({ model: ModelNameSchema, version: ModelVersionSchema }),
    binaryResponse: 'application/gzip',
    handler: async ({ params, request, reply }) => {
      const device = requireDevice(request);
      // Checked before the version is looked up, so a device cannot learn what exists elsewhere.
      if (!(await deployments.isUploadedPackageDeployable(params.model, params.version, device.fleetName))) {
        throw new DomainError(
          'Forbidden',
          `package ${params.model} ${params.version} is not deployed to fleet ${device.fleetName}; a device may ` +
            'download only packages deployed to its own fleet',
          { model: params.model, version: params.version, fleet: device.fleetName },
        );
      }
      const version = await models.getVersion(params.model, params.version);
      return sendPackage(request, reply, blobs, {
        key: version.blobKey,
        size: version.sizeBytes,
        sha256: version.sha256,
      });
    },
  });

  defineRoute(app, {
    method: 'POST',
    url: '/api/v1/device/deployments/result',
    auth: 'device',
    tag: 'device',
    summary: 'Report a DeploymentResult now, without waiting for the next heartbeat',
    description:
      "Kept as the device's last DeploymentResult (shown by the device read APIs and the console at once, as " +
      'one a heartbeat carries) and applied to its deployment; a heartbeat without one keeps it, and a ' +
      "heartbeat repeating it changes nothing. A result naming a plan that is not one of the fleet's, or a " +
      'failure from before the attempt it would end (beyond heartbeat.maxClockSkewSeconds), is left out (200, logged).',
    // Its reasons per model make a legal result larger than the device port's default body limit.
    bodyLimit: resultBodyLimit,
    body: deploymentResultRequestSchema,
    response: sendHeartbeatResultSchema,
    handler: async ({ body, request }) => {
      const device = requireDevice(request);
      assertActsAsItself(device, body);
      await deployments.recordDeviceResult({
        deviceName: device.deviceName,
        fleetName: device.fleetName,
        result: body.DeploymentResult,
        receivedAt: Date.now(),
      });
      return {};
    },
  });
};

/** The page-token list of plans newest first: positions are [created-at ms, name]. */
const NEWEST_PLANS = 'deployment-plans-newest';
const newestPositionSchema = z.tuple([z.number().int().nonnegative(), entityNameSchema]);

function decodeNewestPosition(token: string | undefined): { createdAt: number; name: string } | undefined {
  const position = decodePageToken(NEWEST_PLANS, token);
  if (position === undefined) return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(position);
  } catch {
    parsed = undefined;
  }
  const checked = newestPositionSchema.safeParse(parsed);
  if (!checked.success) {
    throw new ApiError(400, 'ValidationError', `nextToken is not a token from this ${NEWEST_PLANS} listing`, {
      in: 'querystring',
    });
  }
  return { createdAt: checked.data[0], name: checked.data[1] };
}
