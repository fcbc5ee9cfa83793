import type { FastifyPluginAsync } from 'fastify';
import { operatorActorOf } from '../audit/index.js';
import { z } from 'zod';
import { deviceNameSchema } from '../fields/index.js';
import { notFound } from '../errors/index.js';
import { decodePageToken, pageQuerySchema, toPage } from '../http/pagination.js';
import { defineRoute } from '../http/routes.js';
import type { AccessKeyRecord, AccessKeyStore } from './access-keys.js';
import { tokenScopeSchema } from './api-tokens.js';

const keyNameSchema = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,99}$/, 'expected 1-100 characters: letters, digits, space . _ @ -');

export const accessKeySchema = z.object({
  accessKeyId: z.string(),
  name: z.string(),
  scope: tokenScopeSchema,
  deviceName: z.string().optional().describe('Set for data-plane keys: the device they speak for'),
  createdAt: z.iso.datetime(),
  revokedAt: z.iso.datetime().optional(),
  state: z
    .enum(['active', 'revoked', 'ended'])
    .describe(
      'ended: a device key whose device was deregistered (SigV4 calls with it are refused); revoke it to tidy up',
    ),
  endedReason: z.string().optional().describe('Why an ended key ended'),
});

function toApi(record: AccessKeyRecord): z.input<typeof accessKeySchema> {
  return {
    accessKeyId: record.accessKeyId,
    name: record.name,
    scope: record.scope,
    ...(record.deviceName !== null ? { deviceName: record.deviceName } : {}),
    createdAt: new Date(record.createdAt).toISOString(),
    ...(record.revokedAt !== null ? { revokedAt: new Date(record.revokedAt).toISOString() } : {}),
    state: record.revokedAt !== null ? 'revoked' : record.endedReason !== undefined ? 'ended' : 'active',
    ...(record.endedReason !== undefined ? { endedReason: record.endedReason } : {}),
  };
}

/** AWS-style access keys for the SageMaker facade (SigV4): create (secret shown once), list, revoke. */
export const accessKeyRoutes: FastifyPluginAsync<{ accessKeys: AccessKeyStore }> = async (
  app,
  { accessKeys },
) => {
  defineRoute(app, {
    method: 'POST',
    url: '/api/v1/access-keys',
    auth: 'admin',
    tag: 'tokens',
    summary:
      'Create an AWS-style access key pair for the SageMaker API (the secret is returned once); 409 Conflict when an unrevoked key already has the name (as a ~/.aws/credentials profile name)',
    body: z.strictObject({
      name: keyNameSchema,
      scope: tokenScopeSchema,
      deviceName: deviceNameSchema
        .optional()
        .describe('Bind the key to a device: it may then call only the sagemaker-edge data plane for it'),
    }),
    response: accessKeySchema.extend({
      secretAccessKey: z.string().describe('The secret access key; store it now'),
    }),
    status: 201,
    handler: async ({ body, request }) => {
      const { secretAccessKey, record } = await accessKeys.create(body, operatorActorOf(request));
      return { ...toApi(record), secretAccessKey };
    },
  });

  defineRoute(app, {
    method: 'GET',
    url: '/api/v1/access-keys',
    auth: 'admin',
    tag: 'tokens',
    summary: 'List access keys (never their secrets)',
    query: pageQuerySchema,
    response: z.object({ accessKeys: z.array(accessKeySchema), nextToken: z.string().optional() }),
    handler: async ({ query }) => {
      const after = decodePageToken('access-keys', query.nextToken);
      const rows = await accessKeys.list({
        limit: query.limit + 1,
        ...(after !== undefined ? { after } : {}),
      });
      const page = toPage('access-keys', rows, query.limit, (r) => r.accessKeyId);
      return { accessKeys: page.items.map(toApi), ...(page.nextToken ? { nextToken: page.nextToken } : {}) };
    },
  });

  defineRoute(app, {
    method: 'DELETE',
    url: '/api/v1/access-keys/:accessKeyId',
    auth: 'admin',
    tag: 'tokens',
    summary: 'Revoke an access key',
    params: z.object({
      accessKeyId: z
        .string()
        .regex(
          /^AKEF[A-Z2-7]{16}$/,
          'expected an access key id: AKEF and 16 more of A-Z and 2-7 (20 characters, as edgefleet token list-aws shows them)',
        ),
    }),
    status: 204,
    handler: async ({ params, request }) => {
      if (!(await accessKeys.revoke(params.accessKeyId, operatorActorOf(request)))) {
        throw notFound(`active access key ${params.accessKeyId}`);
      }
      return undefined;
    },
  });
};
