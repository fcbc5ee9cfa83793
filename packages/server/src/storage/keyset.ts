import { sql, type Expression, type SqlBool } from 'kysely';

/** A row's place in (created_at, name) order: where a page ended. */
export interface KeysetPosition {
  createdAt: number;
  name: string;
}

/**
 * Keyset paging over a (time, name) pair of columns: the rows after `position` in ascending order, or before it in
 * descending order, as one predicate an index on (time, name) can seek to. `time` and `name` are column references
 * written in code (`'p.created_at'`), never input.
 */
export function pastPosition(
  time: string,
  name: string,
  position: KeysetPosition,
  direction: 'asc' | 'desc',
): Expression<SqlBool> {
  const beyond = sql.raw(direction === 'asc' ? '>' : '<');
  return sql<SqlBool>`(${sql.ref(time)} ${beyond} ${position.createdAt} or (${sql.ref(time)} = ${position.createdAt} and ${sql.ref(name)} ${beyond} ${position.name}))`;
}
