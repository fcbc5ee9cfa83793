import { sql, type RawBuilder } from 'kysely';

/** Escapes % _ and \ for a LIKE pattern used with ESCAPE '\'. */
function escapeLike(value: string): string {
  return value.replace(/[\\%_]/g, (c) => `\\${c}`);
}

/**
 * `column` contains `value`, ignoring case, with the same meaning on SQLite and PostgreSQL (SQLite's LIKE
 * ignores ASCII case and PostgreSQL's does not, so both sides are lowered; % and _ in `value` are literal).
 */
export function containsIgnoringCase(column: string, value: string): RawBuilder<boolean> {
  return sql<boolean>`lower(${sql.ref(column)}) like ${`%${escapeLike(value.toLowerCase())}%`} escape '\\'`;
}

/**
 * `column` contains `value` (% and _ in `value` are literal). SQLite's LIKE ignores ASCII case and PostgreSQL's
 * does not, so on SQLite this may also match other cases: for a pre-filter whose matches are checked exactly.
 */
export function containsLoosely(column: string, value: string): RawBuilder<boolean> {
  return sql<boolean>`${sql.ref(column)} like ${`%${escapeLike(value)}%`} escape '\\'`;
}
