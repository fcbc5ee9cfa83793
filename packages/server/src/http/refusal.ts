import type { FastifyInstance } from 'fastify';

/**
 * Why a request was refused, as metrics/ counts it: a fixed handful of values. Read from the answer's status,
 * unless the part that answered set `request.refusal`: the SageMaker facade answers AWS-style (403 for a bad
 * signature, 400 for a denied device or an over-limit body), where the status alone would mislead.
 */
export type Refusal =
  | 'unauthenticated'
  | 'forbidden'
  | 'invalid'
  | 'too_large'
  | 'request_timeout'
  | 'limit_exceeded'
  | 'unavailable'
  | 'server_error';

declare module 'fastify' {
  interface FastifyRequest {
    /** Why this request was refused, where its status does not say it (see Refusal); null: read the status. */
    refusal: Refusal | null;
    /**
     * Which operation a route that carries several ran (the SageMaker facade's `POST /`), from a fixed list of
     * known names, `unknown` otherwise: never a value the client chose. Null for every other route.
     */
    operation: string | null;
  }
}

/** Gives every request of `app` the two fields, null until a route sets them (one shape for all requests). */
export function decorateRequestOutcome(app: FastifyInstance): void {
  app.decorateRequest('refusal', null);
  app.decorateRequest('operation', null);
}
