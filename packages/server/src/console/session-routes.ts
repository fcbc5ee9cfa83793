import type { FastifyPluginAsync } from 'fastify';
import { z } from 'zod';
import { requireOperator, tokenScopeSchema } from '../auth/index.js';
import { DomainError } from '../errors/index.js';
import { defineRoute } from '../http/routes.js';
import { clearSessionCookie, sessionIdOf, setSessionCookie } from './session-auth.js';
import { EXPIRED_SESSION_KEPT_MS, type ConsoleSessionStore } from './session-store.js';

const consoleSessionSchema = z.object({
  operator: z.object({
    name: z.string(),
    scope: tokenScopeSchema,
    /** The API token's id (as GET /api/v1/tokens lists it): the console does not offer to revoke it. */
    tokenId: z.string(),
  }),
  /** Send it back as the X-CSRF-Token header on every write. */
  csrfToken: z.string(),
  expiresAt: z.iso.datetime(),
});

/** Console sign-in and sign-out: an operator API token is exchanged for an HttpOnly session cookie. */
export const consoleSessionRoutes: FastifyPluginAsync<{ sessions: ConsoleSessionStore }> = async (
  app,
  { sessions },
) => {
  defineRoute(app, {
    method: 'POST',
    url: '/api/v1/console/session',
    auth: 'read',
    tag: 'console',
    summary:
      'Sign in to the console: send the operator API token as the bearer token once; answers with the session cookie',
    response: consoleSessionSchema,
    status: 201,
    handler: async ({ request, reply }) => {
      if (request.consoleSession !== undefined) {
        throw new DomainError(
          'Unauthenticated',
          'sign in with "Authorization: Bearer <API token>"; a session cannot open another session',
        );
      }
      const opened = await sessions.open(requireOperator(request));
      // The cookie outlives the session (the server refuses it once expired) so the browser can be told why.
      setSessionCookie(
        reply,
        request,
        opened.sessionId,
        Math.floor((opened.expiresAt + EXPIRED_SESSION_KEPT_MS - Date.now()) / 1000),
      );
      return {
        operator: {
          name: opened.identity.name,
          scope: opened.identity.scope,
          tokenId: opened.identity.tokenId,
        },
        csrfToken: opened.csrfToken,
        expiresAt: new Date(opened.expiresAt).toISOString(),
      };
    },
  });

  defineRoute(app, {
    method: 'GET',
    url: '/api/v1/console/session',
    auth: 'read',
    tag: 'console',
    summary: 'The console session of this browser: who is signed in and the CSRF token for writes',
    response: consoleSessionSchema,
    handler: async ({ request }) => {
      const operator = requireOperator(request);
      const session = request.consoleSession;
      if (session === undefined) {
        throw new DomainError(
          'NotFound',
          'no console session: this request used a bearer token, not the cookie',
        );
      }
      return {
        operator: { name: operator.name, scope: operator.scope, tokenId: operator.tokenId },
        csrfToken: session.csrfToken,
        expiresAt: new Date(session.expiresAt).toISOString(),
      };
    },
  });

  defineRoute(app, {
    method: 'DELETE',
    url: '/api/v1/console/session',
    auth: 'console-session',
    tag: 'console',
    summary:
      'Sign out: ends the console session and clears its cookie (a live session needs the CSRF token, so other ' +
      'sites cannot sign you out; an ended one, expired or revoked, needs only its cookie)',
    status: 204,
    handler: async ({ request, reply }) => {
      const sessionId = sessionIdOf(request);
      if (sessionId !== undefined) await sessions.close(sessionId);
      clearSessionCookie(reply, request);
      return undefined;
    },
  });
};
