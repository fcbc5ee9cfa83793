import { randomBytes } from 'node:crypto';

/**
 * Leases on jobs any replica may run (packaging jobs, compilation imports). The runner writes a fresh claim
 * token to the job's row and renews the lease (the row's updated_at) well within it; a job whose lease ran
 * out lost its runner (crashed, killed, stalled) and may be taken over or failed by any replica. A runner
 * whose token is gone writes nothing more.
 */

/** How long an unrenewed job keeps its runner, unless configured. */
export const DEFAULT_LEASE_MS = 120_000;

/**
 * A new claim token (written to the job's row when a runner takes it); `prefix`: the server's identity
 * (server/instance-id.ts), so that a restarted server knows its own interrupted claims.
 */
export function newClaimToken(prefix?: string): string {
  const random = randomBytes(12).toString('hex');
  return prefix === undefined ? random : `${prefix}.${random}`;
}

/** How often a runner renews its lease of `leaseMs`: well within it, so a slow round trip never loses it. */
export function leaseRenewalIntervalMs(leaseMs: number): number {
  return Math.min(20_000, leaseMs / 4);
}

/** The updated_at below which a job's lease ran out. */
export function leaseExpiredBefore(now: number, leaseMs: number): number {
  return now - leaseMs;
}

export interface LeaseRenewal {
  /** True once a renewal found the claim gone (another replica took the job over, or ended it). */
  readonly lost: boolean;
  stop(): void;
}

/**
 * Calls `renew` (true while the claim holds) every quarter lease, at most every 20 s, so a slow database
 * round trip never lets another replica take a live runner's job. A failed renewal is retried at the next tick;
 * a tick while a renewal is still in flight is skipped, so a stalled database never piles renewals up.
 * `onLost` is called once, when a renewal finds the claim gone (the runner should stop its work).
 */
export function renewLease(
  renew: () => Promise<boolean>,
  leaseMs: number,
  onLost?: () => void,
): LeaseRenewal {
  let lost = false;
  let inFlight = false;
  const timer = setInterval(() => {
    if (inFlight || lost) return;
    inFlight = true;
    renew()
      .then(
        (held) => {
          if (held || lost) return;
          lost = true;
          onLost?.();
        },
        () => undefined,
      )
      .finally(() => (inFlight = false));
  }, leaseRenewalIntervalMs(leaseMs));
  return {
    get lost() {
      return lost;
    },
    stop: () => clearInterval(timer),
  };
}
