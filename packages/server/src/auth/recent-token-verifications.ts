import type { OperatorIdentity } from './api-tokens.js';
import { hashSecret } from './secrets.js';

/** How long a verified token is remembered: a revocation made on another replica counts after at most this. */
export const DEFAULT_RECENT_TOKEN_TTL_MS = 60_000;
/** How many tokens are remembered at most (the oldest goes first); a scrape uses one or two. */
export const DEFAULT_RECENT_TOKEN_LIMIT = 256;

/**
 * API tokens this process verified against the database lately, by hash (never the token itself), with the
 * identity found. Only successes are remembered: a refusal always asks the database again. GET /metrics uses
 * it to answer a known scraper while the database cannot be used, so that `database_usable 0` can be seen.
 */
export class RecentTokenVerifications {
  readonly #ttlMs: number;
  readonly #limit: number;
  readonly #now: () => number;
  /** Insertion order is age order: the first entry is the one to drop when full. */
  readonly #byHash = new Map<string, { identity: OperatorIdentity; at: number }>();

  constructor(options: { ttlMs?: number; limit?: number; now?: () => number } = {}) {
    this.#ttlMs = options.ttlMs ?? DEFAULT_RECENT_TOKEN_TTL_MS;
    this.#limit = options.limit ?? DEFAULT_RECENT_TOKEN_LIMIT;
    this.#now = options.now ?? Date.now;
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

  /** The identity `token` was verified as within the last ttlMs; undefined otherwise. */
  recall(token: string): OperatorIdentity | undefined {
    const hash = hashSecret(token);
    const entry = this.#byHash.get(hash);
    if (entry === undefined) return undefined;
    if (this.#now() - entry.at >= this.#ttlMs) {
      this.#byHash.delete(hash);
      return undefined;
    }
    return entry.identity;
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
