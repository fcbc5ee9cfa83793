import { parseCookie, stringifySetCookie } from 'cookie';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { OperatorIdentity } from '../auth/index.js';
import { DomainError } from '../errors/index.js';
import { csrfTokenMatches, type ActiveSession, type ConsoleSessionStore } from './session-store.js';

/** The cookie that carries a console session id (HttpOnly, SameSite=Strict: scripts and other sites never see it). */
export const SESSION_COOKIE = 'edgefleet_session';
/** The header every console write carries: the CSRF token the sign-in returned, which other sites cannot read. */
export const CSRF_HEADER = 'x-csrf-token';

const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

declare module 'fastify' {
  interface FastifyRequest {
    /** Set when the request was authenticated by a console session cookie rather than a bearer token. */
    consoleSession?: ActiveSession & { sessionId: string };
  }
}

export function sessionIdOf(request: FastifyRequest): string | undefined {
  const header = request.headers.cookie;
  if (header === undefined) return undefined;
  const value = parseCookie(header)[SESSION_COOKIE];
  return value === undefined || value === '' ? undefined : value;
}

/**
 * The operator identity of a request that has no bearer token but a console session cookie; writes must also
 * carry the session's CSRF token. Undefined when there is no cookie, so the bearer-token error stands.
 */
export function consoleSessionAuthenticator(
  sessions: ConsoleSessionStore,
): (request: FastifyRequest) => Promise<OperatorIdentity | undefined> {
  return async (request) => {
    const sessionId = sessionIdOf(request);
    if (sessionId === undefined) return undefined;
    const found = await sessions.lookup(sessionId);
    if (!('live' in found)) {
      // details.sessionEnded lets the console say why it shows the sign-in page again.
      throw new DomainError(
        'Unauthenticated',
        found.ended === 'revoked'
          ? `the console session ended: its API token "${found.tokenName}" was revoked; sign in with another token`
          : found.ended === 'expired'
            ? 'the console session expired (console.sessionTtlSeconds); sign in again'
            : 'the console session was signed out or is unknown; sign in again',
        { sessionEnded: found.ended },
      );
    }
    const session = found.live;
    requireCsrfToken(request, session);
    request.consoleSession = { ...session, sessionId };
    return session.identity;
  };
}

/**
 * Sign-out's check (auth `console-session`): the request must carry the session cookie. A live session's sign-out
 * must also carry its CSRF token (other sites cannot sign you out); an ended one (expired, its token revoked,
 * unknown) grants nothing, so it passes, and the handler removes its row and tells the browser to drop the cookie.
 */
export function consoleSignOutAuthenticator(
  sessions: ConsoleSessionStore,
): (request: FastifyRequest) => Promise<void> {
  return async (request) => {
    const sessionId = sessionIdOf(request);
    if (sessionId === undefined) {
      throw new DomainError(
        'Unauthenticated',
        `signing out needs the console session cookie (${SESSION_COOKIE}); this request carried none`,
      );
    }
    const found = await sessions.lookup(sessionId);
    if ('live' in found) {
      requireCsrfToken(request, found.live);
      request.consoleSession = { ...found.live, sessionId };
    }
  };
}

function requireCsrfToken(request: FastifyRequest, session: ActiveSession): void {
  if (SAFE_METHODS.has(request.method)) return;
  const presented = request.headers[CSRF_HEADER];
  if (typeof presented !== 'string' || !csrfTokenMatches(presented, session.csrfToken)) {
    throw new DomainError(
      'Forbidden',
      `a console write must carry the ${CSRF_HEADER} header with the token its sign-in returned; it was missing or wrong`,
    );
  }
}

export function setSessionCookie(
  reply: FastifyReply,
  request: FastifyRequest,
  sessionId: string,
  maxAgeSeconds: number,
): void {
  reply.header(
    'set-cookie',
    stringifySetCookie({
      name: SESSION_COOKIE,
      value: sessionId,
      httpOnly: true,
      sameSite: 'strict',
      path: '/',
      maxAge: maxAgeSeconds,
      secure: request.protocol === 'https',
    }),
  );
}

/** Tells the browser to drop the session cookie (the same cookie, empty and already expired). */
export function clearSessionCookie(reply: FastifyReply, request: FastifyRequest): void {
  setSessionCookie(reply, request, '', 0);
}
