import { randomBytes, timingSafeEqual } from 'node:crypto';
import type { Kysely } from 'kysely';
import { hashSecret, tokenScopeSchema, type OperatorIdentity } from '../auth/index.js';
import type { FleetEventLog } from '../audit/index.js';
import type { DatabaseSchema } from '../storage/index.js';

/** A console session as the browser holds it: the cookie value and the CSRF token its writes must carry. */
export interface OpenedSession {
  sessionId: string;
  csrfToken: string;
  identity: OperatorIdentity;
  expiresAt: number;
}

export interface ActiveSession {
  identity: OperatorIdentity;
  csrfToken: string;
  expiresAt: number;
}

/** A cookie's session: live, or why it is not. */
export type SessionLookup =
  { live: ActiveSession } | { ended: 'revoked'; tokenName: string } | { ended: 'expired' | 'unknown' };

/**
 * How long a session's cookie, and its row, outlive the session. The server still refuses the session once it
 * has expired; the cookie lets the browser come back to be told so ("the console session expired; sign in
 * again", details.sessionEnded "expired") rather than arrive with no cookie and get a generic sign-in refusal.
 * A day, so an operator returning the next morning to a tab left open is told why.
 */
export const EXPIRED_SESSION_KEPT_MS = 24 * 3600 * 1000;

/**
 * The most session rows one API token keeps, live or expired-but-kept: a sign-in beyond it removes that token's
 * oldest, so a token (even a read-only one) signing in over and over cannot grow the table without bound. Ample
 * for a team sharing a token across browsers: a row lasts the session's lifetime plus a day.
 */
export const MAX_SESSIONS_PER_TOKEN = 32;

/**
 * Console sign-ins, stored in the database so that any replica recognises a cookie another one issued. A
 * session is only as good as the API token it was opened with: revoking the token ends its sessions.
 */
export class ConsoleSessionStore {
  constructor(
    private readonly db: Kysely<DatabaseSchema>,
    private readonly options: {
      ttlMs: number;
      now?: () => number;
      /** The operator's log of fleet events (console sign-in and sign-out, by the API token's name and id). */
      events?: FleetEventLog;
    },
  ) {}

  private now(): number {
    return (this.options.now ?? Date.now)();
  }

  /** Opens a session for an operator whose API token was just verified; the token itself is not kept. */
  async open(identity: OperatorIdentity): Promise<OpenedSession> {
    const now = this.now();
    // Expired rows are removed here, at sign-in, rather than by a timer: sign-ins are rare and any replica may do
    // it. They are kept as long as their cookies (EXPIRED_SESSION_KEPT_MS), to say why a returning cookie fails.
    await this.db
      .deleteFrom('console_sessions')
      .where('expires_at', '<=', now - EXPIRED_SESSION_KEPT_MS)
      .execute();
    const sessionId = randomBytes(32).toString('base64url');
    const csrfToken = randomBytes(32).toString('base64url');
    const expiresAt = now + this.options.ttlMs;
    const idHash = hashSecret(sessionId);
    await this.db
      .insertInto('console_sessions')
      .values({
        id_hash: idHash,
        token_id: identity.tokenId,
        csrf_token: csrfToken,
        created_at: now,
        expires_at: expiresAt,
      })
      .execute();
    await this.removeOldestBeyondCap(identity.tokenId, idHash);
    this.options.events?.info(
      { kind: 'operator', name: identity.name, tokenId: identity.tokenId },
      {
        event: 'console_signed_in',
        outcome: 'signed-in',
        object: {
          tokenId: identity.tokenId,
          scope: identity.scope,
          expiresAt: new Date(expiresAt).toISOString(),
        },
        message: `console session opened with API token "${identity.name}" (${identity.scope}), until ${new Date(expiresAt).toISOString()}`,
      },
    );
    return { sessionId, csrfToken, identity, expiresAt };
  }

  /** Keeps the token's newest MAX_SESSIONS_PER_TOKEN rows, the one just opened (`keep`) among them. */
  private async removeOldestBeyondCap(tokenId: string, keep: string): Promise<void> {
    // At most the cap plus concurrent sign-ins: the cap holds it there.
    const others = await this.db
      .selectFrom('console_sessions')
      .select('id_hash')
      .where('token_id', '=', tokenId)
      .where('id_hash', '!=', keep)
      .orderBy('created_at', 'desc')
      .orderBy('id_hash')
      .execute();
    const beyond = others.slice(MAX_SESSIONS_PER_TOKEN - 1).map((row) => row.id_hash);
    if (beyond.length > 0) {
      await this.db.deleteFrom('console_sessions').where('id_hash', 'in', beyond).execute();
    }
  }

  /**
   * The session behind a cookie value, in one read: live, or why not (its API token was revoked, named; it
   * expired; or it is unknown: signed out, or never was), for the message that sends a browser back to sign-in.
   */
  async lookup(sessionId: string): Promise<SessionLookup> {
    const row = await this.db
      .selectFrom('console_sessions')
      .innerJoin('api_tokens', 'api_tokens.id', 'console_sessions.token_id')
      .select([
        'api_tokens.id as tokenId',
        'api_tokens.name as name',
        'api_tokens.scope as scope',
        'api_tokens.revoked_at as revokedAt',
        'console_sessions.csrf_token as csrfToken',
        'console_sessions.expires_at as expiresAt',
      ])
      .where('console_sessions.id_hash', '=', hashSecret(sessionId))
      .executeTakeFirst();
    if (row === undefined) return { ended: 'unknown' };
    if (row.revokedAt !== null) return { ended: 'revoked', tokenName: row.name };
    const expiresAt = Number(row.expiresAt);
    if (expiresAt <= this.now()) return { ended: 'expired' };
    return {
      live: {
        identity: { tokenId: row.tokenId, name: row.name, scope: tokenScopeSchema.parse(row.scope) },
        csrfToken: row.csrfToken,
        expiresAt,
      },
    };
  }

  /** The live session behind a cookie value, or undefined if it is unknown, expired or its token revoked. */
  async find(sessionId: string): Promise<ActiveSession | undefined> {
    const found = await this.lookup(sessionId);
    return 'live' in found ? found.live : undefined;
  }

  /** Ends the session (signed out); one already gone is no error. Logged by the API token it was opened with. */
  async close(sessionId: string): Promise<void> {
    const idHash = hashSecret(sessionId);
    const session = await this.db
      .selectFrom('console_sessions')
      .innerJoin('api_tokens', 'api_tokens.id', 'console_sessions.token_id')
      .select(['api_tokens.id as tokenId', 'api_tokens.name as name'])
      .where('console_sessions.id_hash', '=', idHash)
      .executeTakeFirst();
    const result = await this.db
      .deleteFrom('console_sessions')
      .where('id_hash', '=', idHash)
      .executeTakeFirst();
    // Only the request that removed the row logs it: a second sign-out of the same cookie (another tab) did nothing.
    if (session === undefined || Number(result.numDeletedRows) === 0) return;
    this.options.events?.info(
      { kind: 'operator', name: session.name, tokenId: session.tokenId },
      {
        event: 'console_signed_out',
        outcome: 'signed-out',
        object: { tokenId: session.tokenId },
        message: `console session of API token "${session.name}" signed out`,
      },
    );
  }
}

/** Constant-time comparison of the CSRF token a request carries with the session's. */
export function csrfTokenMatches(presented: string | undefined, expected: string): boolean {
  if (presented === undefined) return false;
  const a = Buffer.from(presented, 'utf8');
  const b = Buffer.from(expected, 'utf8');
  return a.length === b.length && timingSafeEqual(a, b);
}
