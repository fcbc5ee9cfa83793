import type { FastifyPluginAsync } from 'fastify';
import { operatorActorOf } from '../audit/index.js';
import { z } from 'zod';
import { DomainError, notFound } from '../errors/index.js';
import { decodePageToken, pageQuerySchema, toPage } from '../http/pagination.js';
import { defineRoute } from '../http/routes.js';
import { tokenScopeSchema, type ApiTokenRecord, type ApiTokenStore } from './api-tokens.js';
import { requireOperator } from './operator-auth.js';

const tokenNameSchema = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,99}$/, 'expected 1-100 characters: letters, digits, space . _ @ -');

export const apiTokenSchema = z.object({
  id: z.string(),
  name: z.string(),
  scope: tokenScopeSchema,
  createdAt: z.iso.datetime(),
  revokedAt: z.iso.datetime().optional(),
});

function toApi(record: ApiTokenRecord): z.input<typeof apiTokenSchema> {
  return {
    id: record.id,
    name: record.name,
    scope: record.scope,
    createdAt: new Date(record.createdAt).toISOString(),
    ...(record.revokedAt !== null ? { revokedAt: new Date(record.revokedAt).toISOString() } : {}),
  };
}

export const apiTokenRoutes: FastifyPluginAsync<{ tokens: ApiTokenStore }> = async (app, { tokens }) => {
  defineRoute(app, {
    method: 'POST',
    url: '/api/v1/tokens',
    auth: 'admin',
    tag: 'tokens',
    summary: 'Create an operator API token (the token is returned once, never again)',
    body: z.strictObject({ name: tokenNameSchema, scope: tokenScopeSchema }),
    response: apiTokenSchema.extend({ token: z.string().describe('The bearer token; store it now') }),
    status: 201,
    handler: async ({ body, request }) => {
      const { token, record } = await tokens.create(body, operatorActorOf(request));
      return { ...toApi(record), token };
    },
  });

  defineRoute(app, {
    method: 'GET',
    url: '/api/v1/tokens',
    auth: 'admin',
    tag: 'tokens',
    summary: 'List operator API tokens (never their secrets)',
    query: pageQuerySchema,
    response: z.object({ tokens: z.array(apiTokenSchema), nextToken: z.string().optional() }),
    handler: async ({ query }) => {
      const after = decodePageToken('tokens', query.nextToken);
      const rows = await tokens.list({ limit: query.limit + 1, ...(after !== undefined ? { after } : {}) });
      const page = toPage('tokens', rows, query.limit, (r) => r.id);
      return { tokens: page.items.map(toApi), ...(page.nextToken ? { nextToken: page.nextToken } : {}) };
    },
  });

  defineRoute(app, {
    method: 'DELETE',
    url: '/api/v1/tokens/:id',
    auth: 'admin',
    tag: 'tokens',
    summary: 'Revoke an operator API token',
    params: z.object({ id: z.string().regex(/^[0-9a-f]{16}$/, 'expected a 16-hex-digit token id') }),
    status: 204,
    handler: async ({ params, request }) => {
      if (requireOperator(request).tokenId === params.id) {
        throw new DomainError('Conflict', 'a token cannot revoke itself; use another admin token');
      }
      if (!(await tokens.revoke(params.id, operatorActorOf(request))))
        throw notFound(`active API token ${params.id}`);
      return undefined;
    },
  });

  defineRoute(app, {
    method: 'GET',
    url: '/api/v1/whoami',
    auth: 'read',
    tag: 'tokens',
    summary: 'The token this request was made with',
    response: z.object({ tokenId: z.string(), name: z.string(), scope: tokenScopeSchema }),
    handler: async ({ request }) => requireOperator(request),
  });
};
