import type { ServerOptions as HttpsServerOptions } from 'node:https';
import swagger from '@fastify/swagger';
import Fastify, {
  LogController,
  type FastifyError,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
} from 'fastify';
import type { Logger } from 'pino';
import { z } from 'zod';
import { installAuth, type Authenticators } from './auth-hooks.js';
import { answerRouterError, ApiError, installErrorHandlers, MAX_PATH_PARAM_LENGTH } from './errors.js';
import { redactRequestUrl } from './log-redaction.js';
import { OutageLog } from './outage-log.js';
import { Readiness, ReadinessCheckTimeoutError, type ReadinessCheck } from './readiness.js';
import { decorateRequestOutcome } from './refusal.js';
import { installRequestDeadlines, type TimedOutRequest } from './request-deadline.js';
import { clientErrorHandler, type ClientErrorStatus } from './client-errors.js';
import { defineRoute, installZodCompilers } from './routes.js';

export type { ReadinessCheck } from './readiness.js';

export interface AppOptions {
  logger: Logger;
  authenticators: Authenticators;
  /**
   * What `/readyz` verifies; a failing check (or shutting down) answers 503. A Readiness shared by a server's
   * listeners lets their probes share one evaluation; a list of checks gets this app's own (default deadline).
   */
  readiness: Readiness | readonly ReadinessCheck[];
  /** True once the server has begun shutting down: readiness fails so balancers drain it. */
  isShuttingDown: () => boolean;
  /** HTTPS options (certificate, key, and for mTLS: ca, requestCert). Absent: plain HTTP. */
  https?: HttpsServerOptions;
  /**
   * How long any request, body included, may take (ms; 0: no deadline); a route may set its own
   * (`requestTimeoutMs`), granted after authentication.
   */
  requestTimeoutMs: number;
  /** The largest request body any route takes unless it sets its own `bodyLimit` (bytes; Fastify's default 1 MiB). */
  bodyLimit?: number;
  /** Where requests failed by an outage are logged (shared by a server's listeners); default: this app's own. */
  outageLog?: OutageLog;
  /** Document the routes at GET /api/docs (OpenAPI 3). */
  openapi?: { title: string; description: string; version: string };
  /**
   * Which build answers, shown by /healthz: a person upgrading replicas sees which ones run which. Operator port
   * only: on the device port anyone could read it.
   */
  build?: { version: string; schema: string };
  /**
   * Hears every answered request (metrics/: requests by route pattern, refusals, heartbeats), the router's own
   * refusals (414, a malformed URL's 400) included.
   */
  observeRequest?: (request: FastifyRequest, reply: FastifyReply) => void;
  /** Hears each request answered 408 by its deadline, which observeRequest never sees (see request-deadline.ts). */
  observeTimeout?: (answered: TimedOutRequest) => void;
  /** Hears each answer Node's `clientError` got (client-errors.ts): its header timeout's 408, a parse error's 400. */
  observeClientError?: (status: ClientErrorStatus) => void;
}

const healthSchema = z.object({
  status: z.literal('ok'),
  version: z.string().optional(),
  schema: z.string().optional(),
});
const readySchema = z.object({ status: z.literal('ready'), checks: z.record(z.string(), z.literal('ok')) });

/**
 * A Fastify instance with our conventions: pino logging, zod validation, consistent error bodies, auth on
 * every route, health and readiness probes, and (optionally) the OpenAPI document. Capabilities add their
 * routes to it before it listens.
 */
export async function buildApp(options: AppOptions): Promise<FastifyInstance> {
  // Fastify's own request logging writes two lines per request; the onResponse hook below writes one.
  const logController = new LogController({ disableRequestLogging: true });
  const bodyLimit = options.bodyLimit === undefined ? {} : { bodyLimit: options.bodyLimit };
  const common = {
    loggerInstance: options.logger,
    logController,
    routerOptions: { maxParamLength: MAX_PATH_PARAM_LENGTH },
    // Errors of the router itself (a path segment too long, bad percent-encoding) get our error body. They skip
    // the onResponse hook, so they are counted here.
    frameworkErrors: (error: FastifyError, request: FastifyRequest, reply: FastifyReply) => {
      answerRouterError(error, request, reply);
      options.observeRequest?.(request, reply);
    },
    clientErrorHandler: clientErrorHandler(options.observeClientError),
    ...bodyLimit,
  };
  const app = (options.https
    ? Fastify({ ...common, https: options.https })
    : Fastify(common)) as unknown as FastifyInstance;

  installZodCompilers(app);
  decorateRequestOutcome(app);
  installErrorHandlers(app, options.outageLog ?? new OutageLog());
  installAuth(app, options.authenticators);
  // No request body is inflated (docs/security.md): a compressed one would reach the parsers as is and fail as
  // "not valid JSON". Said plainly instead, before the body is read.
  app.addHook('onRequest', async (request) => {
    const encoding = request.headers['content-encoding']?.trim();
    if (encoding !== undefined && encoding !== '' && encoding.toLowerCase() !== 'identity')
      throw new ApiError(
        415,
        'UnsupportedMediaType',
        `Content-Encoding ${JSON.stringify(encoding.slice(0, 64))} is not supported: the server inflates no request body; send it uncompressed (no Content-Encoding, or identity)`,
      );
  });
  // After the auth hook: a route's own (longer) deadline is granted only to an authenticated request.
  installRequestDeadlines(app, { defaultMs: options.requestTimeoutMs, onTimeout: options.observeTimeout });
  // One line per request, after the answer: failures at info (server errors at warn, but a 503's: an outage,
  // logged once a minute by OutageLog, or not ready), the rest at debug, so thousands of heartbeats a second, or
  // of devices retrying through an outage, do not flood the log at warn.
  app.addHook('onResponse', async (request, reply) => {
    const status = reply.statusCode;
    const level = status >= 500 && status !== 503 ? 'warn' : status >= 400 ? 'info' : 'debug';
    request.log[level](
      {
        method: request.method,
        url: redactRequestUrl(request.url),
        status,
        ms: Math.round(reply.elapsedTime),
      },
      'request',
    );
    options.observeRequest?.(request, reply);
  });

  if (options.openapi) {
    await app.register(swagger, {
      openapi: {
        openapi: '3.0.3',
        info: options.openapi,
        components: {
          securitySchemes: {
            bearerAuth: { type: 'http', scheme: 'bearer', description: 'Operator API token (efo_…)' },
            consoleSession: {
              type: 'apiKey',
              in: 'cookie',
              name: 'edgefleet_session',
              description: 'Console session cookie (POST /api/v1/console/session sets it)',
            },
          },
        },
      },
    });
  }

  defineRoute(app, {
    method: 'GET',
    url: '/healthz',
    auth: 'public',
    tag: 'health',
    summary: "Liveness: the process is up, and the server's version and schema (last migration)",
    response: healthSchema,
    handler: async () => ({ status: 'ok' as const, ...options.build }),
  });

  // The checks the last probe found failing, so that a failure is logged when it begins, not at every probe.
  // Each failing check's reason as last logged, its numbers left out (a count of seconds or free bytes changes at
  // every probe; the kind of failure does not).
  const failingChecks = new Map<string, string>();
  const readiness =
    options.readiness instanceof Readiness ? options.readiness : new Readiness(options.readiness);
  defineRoute(app, {
    method: 'GET',
    url: '/readyz',
    auth: 'public',
    tag: 'health',
    summary:
      'Readiness: the database and blob store answer and the server is not shutting down (503 NotReady names the failing checks)',
    response: readySchema,
    handler: async ({ request }) => {
      if (options.isShuttingDown()) throw new ApiError(503, 'NotReady', 'the server is shutting down');
      const checks: Record<string, 'ok'> = {};
      const { passed, failed } = await readiness.evaluate();
      // Asked again: the server may have begun to stop (its database given up) while the checks ran.
      if (options.isShuttingDown()) throw new ApiError(503, 'NotReady', 'the server is shutting down');
      for (const name of passed) {
        checks[name] = 'ok';
        if (failingChecks.delete(name))
          request.log.info(
            { event: 'readiness_check_passed', check: name },
            `readiness check ${name} passes again`,
          );
      }
      const failing: string[] = [];
      for (const { name, error } of failed) {
        failing.push(name);
        // The reason stays in the log: it names internal hosts, paths, buckets and driver errors, and the
        // probe is public on both ports. Once per change of state or of reason (unreachable, then
        // credentials refused): a balancer probes every few seconds.
        const reason = error instanceof Error ? error.message : String(error);
        const kind = reason.replace(/\d+/g, '#');
        if (failingChecks.get(name) !== kind)
          request.log.warn(
            {
              event: 'readiness_check_failed',
              check: name,
              reason,
              // The cause's kind and code (its message is the reason); no stack: a probe's failure is not a bug.
              ...(error instanceof Error && {
                cause: { type: error.name, code: (error as { code?: unknown }).code },
              }),
            },
            `readiness check ${name} failed: ${reason} (logged again when it passes or fails for another reason)`,
          );
        failingChecks.set(name, kind);
      }
      if (failing.length > 0) {
        failing.sort();
        // Which checks did not answer in time names no host or path: said in the answer too.
        const timedOut = failed
          .filter(({ error }) => error instanceof ReadinessCheckTimeoutError)
          .map(({ name }) => name)
          .sort();
        throw new ApiError(
          503,
          'NotReady',
          `not ready: ${failing.join(', ')} failing` +
            (timedOut.length > 0 ? ` (${timedOut.join(', ')}: no answer within the check's deadline)` : '') +
            '; the server log has the reasons',
          { failing, ...(timedOut.length > 0 && { timedOut }) },
        );
      }
      return { status: 'ready' as const, checks };
    },
  });

  if (options.openapi) {
    app.route({
      method: 'GET',
      url: '/api/docs',
      config: { auth: 'public' },
      schema: { hide: true },
      handler: async () => app.swagger(),
    });
  }

  return app;
}
