import type { FastifyRequest } from 'fastify';
import { DomainError, dependencyUnavailableOf } from '../errors/index.js';
import type { ApiTokenStore, OperatorIdentity } from './api-tokens.js';
import { RecentTokenVerifications } from './recent-token-verifications.js';
import { bearerTokenOf } from './secrets.js';

declare module 'fastify' {
  interface FastifyRequest {
    /** Set on operator routes once the bearer token is verified. */
    operator?: OperatorIdentity;
  }
}

/**
 * Checks `Authorization: Bearer <API token>`; `admin` routes additionally need an admin-scoped token. Without
 * that header, `otherwise` (the console's session cookie) may identify the operator.
 *
 * `scrape` (GET /metrics only) is `read`, except that a token this process verified within `recentScrapes`'
 * window (counted back from the outage's start) is still accepted when the lookup fails because the database
 * cannot be used (an outage the server recognises, as dependencyUnavailableOf does): a scrape must be able to report
 * `database_usable 0`. Any token the database refuses, or never verified here, is checked as by `read`.
 */
export function operatorAuthenticators(
  tokens: ApiTokenStore,
  otherwise?: (request: FastifyRequest) => Promise<OperatorIdentity | undefined>,
  recentScrapes: RecentTokenVerifications = new RecentTokenVerifications(),
): {
  read: (request: FastifyRequest) => Promise<void>;
  admin: (request: FastifyRequest) => Promise<void>;
  scrape: (request: FastifyRequest) => Promise<void>;
} {
  const authenticate = async (
    request: FastifyRequest,
    recent?: RecentTokenVerifications,
  ): Promise<OperatorIdentity> => {
    const token = bearerTokenOf(request.headers.authorization);
    if (token === undefined) {
      const viaSession = await otherwise?.(request);
      if (viaSession !== undefined) {
        request.operator = viaSession;
        return viaSession;
      }
      throw new DomainError(
        'Unauthenticated',
        'this route needs an API token: send "Authorization: Bearer <token>"',
      );
    }
    let identity: OperatorIdentity | undefined;
    try {
      identity = await tokens.verify(token);
    } catch (error) {
      // An outage of the database is no refusal: a token verified lately stands. Any other error (a bug, a
      // closed database) is answered as it is, never with a remembered identity.
      if (recent === undefined || dependencyUnavailableOf(error)?.details?.component !== 'database')
        throw error;
      if (recent.databaseUnusable())
        request.log.warn(
          { event: 'metrics_token_fallback' },
          'the database cannot be used: GET /metrics accepts the API tokens it verified within 60 s before ' +
            'the outage began (up to 24 h), until the database answers again',
        );
      const remembered = recent.recall(token);
      if (remembered === undefined) throw error;
      request.operator = remembered;
      return remembered;
    }
    recent?.databaseAnswered();
    if (identity === undefined) {
      recent?.forget(token);
      throw new DomainError('Unauthenticated', 'the API token is unknown or revoked');
    }
    recent?.remember(token, identity);
    request.operator = identity;
    return identity;
  };
  return {
    read: async (request) => {
      await authenticate(request);
    },
    scrape: async (request) => {
      await authenticate(request, recentScrapes);
    },
    admin: async (request) => {
      const identity = await authenticate(request);
      if (identity.scope !== 'admin') {
        throw new DomainError(
          'Forbidden',
          `this route needs an admin token; token "${identity.name}" is ${identity.scope}`,
        );
      }
    },
  };
}

export function requireOperator(request: FastifyRequest): OperatorIdentity {
  if (request.operator === undefined)
    throw new Error('operator identity missing: route registered without operator auth');
  return request.operator;
}
