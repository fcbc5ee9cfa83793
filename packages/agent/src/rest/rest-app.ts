import { readFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse, Server } from 'node:http';
import Fastify, { LogController, type FastifyInstance, type FastifyReply } from 'fastify';
import type { Logger } from 'pino';
import { z } from 'zod';
import type { AgentMetrics } from '../metrics/index.js';
import { AgentError, type ModelDescription, type ModelRegistry } from '../models/index.js';
import { decodeInferRequest, describeIssues, INFERENCE_HEADER_CONTENT_LENGTH } from './infer-request.js';
import { checkRequestedOutputs, encodeInferResponse, type EncodedInferResponse } from './infer-response.js';
import { kserveDatatype } from './kserve-datatypes.js';
import { readRequestBody, type RequestBody } from './request-body.js';
import { restRequestCounter } from './rest-metrics.js';
import { errorBody, httpFailureOf, RestError } from './rest-errors.js';

/** What GET /v2 reports. */
export const REST_SERVER_NAME = 'edgefleet-agent';
export const REST_EXTENSIONS = ['binary_tensor_data', 'model_repository'] as const;
/** Reported as each model's platform, as Triton names ONNX Runtime models. */
export const REST_MODEL_PLATFORM = 'onnxruntime_onnx';
export const DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024;

export interface RestAppOptions {
  registry: ModelRegistry;
  metrics: AgentMetrics;
  logger: Logger;
  /** Largest request body accepted; larger ones get 413. Default 64 MiB. */
  maxBodyBytes?: number;
  /** Whether the agent serves inference (GET /v2/health/ready); default: always once listening. */
  ready?: () => boolean;
  /** The version GET /v2 reports; default: the agent package's version. */
  version?: string;
}

type RequestHandler = (req: IncomingMessage, res: ServerResponse) => void;

/** Internal: lets startRestServer build the HTTP servers around Fastify's request handler. */
export interface RestAppHooks {
  serverFactory?: (handler: RequestHandler) => Server;
  /** True once the server is shutting down: readiness fails. */
  closing?: () => boolean;
}

const JSON_TYPE = 'application/json';
/** Longest path parameter (model name or version) routed; the registry allows names of up to 256 characters. */
const MAX_PARAM_LENGTH = 1024;

/** A URL for messages: long ones cut, so an error never echoes a huge path back. */
function shortUrl(url: string): string {
  return url.length > 200 ? `${url.slice(0, 200)}…` : url;
}

function agentVersion(): string {
  try {
    const raw = readFileSync(new URL('../../package.json', import.meta.url), 'utf8');
    return z.object({ version: z.string() }).parse(JSON.parse(raw)).version;
  } catch {
    return '0.0.0';
  }
}

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

/** The model, checked to be at the version asked for (when the path names one). */
function describeAt(registry: ModelRegistry, name: string, version: string | undefined): ModelDescription {
  const model = registry.describe(name);
  if (version !== undefined && version !== model.version) {
    throw new AgentError(
      'NOT_FOUND',
      `model ${JSON.stringify(name)} is loaded at version ${JSON.stringify(model.version)}, not ${JSON.stringify(version)}; expected that version, or no version in the path`,
    );
  }
  return model;
}

function modelMetadata(model: ModelDescription) {
  const tensor = (t: ModelDescription['inputs'][number]) => ({
    name: t.name,
    datatype: kserveDatatype(t.dataType),
    shape: t.shape,
  });
  return {
    name: model.name,
    versions: [model.version],
    platform: REST_MODEL_PLATFORM,
    inputs: model.inputs.map(tensor),
    outputs: model.outputs.map(tensor),
  };
}

/** Writes JSON and binary parts straight to the socket, corked: no concatenation of the output bytes. */
function sendBinaryResponse(reply: FastifyReply, response: EncodedInferResponse): void {
  const json = Buffer.from(response.json, 'utf8');
  let length = json.length;
  for (const part of response.binary) length += part.byteLength;
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, {
    'content-type': 'application/octet-stream',
    'content-length': length,
    'inference-header-content-length': json.length,
  });
  res.cork();
  res.write(json);
  for (const part of response.binary) res.write(part);
  res.end();
  res.uncork();
}

type NameParams = { name: string; version?: string };

/**
 * The KServe v2 (Open Inference Protocol) REST API over a ModelRegistry, as a Fastify instance that is not
 * listening: health, server and model metadata, inference (JSON and the binary tensor data extension), the
 * model repository extension, and the agent's Prometheus metrics. Test it with `app.inject`, or let
 * startRestServer serve it.
 */
export function buildRestApp(options: RestAppOptions, hooks: RestAppHooks = {}): FastifyInstance {
  const { registry, metrics, logger } = options;
  const maxBodyBytes = options.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  const version = options.version ?? agentVersion();
  const isReady = options.ready ?? (() => true);
  const closing = hooks.closing ?? (() => false);

  const app = Fastify({
    loggerInstance: logger,
    // One log line per request would cost more than the fast path itself; failures are logged below.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: maxBodyBytes,
    routerOptions: { maxParamLength: MAX_PARAM_LENGTH, ignoreTrailingSlash: true },
    ...(hooks.serverFactory ? { serverFactory: hooks.serverFactory } : {}),
    // The router's own client errors answer in the protocol's error form (without echoing a huge path).
    frameworkErrors: (error, request, reply) => {
      const message =
        error.code === 'FST_ERR_MAX_PARAM_LENGTH'
          ? `a segment of the path ${shortUrl(request.url)} is longer than ${MAX_PARAM_LENGTH} characters; expected model names and versions of at most ${MAX_PARAM_LENGTH}`
          : error.code === 'FST_ERR_BAD_URL'
            ? `the path ${shortUrl(request.url)} is not a valid URL (bad percent-encoding); expected a valid URL path`
            : error.message;
      void (reply as FastifyReply).code(400).type(JSON_TYPE).send(errorBody(message));
    },
    // pino's Logger and Fastify's logger generics differ only in type detail; the instance is an ordinary one.
  }) as unknown as FastifyInstance;

  // Every body arrives as raw chunks, whatever its Content-Type: JSON and binary tensor bodies are parsed by
  // the routes themselves, so Fastify never JSON.parses (or copies) them.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (request, payload, done) => {
    readRequestBody(payload, request.headers['content-length'], maxBodyBytes, done);
  });

  const requests = restRequestCounter(metrics.registry);
  // onResponse runs on the response's 'finish', hijacked binary responses included.
  app.addHook('onResponse', (request, reply, done) => {
    requests.inc({
      method: request.method,
      route: request.routeOptions.url ?? '(none)',
      status: String(reply.statusCode),
    });
    done();
  });

  app.setErrorHandler((error, request, reply) => {
    const failure = httpFailureOf(error);
    if ((error as { code?: unknown }).code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') {
      // Fastify refuses a Content-Type header it cannot parse before any route sees the request.
      const given = String(request.headers['content-type']).slice(0, 100);
      failure.message = `the Content-Type header ${JSON.stringify(given)} is not a valid media type; expected for example application/json or application/octet-stream (the API reads bodies whatever their type), or no Content-Type`;
    }
    if (failure.internal) request.log.error({ err: error, url: request.url }, failure.message);
    else request.log.debug({ url: request.url, status: failure.statusCode }, failure.message);
    void reply
      .code(failure.statusCode)
      .headers(failure.headers)
      .type(JSON_TYPE)
      .send(errorBody(failure.message));
  });

  app.setNotFoundHandler((request, reply) => {
    const url = shortUrl(request.url);
    void reply
      .code(404)
      .type(JSON_TYPE)
      .send(
        errorBody(
          `no endpoint ${request.method} ${url}; this agent serves the KServe v2 REST API under /v2 (health, models, repository) and /metrics`,
        ),
      );
  });

  // --- health and server metadata ----------------------------------------------------------------------------

  app.get('/v2/health/live', async (_request, reply) => reply.type(JSON_TYPE).send('{"live":true}'));

  app.get('/v2/health/ready', async (_request, reply) => {
    if (closing()) throw new RestError(400, 'the agent is shutting down; it takes no new inference requests');
    if (!isReady()) throw new RestError(400, 'the agent is not ready for inference yet');
    return reply.type(JSON_TYPE).send('{"ready":true}');
  });

  const serverMetadata = JSON.stringify({ name: REST_SERVER_NAME, version, extensions: REST_EXTENSIONS });
  app.get('/v2', async (_request, reply) => reply.type(JSON_TYPE).send(serverMetadata));

  // --- models ------------------------------------------------------------------------------------------------

  for (const base of ['/v2/models/:name', '/v2/models/:name/versions/:version']) {
    app.get<{ Params: NameParams }>(base, async (request) =>
      modelMetadata(describeAt(registry, request.params.name, request.params.version)),
    );

    app.get<{ Params: NameParams }>(`${base}/ready`, async (request) => {
      const model = describeAt(registry, request.params.name, request.params.version);
      return { name: model.name, ready: true };
    });

    app.post<{ Params: NameParams }>(`${base}/infer`, async (request, reply) => {
      const { name, version } = request.params;
      const model = describeAt(registry, name, version);
      const decoded = decodeInferRequest(
        request.body as RequestBody | undefined,
        request.headers[INFERENCE_HEADER_CONTENT_LENGTH],
      );
      checkRequestedOutputs(model, decoded.outputs);
      // The inputs were built for this request alone: hand them to the worker without a copy.
      const result = await registry.predict(name, decoded.inputs, { transferInputs: true });
      const response = encodeInferResponse(result, decoded.id, decoded.outputs, decoded.binaryOutputs);
      if (response.binary.length === 0) return reply.type(JSON_TYPE).send(response.json);
      sendBinaryResponse(reply, response);
      return reply;
    });
  }

  // --- model repository extension ----------------------------------------------------------------------------

  app.post('/v2/repository/index', async (request) => {
    parseJsonBody(request.body as RequestBody | undefined, IndexBodySchema, INDEX_FORM);
    // Only loaded models exist for the agent (packages live wherever load is pointed), so all are READY.
    return registry.list().map((model) => ({ name: model.name, version: model.version, state: 'READY' }));
  });

  app.post<{ Params: NameParams }>('/v2/repository/models/:name/load', async (request, reply) => {
    const body = parseJsonBody(request.body as RequestBody | undefined, LoadBodySchema, LOAD_FORM);
    if (!body) throw new RestError(400, `loading needs the package folder; expected the body ${LOAD_FORM}`);
    await registry.load({ name: request.params.name, url: body.parameters.url });
    return reply.code(200).send();
  });

  app.post<{ Params: NameParams }>('/v2/repository/models/:name/unload', async (request, reply) => {
    await registry.unload(request.params.name);
    return reply.code(200).send();
  });

  // --- Prometheus ----------------------------------------------------------------------------------------------

  app.get('/metrics', async (_request, reply) => {
    const { contentType, body } = await metrics.text();
    return reply.type(contentType).send(body);
  });

  return app;
}
