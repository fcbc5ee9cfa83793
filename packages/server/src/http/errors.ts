import type { ErrorBody } from '@edgefleet/core';
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { z } from 'zod';
import { dependencyUnavailableOf, DomainError, type DomainErrorCode } from '../errors/index.js';
import { redactRequestUrl } from './log-redaction.js';
import type { OutageLog } from './outage-log.js';
import { retryAfterSecondsOf } from './retry-after.js';

// The body of every error answer, on every route: part of the device contract, so defined in core.
export { errorBodySchema, type ErrorBody } from '@edgefleet/core';

/** Every code an answer may carry: the domain's, plus those only the HTTP layer raises. */
export type ErrorCode =
  DomainErrorCode | 'UnsupportedMediaType' | 'UriTooLong' | 'NotReady' | 'InternalError';

/** The HTTP status of each domain error: the one place the domain meets HTTP. */
const STATUS_BY_DOMAIN_CODE: Record<DomainErrorCode, number> = {
  ValidationError: 400,
  Unauthenticated: 401,
  CertificateRequired: 401,
  CertificateInvalid: 401,
  CertificateExpired: 401,
  CertificateRevoked: 401,
  EnrollmentTokenInvalid: 401,
  EnrollmentTokenExpired: 401,
  EnrollmentTokenUsed: 401,
  Forbidden: 403,
  NotFound: 404,
  Conflict: 409,
  ResourceInUse: 409,
  PayloadTooLarge: 413,
  LimitExceeded: 429,
  DependencyUnavailable: 503,
  RequestTimeout: 408,
};

/** An error that becomes an HTTP answer with the consistent body. Thrown by handlers and hooks. */
export class ApiError extends Error {
  constructor(
    readonly statusCode: number,
    readonly code: ErrorCode,
    message: string,
    readonly details?: Record<string, unknown>,
  ) {
    super(message);
    this.name = 'ApiError';
  }

  toBody(): ErrorBody {
    return this.details === undefined
      ? { code: this.code, message: this.message }
      : { code: this.code, message: this.message, details: this.details };
  }
}

/** The answer a domain error becomes. */
export function fromDomainError(error: DomainError): ApiError {
  return new ApiError(STATUS_BY_DOMAIN_CODE[error.code], error.code, error.message, error.details);
}

/** Raised by the zod validator compiler; carries zod's issues. */
export class RequestValidationError extends Error {
  readonly statusCode = 400;
  constructor(
    readonly part: string,
    readonly issues: readonly z.core.$ZodIssue[],
    /** The request part as sent: an entry of a list is then named by its value, not only by its index. */
    input?: unknown,
  ) {
    super(`invalid request ${part}: ${describeIssues(issues, input).join('; ')}`);
    this.name = 'RequestValidationError';
  }
}

/**
 * Issues alike (same message, same path but for one list index, no value of their own to quote) beyond this
 * many are told once, with a count. Those an entry's value names (`"bad_name" (devices.1.name)`) differ by it,
 * and stay one by one.
 */
const ALIKE_SHOWN_ONE_BY_ONE = 10;

/**
 * One phrase per issue, except that issues alike are told once: a 100-device body whose every entry carries an
 * unknown key gets `devices[0..99].tags: Unrecognized key: "tags" (100 entries)`, not the same phrase 100 times.
 */
function describeIssues(issues: readonly z.core.$ZodIssue[], input: unknown): string[] {
  const groups = new Map<string, { issues: z.core.$ZodIssue[]; at: number }>();
  for (const [n, issue] of issues.entries()) {
    const quoted = describeIssuePath(issue.path, input) !== issue.path.map(String).join('.');
    // A quoted one groups alone (its own key), keeping its place among the others.
    const at = quoted ? -1 : issue.path.findIndex((key) => typeof key === 'number');
    const pattern = issue.path.map((key, i) => (i === at ? '*' : String(key))).join('.');
    const key = at < 0 ? `#${n}` : `${pattern}\u0000${issue.message}`;
    const group = groups.get(key) ?? { issues: [], at };
    group.issues.push(issue);
    groups.set(key, group);
  }
  const one = (i: z.core.$ZodIssue) =>
    `${i.path.length > 0 ? describeIssuePath(i.path, input) : '(root)'}: ${i.message}`;
  return [...groups.values()].flatMap(({ issues: alike, at }) => {
    if (at < 0 || alike.length <= ALIKE_SHOWN_ONE_BY_ONE) return alike.map(one);
    const first = alike[0]!;
    const indexes = alike.map((i) => i.path[at] as number);
    const before = first.path.slice(0, at).map(String).join('.');
    const after = first.path
      .slice(at + 1)
      .map((key) => `.${String(key)}`)
      .join('');
    return [
      `${before}[${Math.min(...indexes)}..${Math.max(...indexes)}]${after}: ${first.message} (${alike.length} entries)`,
    ];
  });
}

/** Longest value an error message quotes; longer ones are named by their path only. */
const MAX_QUOTED_VALUE = 100;

/**
 * Characters a quoted value must not carry: JSON leaves C1 controls (U+009B is a CSI on some terminals), format
 * characters (bidi overrides such as U+202E) and U+2028/U+2029 as they are, and the CLI prints these messages to
 * terminals.
 */
const UNQUOTABLE = /[\p{Cc}\p{Cf}\u2028\u2029]/u;

/**
 * An issue's path, led by the offending value when the path goes through a list (`"bad_name" (devices.1.name)`):
 * among 60 pasted device names, an index alone makes the operator count. Only short strings free of control and
 * format characters are quoted (as JSON); other values are named by their path alone.
 */
function describeIssuePath(path: readonly PropertyKey[], input: unknown): string {
  const joined = path.map(String).join('.');
  if (!path.some((key) => typeof key === 'number')) return joined;
  let value = input;
  for (const key of path) {
    if (value === null || typeof value !== 'object') return joined;
    value = (value as Record<PropertyKey, unknown>)[key];
  }
  return typeof value === 'string' && value.length <= MAX_QUOTED_VALUE && !UNQUOTABLE.test(value)
    ? `${JSON.stringify(value)} (${joined})`
    : joined;
}

/**
 * The longest path segment the router matches (Fastify's maxParamLength): far above every name (63) and version
 * (64), whose own limits the routes' schemas check, so that a too-long segment is refused before any route runs.
 */
export const MAX_PATH_PARAM_LENGTH = 100;

/**
 * Fastify's `frameworkErrors`: the router's own refusals, which never reach the error handler, in our error
 * body, saying what was wrong and what is allowed (the raw path is not echoed whole: it may be very long). They
 * skip the onResponse hook too, so they write their access-log line here.
 */
export function answerRouterError(error: FastifyError, request: FastifyRequest, reply: FastifyReply): void {
  const url = request.raw.url ?? '';
  const path = url.split('?')[0] ?? '';
  const shown = path.length > 60 ? `${path.slice(0, 60)}…` : path;
  const where = `${request.raw.method ?? ''} ${shown}`;
  let apiError: ApiError;
  if (error.code === 'FST_ERR_MAX_PARAM_LENGTH') {
    apiError = new ApiError(
      414,
      'UriTooLong',
      `a path segment of ${where} is ${longestDecodedSegment(path)} characters long; a path segment (a name or version) may be at most ${MAX_PATH_PARAM_LENGTH} (names at most 63, versions 64)`,
    );
  } else if (error.code === 'FST_ERR_BAD_URL') {
    apiError = new ApiError(
      400,
      'ValidationError',
      `${where} is not a valid URL: a path segment has a malformed %-escape; expected UTF-8 percent-encoding`,
    );
  } else {
    request.log.error({ err: error }, 'request failed in the router');
    apiError = new ApiError(500, 'InternalError', 'the server failed to handle the request; see its log');
  }
  const status = apiError.statusCode;
  request.log[status >= 500 ? 'warn' : 'info'](
    { method: request.raw.method, url: redactRequestUrl(url), status },
    'request',
  );
  void reply.status(status).type('application/json').send(apiError.toBody());
}

/** The length the router checks: a segment's decoded length (`%41` is one character), the longest of the path's. */
function longestDecodedSegment(path: string): number {
  return Math.max(
    ...path.split('/').map((segment) => {
      try {
        return decodeURIComponent(segment).length;
      } catch {
        return segment.length;
      }
    }),
  );
}

/** Maps Fastify's own errors (body parsing, limits) onto our codes. */
function fromFastifyError(error: FastifyError): ApiError | undefined {
  const status = error.statusCode ?? 500;
  if (status === 413) return new ApiError(413, 'PayloadTooLarge', error.message);
  if (status === 415) return new ApiError(415, 'UnsupportedMediaType', error.message);
  if (status >= 400 && status < 500) {
    return new ApiError(status, 'ValidationError', error.message, { fastifyCode: error.code });
  }
  return undefined;
}

/**
 * Installs the error and not-found handlers that give every failure the same body. (The connection is ended
 * after any answer sent before the request body was read: see request-deadline.ts.)
 */
export function installErrorHandlers(app: FastifyInstance, outageLog: OutageLog): void {
  app.setErrorHandler((thrown: unknown, request, reply) => {
    let apiError: ApiError | undefined;
    // The database or blob store down: 503 naming it (logged with the cause, once a minute), not a 500.
    const outage = dependencyUnavailableOf(thrown);
    if (outage !== undefined)
      outageLog.log(request.log, String(outage.details?.component), thrown, outage.message);
    const error = outage ?? thrown;
    if (error instanceof ApiError) apiError = error;
    else if (error instanceof DomainError) apiError = fromDomainError(error);
    else if (error instanceof RequestValidationError) {
      apiError = new ApiError(400, 'ValidationError', error.message, {
        in: error.part,
        issues: error.issues.map((i) => ({ path: i.path.map(String), message: i.message, code: i.code })),
      });
    } else if (error instanceof Error && 'statusCode' in error) {
      apiError = fromFastifyError(error as FastifyError);
    }
    if (apiError === undefined) {
      request.log.error({ err: error }, 'request failed');
      apiError = new ApiError(500, 'InternalError', 'the server failed to handle the request; see its log');
    } else if (
      apiError.statusCode >= 500 &&
      apiError.code !== 'DependencyUnavailable' &&
      apiError.code !== 'NotReady'
    ) {
      // A dependency that cannot be used is logged where it is found (once per outage), not per request; a
      // failing readiness check by /readyz, when it begins to fail.
      request.log.error({ err: error }, apiError.message);
    }
    const retryAfter = retryAfterSecondsOf(error);
    if (retryAfter !== undefined && !reply.hasHeader('retry-after'))
      void reply.header('retry-after', String(retryAfter));
    return reply.status(apiError.statusCode).type('application/json').send(apiError.toBody());
  });
  app.setNotFoundHandler((request, reply) =>
    reply
      .status(404)
      .send(
        new ApiError(404, 'NotFound', `no route ${request.method} ${request.url.split('?')[0]}`).toBody(),
      ),
  );
}
