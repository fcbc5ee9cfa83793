import { PostgresAdapter, type SelectQueryBuilder, type Transaction } from 'kysely';

/**
 * `query`, a SELECT in `trx`, holding the rows it reads until `trx` ends, so that writers of those rows run one
 * after the other and each reads what the one before committed: PostgreSQL's SELECT … FOR UPDATE, which writes
 * nothing. SQLite needs no lock and has no FOR UPDATE: Kysely's SQLite driver has one connection, which a
 * transaction holds until it ends, so no other transaction runs meanwhile (and a SQLite file has one server
 * process: sqlite-lock.ts). The engine is read from the transaction's own adapter (Kysely's executor), so
 * callers need not be told it.
 */
export function lockingRows<DB, TB extends keyof DB, O>(
  trx: Transaction<DB>,
  query: SelectQueryBuilder<DB, TB, O>,
): SelectQueryBuilder<DB, TB, O> {
  return trx.getExecutor().adapter instanceof PostgresAdapter ? query.forUpdate() : query;
}
