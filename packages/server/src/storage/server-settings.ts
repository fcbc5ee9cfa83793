import type { Kysely } from 'kysely';
import type { DatabaseSchema } from './schema.js';

/**
 * Stores `value` under `key` unless a value is already there, and returns the stored one: the first server
 * to start decides, every later one (or replica) learns what it decided, also when two start at once.
 */
export async function claimServerSetting(
  db: Kysely<DatabaseSchema>,
  key: string,
  value: string,
): Promise<string> {
  await db
    .insertInto('server_settings')
    .values({ key, value })
    .onConflict((oc) => oc.column('key').doNothing())
    .execute();
  const row = await db
    .selectFrom('server_settings')
    .select('value')
    .where('key', '=', key)
    .executeTakeFirstOrThrow();
  return row.value;
}
