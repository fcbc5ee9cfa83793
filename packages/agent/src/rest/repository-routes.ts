import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import type { ModelRegistry } from '../models/index.js';
import { describeIssues } from './infer-request.js';
import type { RequestBody } from './request-body.js';
import { RestError } from './rest-errors.js';
import type { PeerOf } from './shared-memory-routes.js';

type NameParams = { name: string };

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** A small JSON request body (repository calls), validated; undefined when the body is empty. */
function parseJsonBody<T>(body: RequestBody | undefined, schema: z.ZodType<T>, form: string): T | undefined {
  if (!body || body.length === 0) return undefined;
  let value: unknown;
  try {
    value = JSON.parse(utf8.decode(body.view(0, body.length)));
  } catch (error) {
    const reason = error instanceof SyntaxError ? `not valid JSON (${error.message})` : 'not valid UTF-8';
    throw new RestError(400, `the request body is ${reason}; expected ${form}`);
  }
  const parsed = schema.safeParse(value);
  if (!parsed.success)
    throw new RestError(
      400,
      `the request body is malformed: ${describeIssues(parsed.error)}; expected ${form}`,
    );
  return parsed.data;
}

const LoadBodySchema = z.object({
  parameters: z.strictObject({ url: z.string().min(1).max(4096) }),
});
const LOAD_FORM = '{"parameters": {"url": "<model package folder>"}}';
const IndexBodySchema = z.object({ ready: z.boolean().optional() });
const INDEX_FORM = '{"ready"?: true|false} or no body';

/**
 * The model repository extension. The agent has no repository folder: load takes the package folder in
 * `parameters.url` (our extension of the protocol), the index lists the loaded models.
 */
export function registerRepositoryRoutes(
  app: FastifyInstance,
  registry: ModelRegistry,
  peerOf: PeerOf,
): void {
  app.post('/v2/repository/index', async (request) => {
    parseJsonBody(request.body as RequestBody | undefined, IndexBodySchema, INDEX_FORM);
    // Only loaded models exist for the agent (packages live wherever load is pointed), so all are READY.
    return registry.list().map((model) => ({ name: model.name, version: model.version, state: 'READY' }));
  });

  app.post<{ Params: NameParams }>('/v2/repository/models/:name/load', async (request, reply) => {
    const body = parseJsonBody(request.body as RequestBody | undefined, LoadBodySchema, LOAD_FORM);
    if (!body) throw new RestError(400, `loading needs the package folder; expected the body ${LOAD_FORM}`);
    // The caller's credentials on the Unix socket, where known: the agent loads for it only what it could read.
    const caller = peerOf(request.raw.socket);
    await registry.load({ name: request.params.name, url: body.parameters.url, caller });
    return reply.code(200).send();
  });

  app.post<{ Params: NameParams }>('/v2/repository/models/:name/unload', async (request, reply) => {
    await registry.unload(request.params.name);
    return reply.code(200).send();
  });
}
