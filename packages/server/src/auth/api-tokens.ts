import type { Kysely } from 'kysely';
import { LOCAL_ACTOR, type Actor, type FleetEventLog } from '../audit/index.js';
import { z } from 'zod';
import type { DatabaseSchema } from '../storage/index.js';
import { hashSecret, newId, newSecret } from './secrets.js';

export const tokenScopeSchema = z.enum(['admin', 'read-only']);
export type TokenScope = z.infer<typeof tokenScopeSchema>;

export const API_TOKEN_PREFIX = 'efo_';

export interface ApiTokenRecord {
  id: string;
  name: string;
  scope: TokenScope;
  createdAt: number;
  revokedAt: number | null;
}

export interface OperatorIdentity {
  tokenId: string;
  name: string;
  scope: TokenScope;
}

/** Operator API tokens: only their SHA-256 is stored; the token itself is shown once, at creation. */
export class ApiTokenStore {
  constructor(
    private readonly db: Kysely<DatabaseSchema>,
    private readonly now: () => number = Date.now,
    /** Where creations and revocations are logged; absent: nowhere (commands beside the server, tests). */
    private readonly events?: FleetEventLog,
    /** Hears each revocation made through this store (the server drops its remembered verifications). */
    private readonly onRevoked?: (tokenId: string) => void,
  ) {}

  async create(
    input: {
      name: string;
      scope: TokenScope;
    },
    by: Actor = LOCAL_ACTOR,
  ): Promise<{ token: string; record: ApiTokenRecord }> {
    const token = newSecret(API_TOKEN_PREFIX);
    const record: ApiTokenRecord = {
      id: newId(),
      name: input.name,
      scope: input.scope,
      createdAt: this.now(),
      revokedAt: null,
    };
    await this.db
      .insertInto('api_tokens')
      .values({
        id: record.id,
        name: record.name,
        scope: record.scope,
        token_hash: hashSecret(token),
        created_at: record.createdAt,
        revoked_at: null,
      })
      .execute();
    this.events?.info(by, {
      event: 'api_token_created',
      outcome: 'created',
      object: { tokenId: record.id, tokenName: record.name, scope: record.scope },
      message: `API token "${record.name}" (${record.id}, ${record.scope}) created`,
    });
    return { token, record };
  }

  /** The identity behind a presented token, or undefined if it is unknown or revoked. */
  async verify(token: string): Promise<OperatorIdentity | undefined> {
    if (!token.startsWith(API_TOKEN_PREFIX)) return undefined;
    const row = await this.db
      .selectFrom('api_tokens')
      .select(['id', 'name', 'scope'])
      .where('token_hash', '=', hashSecret(token))
      .where('revoked_at', 'is', null)
      .executeTakeFirst();
    return row === undefined
      ? undefined
      : { tokenId: row.id, name: row.name, scope: tokenScopeSchema.parse(row.scope) };
  }

  async list(options: { after?: string; limit: number }): Promise<ApiTokenRecord[]> {
    let query = this.db.selectFrom('api_tokens').selectAll().orderBy('id').limit(options.limit);
    if (options.after !== undefined) query = query.where('id', '>', options.after);
    const rows = await query.execute();
    return rows.map((row) => ({
      id: row.id,
      name: row.name,
      scope: tokenScopeSchema.parse(row.scope),
      createdAt: row.created_at,
      revokedAt: row.revoked_at,
    }));
  }

  /** Revokes a token; false if there is no such (unrevoked) token. */
  async revoke(id: string, by: Actor = LOCAL_ACTOR): Promise<boolean> {
    const result = await this.db
      .updateTable('api_tokens')
      .set({ revoked_at: this.now() })
      .where('id', '=', id)
      .where('revoked_at', 'is', null)
      .executeTakeFirst();
    const revoked = Number(result.numUpdatedRows) > 0;
    if (revoked) this.onRevoked?.(id);
    if (revoked)
      this.events?.info(by, {
        event: 'api_token_revoked',
        outcome: 'revoked',
        object: { tokenId: id },
        message: `API token ${id} revoked`,
      });
    return revoked;
  }

  async hasActiveAdmin(): Promise<boolean> {
    const row = await this.db
      .selectFrom('api_tokens')
      .select('id')
      .where('scope', '=', 'admin')
      .where('revoked_at', 'is', null)
      .executeTakeFirst();
    return row !== undefined;
  }
}
