import { sql, type RawBuilder } from 'kysely';
import type { Logger } from 'pino';
import type { DatabaseEngine, ServerDatabase } from './database.js';

/**
 * The database's clock. Replicas compare times other replicas wrote (leases, deadlines) by it, never by their own
 * clocks, so that a replica whose clock is off neither times out another's healthy work nor lets a dead one's
 * lease run on.
 */

/** The database's clock in epoch ms, as an SQL expression. */
export function databaseNowMs(engine: DatabaseEngine): RawBuilder<number> {
  return engine === 'postgres'
    ? sql<number>`(extract(epoch from clock_timestamp()) * 1000)::bigint`
    : sql<number>`cast((julianday('now') - 2440587.5) * 86400000 as integer)`;
}

/** Reads the database's clock (epoch ms): one round trip. */
export type DatabaseClock = () => Promise<number>;

export function databaseClock(database: Pick<ServerDatabase, 'db' | 'engine'>): DatabaseClock {
  return async () => {
    const { rows } = await sql<{
      now: number | string;
    }>`select ${databaseNowMs(database.engine)} as now`.execute(database.db);
    return Number(rows[0]!.now);
  };
}

/** The clock leases are judged by: the database's when given, else `now` (tests and a single process). */
export function leaseClock(databaseNow: DatabaseClock | undefined, now: () => number): DatabaseClock {
  return databaseNow ?? (() => Promise.resolve(now()));
}

/** Past this difference between the process clock and the database's, the server warns at start. */
export const CLOCK_SKEW_WARN_MS = 5_000;

/**
 * Compares this process's clock with the database's once (at start) and logs `clock_skew` at warn past
 * CLOCK_SKEW_WARN_MS: leases and deadlines are immune (database clock), but times this server stamps by its own
 * clock (events, heartbeats, results) are off by as much. Returns the difference (process minus database, ms).
 */
export async function warnOfClockSkew(
  clock: DatabaseClock,
  logger: Pick<Logger, 'warn'>,
  now: () => number = Date.now,
): Promise<number> {
  const before = now();
  const database = await clock();
  const after = now();
  // The database read its clock somewhere in the round trip: compare with the middle of it.
  const skewMs = Math.round((before + after) / 2 - database);
  if (Math.abs(skewMs) > CLOCK_SKEW_WARN_MS) {
    logger.warn(
      { event: 'clock_skew', skewMs },
      `this server's clock is ${Math.abs(skewMs / 1000).toFixed(1)} s ${skewMs > 0 ? 'ahead of' : 'behind'} the database's; synchronise the clocks of every server replica and of the database host (NTP): leases and deadlines follow the database's clock, but event, heartbeat and result times this server stamps are off by as much`,
    );
  }
  return skewMs;
}
