import { sql, type RawBuilder } from 'kysely';

/**
 * The later of `column` (epoch milliseconds) and `at`, the same on SQLite and PostgreSQL (their max/greatest
 * differ): for writers whose `at` may be older than what another writer stored meanwhile (a heartbeat
 * received earlier, applied later; another replica's clock), so that a row's time never moves back.
 */
export function laterOf(column: string, at: number): RawBuilder<number> {
  return sql<number>`case when ${sql.ref(column)} > cast(${at} as bigint) then ${sql.ref(column)} else cast(${at} as bigint) end`;
}
