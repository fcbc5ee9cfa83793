import { readFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse, Server } from 'node:http';
import type { Socket } from 'node:net';
import Fastify, { LogController, type FastifyInstance, type FastifyReply } from 'fastify';
import type { Logger } from 'pino';
import { z } from 'zod';
import type { AgentMetrics } from '../metrics/index.js';
import type { ModelRegistry } from '../models/index.js';
import { registerModelRoutes } from './model-routes.js';
import { registerRepositoryRoutes } from './repository-routes.js';
import { registerAgentStatusRoute } from './agent-status-route.js';
import type { SharedMemoryReader } from '../shm/index.js';
import { registerSharedMemoryRoutes, SharedMemoryRegions, type PeerOf } from './shared-memory-routes.js';
import { BodyAdmission } from './body-admission.js';
import {
  BodyBudget,
  ResponseBudget,
  defaultBodyBudgetBytes,
  defaultResponseBudgetBytes,
  slowReaderLog,
} from '../body-budget/index.js';
import { UnreadResponses } from './unread-responses.js';
import { InferDoor } from './infer-door.js';
import { ModelInference } from './model-inference.js';
import { restRequestCounter } from './rest-metrics.js';
import { errorBody, httpFailureOf, JSON_TYPE, RestError } from './rest-errors.js';

export { LARGE_JSON_BODY_BYTES } from './body-admission.js';

/** What GET /v2 reports. */
export const REST_SERVER_NAME = 'edgefleet-agent';
export const REST_EXTENSIONS = ['binary_tensor_data', 'model_repository'] as const;
export const DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024;
/**
 * JSON bodies cost several times their size in memory while decoded (a string, then JS arrays of numbers before
 * the typed arrays; then the answer as text), so they get a lower limit than binary ones (measurements:
 * docs/rest-api.md#limits).
 */
export const DEFAULT_MAX_JSON_BODY_BYTES = 8 * 1024 * 1024;
/** Large JSON bodies (see LARGE_JSON_BODY_BYTES) read and parsed at once; more get 429. */
export const DEFAULT_MAX_CONCURRENT_JSON_BODIES = 2;

export interface RestAppOptions {
  registry: ModelRegistry;
  metrics: AgentMetrics;
  logger: Logger;
  /** Largest body with binary tensor data accepted; larger ones get 413. Default 64 MiB. */
  maxBodyBytes?: number;
  /** Largest JSON body, and largest JSON part of a binary body; larger ones get 413. Default 8 MiB. */
  maxJsonBodyBytes?: number;
  /** Large JSON bodies being read and parsed at once; more get 429. Default 2. */
  maxConcurrentJsonBodies?: number;
  /**
   * Bytes of request bodies in flight (shared with the gRPC door in the agent); bodies that would pass it get
   * 429. Default: its own, of defaultBodyBudgetBytes(maxBodyBytes).
   */
  bodyBudget?: BodyBudget;
  /**
   * Bytes of responses waiting for clients that do not read them (shared with the gRPC door in the agent); past
   * it, the connection whose answers have waited longest is closed. Default: its own, of
   * defaultResponseBudgetBytes(maxBodyBytes), which logs what it closes. Counted on the servers only (app.inject
   * has no connection).
   */
  responseBudget?: ResponseBudget;
  /**
   * Why the agent does not serve inference yet (GET /v2/health/ready answers 400 with it), or undefined when it
   * does; default: it always does once listening.
   */
  notReadyBecause?: () => string | undefined;
  /** The version GET /v2 reports; default: the agent package's version. */
  version?: string;
  /** System V shared memory for the system shared memory extension; null or absent: the extension is off. */
  sharedMemory?: SharedMemoryReader | null;
  /** What GET /edgefleet/v1/status adds to the models it lists (e.g. the update engine's state). */
  agentStatus?: () => Record<string, unknown>;
  /**
   * Serve the management routes (MANAGEMENT_ROUTE_PREFIXES: the model repository, the agent status) on TCP too
   * (`edgefleet_rest_tcp_management`). Default false: they answer 403 there, because TCP, loopback included,
   * tells nothing of who is calling, while the Unix socket's group is the permission.
   */
  tcpManagement?: boolean;
}

/**
 * The routes that change or reveal what the agent runs: by default only on the Unix socket (see
 * RestAppOptions.tcpManagement). Matched on the route (not the raw URL), so percent-encoding cannot slip past.
 */
export const MANAGEMENT_ROUTE_PREFIXES = ['/v2/repository/', '/edgefleet/v1/status'] as const;

/** Whether a route (its pattern, e.g. /v2/repository/models/:name/load) is a management route. */
export function isManagementRoute(route: string | undefined): boolean {
  return route !== undefined && MANAGEMENT_ROUTE_PREFIXES.some((prefix) => route.startsWith(prefix));
}

type RequestHandler = (req: IncomingMessage, res: ServerResponse) => void;

/** Internal: lets startRestServer build the HTTP servers around Fastify's request handler. */
export interface RestAppHooks {
  serverFactory?: (handler: RequestHandler) => Server;
  /** True once the server is shutting down: readiness fails. */
  closing?: () => boolean;
  /** The credentials of a request's connection on the Unix socket (SO_PEERCRED); default: none known. */
  peerOf?: PeerOf;
  /** Whether a request's connection came in on the TCP listener; default: none did (app.inject). */
  isTcp?: (socket: Socket) => boolean;
}

/** Longest path parameter (model name or version) routed; the registry allows names of up to 255 characters (core's MAX_MODEL_NAME_LENGTH). */
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

/**
 * The KServe v2 (Open Inference Protocol) REST API over a ModelRegistry, as a Fastify instance that is not
 * listening: health and server metadata (here), model metadata and inference with JSON and the binary tensor
 * data extension (model-routes), the model repository extension (repository-routes), and the agent's
 * Prometheus metrics. All bodies reach the routes raw; errors answer in the protocol's form. Test it with `app.inject`, or let
 * startRestServer serve it.
 */
export function buildRestApp(options: RestAppOptions, hooks: RestAppHooks = {}): FastifyInstance {
  const { registry, metrics, logger } = options;
  const maxBodyBytes = options.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  const maxJsonBodyBytes = Math.min(maxBodyBytes, options.maxJsonBodyBytes ?? DEFAULT_MAX_JSON_BODY_BYTES);
  const maxConcurrentJsonBodies = options.maxConcurrentJsonBodies ?? DEFAULT_MAX_CONCURRENT_JSON_BODIES;
  const version = options.version ?? agentVersion();
  const notReadyBecause = options.notReadyBecause ?? (() => undefined);
  const closing = hooks.closing ?? (() => false);

  const budget = options.bodyBudget ?? new BodyBudget(defaultBodyBudgetBytes(maxBodyBytes));
  const admission = new BodyAdmission({ maxBodyBytes, maxJsonBodyBytes, maxConcurrentJsonBodies, budget });
  const requests = restRequestCounter(metrics.registry);
  const regions = new SharedMemoryRegions(options.sharedMemory ?? null);
  const peerOf: PeerOf = hooks.peerOf ?? (() => null);
  const inference = new ModelInference(registry, regions, peerOf);
  // Inference requests take a lean door in front of Fastify on the servers (not app.inject, which reaches
  // Fastify's own inference route): the framework's routing, hooks and reply cost more than a small model's run.
  const inferDoor = new InferDoor({ inference, admission, requests, logger });
  const serverFactory = hooks.serverFactory;
  const responseLimitBytes = defaultResponseBudgetBytes(maxBodyBytes);
  const responseBudget =
    options.responseBudget ??
    new ResponseBudget(responseLimitBytes, { onSlowReaderClosed: slowReaderLog(logger, responseLimitBytes) });

  const unreadResponses = new UnreadResponses(responseBudget);
  const app = Fastify({
    loggerInstance: logger,
    // One log line per request would cost more than the fast path itself; failures are logged below.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: maxBodyBytes,
    routerOptions: { maxParamLength: MAX_PARAM_LENGTH, ignoreTrailingSlash: true },
    ...(serverFactory && {
      serverFactory: (handler: RequestHandler) =>
        serverFactory((req, res) => {
          unreadResponses.count(res);
          if (!inferDoor.serve(req, res)) handler(req, res);
        }),
    }),
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

  // Management routes on TCP are refused first, before their bodies are read or admitted.
  if (!(options.tcpManagement ?? false)) {
    const isTcp = hooks.isTcp ?? (() => false);
    app.addHook('onRequest', (request, _reply, done) => {
      if (!isTcp(request.raw.socket) || !isManagementRoute(request.routeOptions.url)) return done();
      done(
        new RestError(
          403,
          `${request.method} ${shortUrl(request.url)} is served only on the agent's Unix socket (edgefleet_rest_socket_path), whose group decides who may manage models: TCP tells nothing of who is calling. Use the Unix socket (e.g. curl --unix-socket <socket>), or set edgefleet_rest_tcp_management to true to serve it on TCP to everyone who can reach the port`,
        ),
      );
    });
  }
  // Every body arrives as raw chunks, whatever its Content-Type: JSON and binary tensor bodies are parsed by
  // the routes themselves, so Fastify never JSON.parses (or copies) them.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (request, payload, done) => admission.read(payload, request.headers, done));
  // Large JSON bodies are parsed one or two at a time, large bodies within the budget (see BodyAdmission.admit).
  app.addHook('onRequest', (request, reply, done) => done(admission.admit(request.raw, reply.raw)));

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
    const reason = notReadyBecause();
    if (reason !== undefined) throw new RestError(400, `the agent is not ready for inference yet: ${reason}`);
    return reply.type(JSON_TYPE).send('{"ready":true}');
  });

  const extensions = [...REST_EXTENSIONS, ...(regions.available ? ['system_shared_memory'] : [])];
  const serverMetadata = JSON.stringify({ name: REST_SERVER_NAME, version, extensions });
  // TCP lists only what it serves (a client that reads the list must not be sent to routes TCP refuses): shared
  // memory never, the repository only with edgefleet_rest_tcp_management.
  const tcpExtensions = extensions.filter(
    (e) => e === 'binary_tensor_data' || (e === 'model_repository' && (options.tcpManagement ?? false)),
  );
  const tcpServerMetadata = JSON.stringify({ name: REST_SERVER_NAME, version, extensions: tcpExtensions });
  const onTcp = hooks.isTcp ?? (() => false);
  app.get('/v2', async (request, reply) =>
    reply.type(JSON_TYPE).send(onTcp(request.raw.socket) ? tcpServerMetadata : serverMetadata),
  );

  registerModelRoutes(app, registry, inference, admission);
  registerSharedMemoryRoutes(app, regions, peerOf);
  registerRepositoryRoutes(app, registry, peerOf);

  // --- EdgeFleet's own: what the device runs and what it is doing (`edgefleet agent status`) -----------------

  registerAgentStatusRoute(app, {
    registry,
    version,
    peerOf,
    ...(options.agentStatus && { agentStatus: options.agentStatus }),
  });

  // --- Prometheus ----------------------------------------------------------------------------------------------

  app.get('/metrics', async (_request, reply) => {
    const { contentType, body } = await metrics.text();
    return reply.type(contentType).send(body);
  });

  return app;
}
