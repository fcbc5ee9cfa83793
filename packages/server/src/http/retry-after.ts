import type { FastifyReply } from 'fastify';
import { DomainError } from '../errors/index.js';

/** When a refusal says how long to wait (`details.retryAfterSeconds`), the seconds for Retry-After. */
export function retryAfterSecondsOf(error: unknown): number | undefined {
  if (!(error instanceof DomainError)) return undefined;
  if (error.code !== 'LimitExceeded' && error.code !== 'DependencyUnavailable') return undefined;
  const seconds = error.details?.retryAfterSeconds;
  return typeof seconds === 'number' && Number.isFinite(seconds) && seconds > 0
    ? Math.ceil(seconds)
    : undefined;
}

/**
 * Runs a handler; a LimitExceeded (429) or DependencyUnavailable (503) refusal that says when to retry is
 * answered with Retry-After, as HTTP clients and the agent's retries read it.
 */
export async function withRetryAfter<T>(reply: FastifyReply, run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (error) {
    const seconds = retryAfterSecondsOf(error);
    if (seconds !== undefined) reply.header('retry-after', String(seconds));
    throw error;
  }
}
