import createClient, { type Middleware } from 'openapi-fetch';
import type { paths } from '../../generated/api-schema.js';

/** The operator API, typed from the server's own OpenAPI document (generated at build time). */
export type ApiPaths = paths;

/** The error body every route answers with (core's errorBodySchema). */
export interface ApiErrorBody {
  code?: string;
  message?: string;
}

/** What the session gives every request: the CSRF token for writes, and what to do when it has ended. */
export interface ClientSession {
  csrfToken(): string | undefined;
  /** `why`: the server's words when it said why the session ended (token revoked, session expired). */
  onSignedOut(why?: string): void;
}

const SAFE = new Set(['GET', 'HEAD', 'OPTIONS']);

/** A client on this origin: the HttpOnly session cookie goes along by itself; writes add the CSRF header. */
export function createApiClient(session: ClientSession) {
  const client = createClient<paths>({ baseUrl: '', credentials: 'same-origin' });
  const middleware: Middleware = {
    onRequest({ request }) {
      const csrf = session.csrfToken();
      if (!SAFE.has(request.method) && csrf !== undefined) request.headers.set('x-csrf-token', csrf);
      return request;
    },
    async onResponse({ response, request }) {
      if (response.status === 401 && !request.url.endsWith('/api/v1/console/session')) {
        const body = (await response
          .clone()
          .json()
          .catch(() => undefined)) as (ApiErrorBody & { details?: { sessionEnded?: unknown } }) | undefined;
        session.onSignedOut(body?.details?.sessionEnded !== undefined ? body.message : undefined);
      }
      return response;
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
