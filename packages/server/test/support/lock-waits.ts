/** Waiting, on PostgreSQL, until another transaction's statement waits for a lock one of the test's holds. */
import { sql, type Kysely } from 'kysely';
import type { DatabaseSchema } from '../../src/storage/schema.js';

/**
 * Until a statement of another transaction on this test's database waits for a lock (PostgreSQL's pg_locks).
 * Scoped by the waiting backend's database, not the lock's: a row-lock wait is on a transaction id, a lock no
 * database owns; and a shared cluster (EDGEFLEET_TEST_DATABASE_URL) runs other suites' waits meanwhile.
 * `eachRound` runs after each look that found none waiting (it throws to give up).
 */
export async function untilALockWaits(db: Kysely<DatabaseSchema>, eachRound?: () => void): Promise<void> {
  for (;;) {
    const waiting = await sql<{ n: number }>`select count(*)::int as n from pg_locks
      where not granted
        and pid in (select pid from pg_stat_activity where datname = current_database())`.execute(db);
    if ((waiting.rows[0]?.n ?? 0) > 0) return;
    eachRound?.();
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
