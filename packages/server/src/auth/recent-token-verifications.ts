import type { OperatorIdentity } from './api-tokens.js';
import { hashSecret } from './secrets.js';

/** How long before an outage a token must have been verified: a revocation on another replica counts after this. */
const DEFAULT_TTL_MS = 60_000;
/** How many tokens are remembered at most (the oldest goes first); a scrape uses one or two. */
const DEFAULT_LIMIT = 256;
/**
 * The longest outage a remembered token outlives. No revocation can be saved while the database is down, but a
 * replica cut off from a database the others still reach would go on admitting a token revoked there.
 */
const DEFAULT_MAX_OUTAGE_MS = 24 * 60 * 60_000;

/**
 * API tokens this process verified against the database lately, by hash (never the token itself), with the
 * identity found. Only successes are remembered: a refusal always asks the database again. GET /metrics uses
 * it to answer a known scraper while the database cannot be used, so that `database_usable 0` can be seen.
 */
export class RecentTokenVerifications {
  readonly #ttlMs: number;
  readonly #limit: number;
  readonly #maxOutageMs: number;
  readonly #now: () => number;
  /** When the first lookup of the current outage failed; undefined while the database answers. */
  #unusableSince: number | undefined;
  /** Insertion order is age order: the first entry is the one to drop when full. */
  readonly #byHash = new Map<string, { identity: OperatorIdentity; at: number }>();

  constructor(options: { ttlMs?: number; limit?: number; maxOutageMs?: number; now?: () => number } = {}) {
    this.#ttlMs = options.ttlMs ?? DEFAULT_TTL_MS;
    this.#limit = options.limit ?? DEFAULT_LIMIT;
    this.#maxOutageMs = options.maxOutageMs ?? DEFAULT_MAX_OUTAGE_MS;
    this.#now = options.now ?? Date.now;
  }

  /** A token lookup failed because the database cannot be used. True for the outage's first such failure. */
  databaseUnusable(): boolean {
    if (this.#unusableSince !== undefined) return false;
    this.#unusableSince = this.#now();
    return true;
  }

  /** A token lookup got an answer: any outage is over. */
  databaseAnswered(): void {
    this.#unusableSince = undefined;
  }

  /** The database has just said `token` is `identity`'s. */
  remember(token: string, identity: OperatorIdentity): void {
    const hash = hashSecret(token);
    this.#byHash.delete(hash);
    this.#byHash.set(hash, { identity, at: this.#now() });
    while (this.#byHash.size > this.#limit) {
      const oldest = this.#byHash.keys().next().value;
      if (oldest === undefined) break;
      this.#byHash.delete(oldest);
    }
  }

  /**
   * The identity `token` was verified as within ttlMs before the current outage began (before now when there is
   * none): counted from the outage's start, as no revocation can be saved after it, so that a scraper is let in
   * for the whole outage, up to maxOutageMs. Undefined otherwise.
   */
  recall(token: string): OperatorIdentity | undefined {
    const hash = hashSecret(token);
    const entry = this.#byHash.get(hash);
    if (entry === undefined) return undefined;
    const now = this.#now();
    const since = this.#unusableSince ?? now;
    if (since - entry.at >= this.#ttlMs) {
      this.#byHash.delete(hash);
      return undefined;
    }
    return now - since >= this.#maxOutageMs ? undefined : entry.identity;
  }

  /** The database refused `token` (unknown or revoked). */
  forget(token: string): void {
    this.#byHash.delete(hashSecret(token));
  }

  /** This process revoked the token with this id. */
  forgetTokenId(tokenId: string): void {
    for (const [hash, entry] of this.#byHash)
      if (entry.identity.tokenId === tokenId) this.#byHash.delete(hash);
  }
}
