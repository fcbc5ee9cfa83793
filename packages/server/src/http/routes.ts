import { hasNoNul, NO_NUL_MESSAGE } from '@edgefleet/core';
import type { FastifyInstance, FastifyReply, FastifyRequest, HTTPMethods } from 'fastify';
import { z } from 'zod';
import { errorBodySchema, RequestValidationError } from './errors.js';

/**
 * Who may call a route. Every route must say; registering one without a requirement the app knows how to
 * check fails at start-up, so no route can exist without auth by accident.
 * - public: health probes and the API description only
 * - read / admin: operator bearer API token of (at least) that scope
 * - scrape: as read, but a token verified lately is still accepted while the database cannot be used (GET
 *   /metrics only, so that it can report the outage)
 * - enrollment-token: `Authorization: Bearer <enrollment token>` (checked and consumed by the handler)
 * - device: a client certificate issued by the device CA, current and not revoked (device API only)
 * - console-session: the console's session cookie, live or ended (sign-out only: an ended one is accepted so that
 *   it can be cleared; a live one's writes need its CSRF token)
 */
export type AuthRequirement =
  'public' | 'read' | 'scrape' | 'admin' | 'enrollment-token' | 'device' | 'console-session';

declare module 'fastify' {
  interface FastifyContextConfig {
    auth?: AuthRequirement;
  }
}

// The validator compiler gets the JSON Schema Fastify was given; this finds the zod schema it came from.
const zodByJsonSchema = new WeakMap<object, z.ZodType>();

/** JSON Schema (OpenAPI 3.0 dialect) for a zod schema, remembered so requests are validated by zod itself. */
export function toJsonSchema(schema: z.ZodType, io: 'input' | 'output' = 'input'): Record<string, unknown> {
  const json = z.toJSONSchema(schema, { target: 'openapi-3.0', io, unrepresentable: 'any' }) as Record<
    string,
    unknown
  >;
  delete json.$schema;
  zodByJsonSchema.set(json, schema);
  return json;
}

/**
 * Where the first NUL (U+0000) is in a request part: in a string value or a key, at any depth. PostgreSQL
 * cannot store NUL in text (SQLite can), so no field of any route may carry one.
 */
export function pathToNul(value: unknown, at: PropertyKey[] = [], depth = 0): PropertyKey[] | undefined {
  if (typeof value === 'string') return hasNoNul(value) ? undefined : at;
  if (typeof value !== 'object' || value === null || depth > 64) return undefined;
  for (const [key, inner] of Object.entries(value)) {
    if (!hasNoNul(key)) return [...at, key];
    const found = pathToNul(inner, [...at, Array.isArray(value) ? Number(key) : key], depth + 1);
    if (found !== undefined) return found;
  }
  return undefined;
}

/**
 * Validation by zod (the schemas are the single source of truth), after one rule every route shares: no NUL
 * character anywhere (so the two database engines accept the same input). Serialisation by JSON.stringify.
 */
export function installZodCompilers(app: FastifyInstance): void {
  app.setValidatorCompiler(({ schema, httpPart }) => {
    const zodSchema = zodByJsonSchema.get(schema);
    if (zodSchema === undefined) {
      throw new Error(`route schema for ${httpPart ?? 'input'} was not built with toJsonSchema()`);
    }
    return (data: unknown) => {
      const nulAt = pathToNul(data);
      if (nulAt !== undefined) {
        const issue = { code: 'custom', path: nulAt, message: NO_NUL_MESSAGE, input: undefined } as const;
        return { error: new RequestValidationError(httpPart ?? 'input', [issue]) };
      }
      const result = zodSchema.safeParse(data);
      return result.success
        ? { value: result.data }
        : { error: new RequestValidationError(httpPart ?? 'input', result.error.issues, data) };
    };
  });
  app.setSerializerCompiler(() => (data) => JSON.stringify(data));
}

export interface RouteContext<Body, Query, Params> {
  body: Body;
  query: Query;
  params: Params;
  request: FastifyRequest;
  reply: FastifyReply;
}

export interface RouteDefinition<
  Body extends z.ZodType,
  Query extends z.ZodType,
  Params extends z.ZodType,
  Response extends z.ZodType,
> {
  method: Extract<HTTPMethods, 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE'>;
  url: string;
  auth: AuthRequirement;
  /** OpenAPI grouping. */
  tag: string;
  summary: string;
  description?: string;
  body?: Body;
  query?: Query;
  params?: Params;
  /** The success body; omit for 204. */
  response?: Response;
  status?: 200 | 201 | 202 | 204;
  /** Largest accepted request body in bytes (Fastify's default: 1 MiB). */
  bodyLimit?: number;
  /** The route's own deadline for the whole request (uploads), instead of the app's (http/request-deadline.ts). */
  requestTimeoutMs?: number;
  /** Content types the route consumes when it is not JSON (uploads); documented, parsed by the app. */
  consumes?: string[];
  /** The success body is a file of this content type (the handler returns a stream), not JSON. */
  binaryResponse?: string;
  /** The success body is text of this content type (the handler returns a string and sets the type), not JSON. */
  textResponse?: { contentType: string; description: string };
  handler(
    context: RouteContext<z.output<Body>, z.output<Query>, z.output<Params>>,
  ): Promise<Response extends z.ZodType ? z.input<Response> : undefined>;
}

const ERROR_STATUSES = [400, 401, 403, 404, 409, 413, 415, 429] as const;

/** Registers one route whose inputs are validated by zod and whose schemas drive the OpenAPI document. */
export function defineRoute<
  Body extends z.ZodType = z.ZodUnknown,
  Query extends z.ZodType = z.ZodUnknown,
  Params extends z.ZodType = z.ZodUnknown,
  Response extends z.ZodType = z.ZodUnknown,
>(app: FastifyInstance, definition: RouteDefinition<Body, Query, Params, Response>): void {
  const status = definition.status ?? 200;
  const response: Record<string, unknown> = {};
  if (definition.binaryResponse !== undefined) {
    response[status] = {
      description: 'The file',
      content: { [definition.binaryResponse]: { schema: { type: 'string', format: 'binary' } } },
    };
  } else if (definition.textResponse !== undefined) {
    response[status] = {
      description: definition.textResponse.description,
      content: { [definition.textResponse.contentType]: { schema: { type: 'string' } } },
    };
  } else if (definition.response !== undefined) {
    response[status] = toJsonSchema(definition.response, 'output');
  } else {
    response[status] = { type: 'null', description: 'No content' };
  }
  const errorJson = toJsonSchema(errorBodySchema, 'output');
  for (const code of ERROR_STATUSES) response[code] = errorJson;
  // Its own deadline: a body not in by then is answered 408 (http/request-deadline.ts).
  if (definition.requestTimeoutMs !== undefined) response[408] = errorJson;

  app.route({
    method: definition.method,
    url: definition.url,
    config: {
      auth: definition.auth,
      ...(definition.requestTimeoutMs !== undefined ? { requestTimeoutMs: definition.requestTimeoutMs } : {}),
    },
    ...(definition.bodyLimit !== undefined ? { bodyLimit: definition.bodyLimit } : {}),
    schema: {
      tags: [definition.tag],
      summary: definition.summary,
      ...(definition.description !== undefined ? { description: definition.description } : {}),
      ...(definition.body !== undefined ? { body: toJsonSchema(definition.body) } : {}),
      ...(definition.query !== undefined ? { querystring: toJsonSchema(definition.query) } : {}),
      ...(definition.params !== undefined ? { params: toJsonSchema(definition.params) } : {}),
      ...(definition.consumes !== undefined ? { consumes: definition.consumes } : {}),
      ...(definition.auth === 'read' ||
      definition.auth === 'scrape' ||
      definition.auth === 'admin' ||
      definition.auth === 'enrollment-token'
        ? { security: [{ bearerAuth: [] }] }
        : definition.auth === 'console-session'
          ? { security: [{ consoleSession: [] }] }
          : {}),
      response,
    },
    handler: async (request, reply) => {
      const result = await definition.handler({
        body: request.body as z.output<Body>,
        query: request.query as z.output<Query>,
        params: request.params as z.output<Params>,
        request,
        reply,
      });
      // A handler may answer with another success or error code of its own (206 Partial Content, 416).
      if (reply.statusCode === 200) reply.status(status);
      return status === 204 ? reply.send() : result;
    },
  });
}
