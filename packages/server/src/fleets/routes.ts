import type { FastifyPluginAsync } from 'fastify';
import { z } from 'zod';
import { operatorActorOf } from '../audit/index.js';
import { fleetNameSchema } from '../fields/index.js';
import { decodePageToken, pageQuerySchema, toPage } from '../http/pagination.js';
import { defineRoute } from '../http/routes.js';
import {
  createFleetSchema,
  fleetListQuerySchema,
  fleetSchema,
  updateFleetSchema,
  type FleetView,
} from './fleet-schemas.js';
import type { FleetRecord, FleetStore } from './fleet-store.js';

const iso = (ms: number) => new Date(ms).toISOString();

export function fleetView(fleet: FleetRecord): FleetView {
  return {
    name: fleet.name,
    ...(fleet.description !== null ? { description: fleet.description } : {}),
    outputConfig: {
      s3OutputLocation: fleet.outputConfig.s3OutputLocation,
      ...(fleet.outputConfig.kmsKeyId !== null ? { kmsKeyId: fleet.outputConfig.kmsKeyId } : {}),
      bucket: fleet.outputConfig.bucket,
      prefix: fleet.outputConfig.prefix,
    },
    ...(fleet.roleArn !== null ? { roleArn: fleet.roleArn } : {}),
    tags: fleet.tags,
    deviceCount: fleet.deviceCount,
    createdAt: iso(fleet.createdAt),
    updatedAt: iso(fleet.updatedAt),
    ...(fleet.warnings !== undefined && { warnings: fleet.warnings }),
  };
}

const fleetParams = z.object({ fleet: fleetNameSchema });

export const fleetRoutes: FastifyPluginAsync<{ fleets: FleetStore }> = async (app, { fleets }) => {
  defineRoute(app, {
    method: 'POST',
    url: '/api/v1/fleets',
    auth: 'admin',
    tag: 'fleets',
    summary: 'Create a device fleet',
    body: createFleetSchema,
    response: fleetSchema,
    status: 201,
    handler: async ({ body, request }) => fleetView(await fleets.create(body, operatorActorOf(request))),
  });

  defineRoute(app, {
    method: 'GET',
    url: '/api/v1/fleets',
    auth: 'read',
    tag: 'fleets',
    summary: 'List fleets in name order',
    query: pageQuerySchema.extend(fleetListQuerySchema.shape),
    response: z.object({ fleets: z.array(fleetSchema), nextToken: z.string().optional() }),
    handler: async ({ query }) => {
      const after = decodePageToken('fleets', query.nextToken);
      const rows = await fleets.list({
        limit: query.limit + 1,
        ...(after !== undefined ? { after } : {}),
        ...(query.nameContains !== undefined ? { nameContains: query.nameContains } : {}),
      });
      const page = toPage('fleets', rows, query.limit, (f) => f.name);
      return { fleets: page.items.map(fleetView), ...(page.nextToken ? { nextToken: page.nextToken } : {}) };
    },
  });

  defineRoute(app, {
    method: 'GET',
    url: '/api/v1/fleets/:fleet',
    auth: 'read',
    tag: 'fleets',
    summary: 'Describe a fleet',
    params: fleetParams,
    response: fleetSchema,
    handler: async ({ params }) => fleetView(await fleets.get(params.fleet)),
  });

  defineRoute(app, {
    method: 'PATCH',
    url: '/api/v1/fleets/:fleet',
    auth: 'admin',
    tag: 'fleets',
    summary: 'Update a fleet (description, output config, role, tags); null clears an optional field',
    params: fleetParams,
    body: updateFleetSchema,
    response: fleetSchema,
    handler: async ({ params, body, request }) =>
      fleetView(await fleets.update(params.fleet, body, operatorActorOf(request))),
  });

  defineRoute(app, {
    method: 'DELETE',
    url: '/api/v1/fleets/:fleet',
    auth: 'admin',
    tag: 'fleets',
    summary:
      'Delete a fleet; refused (409 ResourceInUse, naming them) while devices remain in it or deployment plans name it',
    params: fleetParams,
    status: 204,
    handler: async ({ params, request }) => {
      await fleets.delete(params.fleet, operatorActorOf(request));
      return undefined;
    },
  });
};
