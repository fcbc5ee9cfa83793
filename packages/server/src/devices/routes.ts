import type { FastifyPluginAsync } from 'fastify';
import { operatorActorOf } from '../audit/index.js';
import { z } from 'zod';
import { deviceNameSchema, fleetNameSchema } from '../fields/index.js';
import { decodePageToken, pageQuerySchema, toPage } from '../http/pagination.js';
import { defineRoute } from '../http/routes.js';
import {
  deviceListQuerySchema,
  deviceSchema,
  deviceSummarySchema,
  registerDevicesSchema,
  updateDeviceSchema,
  type DeviceSortKey,
  type DeviceSummaryView,
  type DeviceView,
} from './device-schemas.js';
import { ApiError } from '../http/errors.js';
import { deploymentEventSchema, type DeploymentEventKind } from '../deployments/deployment-schemas.js';
import {
  deviceSortKeyOf,
  type DeviceCertificateRecord,
  type DeviceIdentity,
  type DeviceListPosition,
  type DeviceRecord,
  type DeviceStore,
} from './device-store.js';

const iso = (ms: number) => new Date(ms).toISOString();

export function deviceSummaryView(device: DeviceRecord): DeviceSummaryView {
  return {
    name: device.name,
    fleetName: device.fleetName,
    ...(device.description !== null ? { description: device.description } : {}),
    ...(device.iotThingName !== null ? { iotThingName: device.iotThingName } : {}),
    tags: device.tags,
    registeredAt: iso(device.registeredAt),
    ...(device.lastHeartbeatAt !== null ? { latestHeartbeat: iso(device.lastHeartbeatAt) } : {}),
    ...(device.agentVersion !== null ? { agentVersion: device.agentVersion } : {}),
    status: device.online ? 'online' : 'offline',
    models: device.models.map((m) => ({ name: m.name, version: m.version })),
    ...(device.deployedModelsNotLoaded !== null && {
      deployedModelsNotLoadedCount: device.deployedModelsNotLoaded.length,
    }),
  };
}

function certificateView(certificate: DeviceCertificateRecord) {
  return {
    serial: certificate.serial,
    fingerprintSha256: certificate.fingerprintSha256,
    subject: certificate.subject,
    notBefore: iso(certificate.notBefore),
    notAfter: iso(certificate.notAfter),
    issuedAt: iso(certificate.issuedAt),
    ...(certificate.revokedAt !== null ? { revokedAt: iso(certificate.revokedAt) } : {}),
  };
}

export function deviceView(device: DeviceRecord, identity: DeviceIdentity): DeviceView {
  return {
    ...deviceSummaryView(device),
    updatedAt: iso(device.updatedAt),
    registrationStatus: 'REGISTERED',
    models: device.models.map((m) => ({
      name: m.name,
      version: m.version,
      ...(m.latestSampleTime !== null ? { latestSampleTime: iso(m.latestSampleTime) } : {}),
      ...(m.latestInferenceTime !== null ? { latestInference: iso(m.latestInferenceTime) } : {}),
    })),
    identity: {
      status: identity.status,
      ...(identity.certificate ? { certificate: certificateView(identity.certificate) } : {}),
    },
    ...(device.deploymentResult !== null ? { deploymentResult: device.deploymentResult } : {}),
    ...(device.deployedModelsNotLoaded !== null && {
      deployedModelsNotLoaded: device.deployedModelsNotLoaded.map(({ since, ...model }) => ({
        ...model,
        ...(since !== undefined && { since: iso(since) }),
      })),
    }),
  };
}

const deviceParams = z.object({ device: deviceNameSchema });

export const deviceRoutes: FastifyPluginAsync<{
  devices: DeviceStore;
  /**
   * A fleet filter naming no fleet is a 404, not an empty list a typo would hide behind. (FleetStore's `get`,
   * typed here by its shape: the fleets module depends on this one.)
   */
  fleets: { get(name: string): Promise<unknown> };
}> = async (app, { devices, fleets }) => {
  const describe = async (name: string) => {
    const device = await devices.get(name);
    return deviceView(device, await devices.identity(device));
  };

  defineRoute(app, {
    method: 'POST',
    url: '/api/v1/fleets/:fleet/devices',
    auth: 'admin',
    tag: 'devices',
    summary: 'Register one or many devices in a fleet (all or none)',
    params: z.object({ fleet: fleetNameSchema }),
    body: registerDevicesSchema,
    response: z.object({ devices: z.array(deviceSchema) }),
    status: 201,
    handler: async ({ params, body, request }) => {
      const registered = await devices.register(
        params.fleet,
        body.devices,
        body.tags,
        operatorActorOf(request),
      );
      return { devices: registered.map((d) => deviceView(d, { status: 'NOT_ENROLLED' })) };
    },
  });

  defineRoute(app, {
    method: 'GET',
    url: '/api/v1/devices',
    auth: 'read',
    tag: 'devices',
    summary:
      'List devices sorted by name, last heartbeat or registration time, filtered by fleet, tags, name, online status, model',
    description: '404 when `fleet` names no fleet (a typo must not look like an empty fleet).',
    query: pageQuerySchema.extend(deviceListQuerySchema.shape),
    response: z.object({ devices: z.array(deviceSummarySchema), nextToken: z.string().optional() }),
    handler: async ({ query }) => {
      // A token names the order it was taken in, so it cannot continue a listing sorted another way.
      const listing = `devices by ${query.sortBy} ${query.sortOrder}`;
      if (query.fleet !== undefined) await fleets.get(query.fleet);
      const after = decodeDevicePosition(listing, query.sortBy, query.nextToken);
      const rows = await devices.list({
        limit: query.limit + 1,
        sortBy: query.sortBy,
        sortOrder: query.sortOrder,
        ...(after !== undefined ? { after } : {}),
        ...(query.fleet !== undefined ? { fleet: query.fleet } : {}),
        tags: query.tag,
        ...(query.nameContains !== undefined ? { nameContains: query.nameContains } : {}),
        ...(query.status !== undefined ? { status: query.status } : {}),
        ...(query.modelName !== undefined ? { modelName: query.modelName } : {}),
        ...(query.latestHeartbeatAfter !== undefined
          ? { latestHeartbeatAfter: Date.parse(query.latestHeartbeatAfter) }
          : {}),
      });
      const page = toPage(listing, rows, query.limit, (d) =>
        JSON.stringify([deviceSortKeyOf(d, query.sortBy), d.name]),
      );
      return {
        devices: page.items.map(deviceSummaryView),
        ...(page.nextToken ? { nextToken: page.nextToken } : {}),
      };
    },
  });

  defineRoute(app, {
    method: 'GET',
    url: '/api/v1/devices/:device',
    auth: 'read',
    tag: 'devices',
    summary: 'Describe a device: registration, identity, agent, models, last heartbeat',
    params: deviceParams,
    response: deviceSchema,
    handler: async ({ params }) => describe(params.device),
  });

  defineRoute(app, {
    method: 'GET',
    url: '/api/v1/devices/:device/deployment-events',
    auth: 'read',
    tag: 'devices',
    summary:
      "A device's deployment events, newest first: device failed, retried, timed out, cancelled, rolled back",
    description:
      "Every plan's events that name this device (GET /api/v1/deployment-plans/{plan}/events has a plan's, stage events included), since the device was registered.",
    params: deviceParams,
    query: pageQuerySchema,
    response: z.object({ events: z.array(deploymentEventSchema), nextToken: z.string().optional() }),
    handler: async ({ params, query }) => {
      const device = await devices.get(params.device);
      const before = decodePageToken('device-deployment-events', query.nextToken);
      const rows = await devices.deploymentEvents(device, {
        limit: query.limit + 1,
        ...(before !== undefined && { before }),
      });
      const page = toPage('device-deployment-events', rows, query.limit, (e) => e.id);
      return {
        events: page.items.map((e) => ({
          id: e.id,
          planName: e.planName,
          ...(e.stageName !== null && { stageName: e.stageName }),
          deviceName: device.name,
          kind: e.kind as DeploymentEventKind,
          message: e.message,
          at: iso(e.at),
        })),
        ...(page.nextToken && { nextToken: page.nextToken }),
      };
    },
  });

  defineRoute(app, {
    method: 'PATCH',
    url: '/api/v1/devices/:device',
    auth: 'admin',
    tag: 'devices',
    summary: 'Update a device (description, IoT thing name, tags); null clears an optional field',
    params: deviceParams,
    body: updateDeviceSchema,
    response: deviceSchema,
    handler: async ({ params, body, request }) => {
      await devices.update(params.device, body, operatorActorOf(request));
      return describe(params.device);
    },
  });

  defineRoute(app, {
    method: 'DELETE',
    url: '/api/v1/devices/:device',
    auth: 'admin',
    tag: 'devices',
    summary:
      'Deregister a device: removes it, revokes every certificate it was issued and stops its pending deployments',
    params: deviceParams,
    status: 204,
    handler: async ({ params, request }) => {
      await devices.deregister(params.device, operatorActorOf(request));
      return undefined;
    },
  });
};

/** The (sort key, name) a device page token holds; a token from another listing or order is a 400. */
/** A page token's position per order: a name, or a time in epoch ms (-1: never seen) as the database holds it. */
const devicePositionSchemas = {
  name: z.tuple([z.string(), z.string()]),
  lastSeen: z.tuple([z.int().min(-1), z.string()]),
  registered: z.tuple([z.int().min(0), z.string()]),
} satisfies Record<DeviceSortKey, z.ZodType>;

function decodeDevicePosition(
  listing: string,
  sortBy: DeviceSortKey,
  token: string | undefined,
): DeviceListPosition | undefined {
  const encoded = decodePageToken(listing, token);
  if (encoded === undefined) return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(encoded);
  } catch {
    parsed = undefined;
  }
  const position = devicePositionSchemas[sortBy].safeParse(parsed);
  if (!position.success) {
    throw new ApiError(400, 'ValidationError', `nextToken is not a token from this ${listing} listing`, {
      in: 'querystring',
    });
  }
  return { key: position.data[0], name: position.data[1] };
}
