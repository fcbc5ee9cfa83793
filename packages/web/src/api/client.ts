import createClient, { type Middleware } from 'openapi-fetch';
import type { paths } from '../../generated/api-schema.js';

/** The operator API, typed from the server's own OpenAPI document (generated at build time). */
export type ApiPaths = paths;

/** The error body every route answers with (core's errorBodySchema). */
export interface ApiErrorBody {
  code?: string;
  message?: string;
}

/** Why the server says a session ended (details.sessionEnded), with its words for the operator. */
export interface SessionEnded {
  reason: 'expired' | 'revoked' | 'unknown';
  message: string;
}

/** What the session gives every request: the CSRF token for writes, and what to do when it has ended. */
export interface ClientSession {
  csrfToken(): string | undefined;
  /**
   * Counts sign-ins: a 401 to a request sent before the latest one is about the session before it, which the
   * new one replaced, so it is ignored.
   */
  signIns(): number;
  /** `ended`: when the server said why (token revoked, session expired); absent for a request with no cookie. */
  onSignedOut(ended?: SessionEnded): void;
}

const ENDED_REASONS = new Set<unknown>(['expired', 'revoked', 'unknown']);

const SAFE = new Set(['GET', 'HEAD', 'OPTIONS']);

/** A client on this origin: the HttpOnly session cookie goes along by itself; writes add the CSRF header. */
export function createApiClient(session: ClientSession) {
  const client = createClient<paths>({ baseUrl: '', credentials: 'same-origin' });
  /** The sign-in count when each request in flight was sent, by openapi-fetch's request id. */
  const sentAfter = new Map<string, number>();
  const middleware: Middleware = {
    onRequest({ request, id }) {
      sentAfter.set(id, session.signIns());
      const csrf = session.csrfToken();
      if (!SAFE.has(request.method) && csrf !== undefined) request.headers.set('x-csrf-token', csrf);
      return request;
    },
    async onResponse({ response, request, id }) {
      const sentWith = sentAfter.get(id);
      sentAfter.delete(id);
      if (
        response.status === 401 &&
        !request.url.endsWith('/api/v1/console/session') &&
        sentWith === session.signIns()
      ) {
        const body = (await response
          .clone()
          .json()
          .catch(() => undefined)) as (ApiErrorBody & { details?: { sessionEnded?: unknown } }) | undefined;
        const reason = body?.details?.sessionEnded;
        session.onSignedOut(
          ENDED_REASONS.has(reason)
            ? {
                reason: reason as SessionEnded['reason'],
                message: body?.message ?? 'the console session ended',
              }
            : undefined,
        );
      }
      return response;
    },
    onError({ id }) {
      sentAfter.delete(id);
    },
  };
  client.use(middleware);
  return client;
}

export type ApiClient = ReturnType<typeof createApiClient>;

/** The message of an API error body (every error carries one), for showing to the operator. */
export function errorMessage(error: unknown): string {
  const body = error as ApiErrorBody | undefined;
  return body?.message ?? (error instanceof Error ? error.message : 'the request failed');
}

/** Unwraps an openapi-fetch result: the data, or an Error carrying the server's message. */
export function must<T>(result: { data?: T; error?: unknown }): T {
  if (result.error !== undefined || result.data === undefined) throw new Error(errorMessage(result.error));
  return result.data;
}
