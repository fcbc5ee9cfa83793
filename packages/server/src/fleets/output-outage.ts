/**
 * A fleet's output location that capture uploads cannot use (its bucket gone, access refused, S3 not
 * answering): kept on the fleet's row so that every replica's fleet report and console show it, not only the
 * log of the replica that saw it. Written on a change of state (the first failure, a different problem, the
 * first upload that lands again) and, while failures go on, at most once per OUTAGE_LAST_FAILURE_RESOLUTION_MS
 * to move the last failure's time on; never per upload: the upload path reads the state with the fleet's
 * output location, which it reads anyway. One row per fleet, not a log of failures.
 */
import { sql, type Kysely } from 'kysely';
import { laterOf, type DatabaseSchema } from '../storage/index.js';

/** What the fleet report says of an output that cannot be used; absent while uploads land. */
export interface FleetOutputOutage {
  /** The output location the failing uploads were written to (the fleet's current one). */
  outputLocation: string;
  /** Epoch ms of the first failed upload of this outage. */
  since: number;
  /** Epoch ms of the last failed upload of this outage, to within OUTAGE_LAST_FAILURE_RESOLUTION_MS. */
  lastFailureAt: number;
  /** The BlobStoreProblem: missing-bucket, forbidden, credentials, unreachable. */
  problem: string;
  /** What is wrong and what would fix it; never the S3 endpoint or credentials. */
  reason: string;
}

/**
 * How stale the recorded last failure may be while uploads keep failing: a failure this soon after the recorded
 * one writes nothing, so an outage costs one write a minute per fleet, however many devices retry.
 */
export const OUTAGE_LAST_FAILURE_RESOLUTION_MS = 60_000;

/** Whether a failure at `at` should be written: a new or different outage, or the recorded last one is stale. */
export function outageNeedsRecording(
  recorded: { problem: string | null; lastFailureAt: number | null },
  failure: { problem: string; at: number },
): boolean {
  return (
    recorded.problem !== failure.problem ||
    recorded.lastFailureAt === null ||
    failure.at - recorded.lastFailureAt >= OUTAGE_LAST_FAILURE_RESOLUTION_MS
  );
}

/** Longest reason kept: an S3 error's name and code, not a document. */
const MAX_REASON_CHARS = 500;

/**
 * Marks the fleet's output `location` unusable for `problem` as of a failure at `at`, keeping the start of an
 * outage already marked (a newer failure's problem replaces the reason and moves the last failure on; an older
 * one, written late, changes neither). Does nothing when the fleet's output is no longer `location` (an
 * operator moved it while the upload ran).
 */
export async function markOutputOutage(
  db: Kysely<DatabaseSchema>,
  fleet: string,
  location: string,
  outage: { problem: string; reason: string; at: number },
): Promise<void> {
  // Replicas (or uploads read before either wrote) may write an older failure after a newer one: the last
  // failure never moves back, and the problem and reason stay the newer failure's.
  const newer = <T>(column: 'output_outage_problem' | 'output_outage_reason', value: T) =>
    sql<T>`case when ${sql.ref('output_outage_last_failure_at')} > cast(${outage.at} as bigint) then ${sql.ref(column)} else ${value} end`;
  await db
    .updateTable('fleets')
    .set((eb) => ({
      output_outage_since: eb.fn.coalesce('output_outage_since', eb.val(outage.at)),
      output_outage_problem: newer('output_outage_problem', outage.problem),
      output_outage_reason: newer('output_outage_reason', outage.reason.slice(0, MAX_REASON_CHARS)),
      output_outage_last_failure_at: laterOf('output_outage_last_failure_at', outage.at),
    }))
    .where('name', '=', fleet)
    .where('output_s3_location', '=', location)
    .execute();
}

/** Clears an outage of the fleet's output `location`: an upload there landed. */
export async function clearOutputOutage(
  db: Kysely<DatabaseSchema>,
  fleet: string,
  location: string,
): Promise<void> {
  await db
    .updateTable('fleets')
    .set({
      output_outage_since: null,
      output_outage_problem: null,
      output_outage_reason: null,
      output_outage_last_failure_at: null,
    })
    .where('name', '=', fleet)
    .where('output_s3_location', '=', location)
    .where('output_outage_since', 'is not', null)
    .execute();
}
