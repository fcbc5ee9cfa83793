import type { FastifyRequest } from 'fastify';
import { DomainError } from '../errors/index.js';
import type { ApiTokenStore, OperatorIdentity } from './api-tokens.js';
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
 */
export function operatorAuthenticators(
  tokens: ApiTokenStore,
  otherwise?: (request: FastifyRequest) => Promise<OperatorIdentity | undefined>,
): {
  read: (request: FastifyRequest) => Promise<void>;
  admin: (request: FastifyRequest) => Promise<void>;
} {
  const authenticate = async (request: FastifyRequest): Promise<OperatorIdentity> => {
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
    const identity = await tokens.verify(token);
    if (identity === undefined) {
      throw new DomainError('Unauthenticated', 'the API token is unknown or revoked');
    }
    request.operator = identity;
    return identity;
  };
  return {
    read: async (request) => {
      await authenticate(request);
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
