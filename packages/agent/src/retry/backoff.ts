export interface BackoffPolicy {
  /** Delay after the first failure. */
  initialMs: number;
  /** Ceiling of the delay. */
  maxMs: number;
}

/**
 * Exponential backoff with jitter: after the n-th consecutive failure (n ≥ 1), a delay drawn uniformly from
 * [d/2, d] where d = min(maxMs, initialMs · 2^(n−1)). The jitter keeps a fleet that lost its network together
 * from retrying in lockstep; the lower half-bound keeps the delay growing. The one backoff of the agent: capture's
 * spool and disk-write retries and the fleet client's heartbeat retries use it.
 */
export function backoffDelay(
  policy: BackoffPolicy,
  failures: number,
  random: () => number = Math.random,
): number {
  const exponent = Math.min(Math.max(failures - 1, 0), 30);
  const ceiling = Math.min(policy.maxMs, policy.initialMs * 2 ** exponent);
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}
