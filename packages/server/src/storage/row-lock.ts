import type { SelectQueryBuilder } from 'kysely';
import type { DatabaseEngine } from './database.js';

/**
 * `query`, a SELECT in a transaction, holding the rows it reads until the transaction ends, so that writers of
 * those rows run one after the other and each reads what the one before committed: PostgreSQL's SELECT … FOR
 * UPDATE, which writes nothing. SQLite needs no lock and has no FOR UPDATE: Kysely's SQLite driver has one
 * connection, which a transaction holds until it ends, so no other transaction runs meanwhile (and a SQLite file
 * has one server process: sqlite-lock.ts). `engine` is the database's (ServerDatabase.engine), given by the
 * caller: Kysely exposes a transaction's dialect only through internals.
 */
export function lockingRows<DB, TB extends keyof DB, O>(
  engine: DatabaseEngine,
  query: SelectQueryBuilder<DB, TB, O>,
): SelectQueryBuilder<DB, TB, O> {
  return engine === 'postgres' ? query.forUpdate() : query;
}
