import type { Kysely } from 'kysely';
import type { Logger } from 'pino';
import { startPeriodicTask, type PeriodicTask } from '../background/index.js';
import type { DatabaseSchema } from '../storage/index.js';

/** Old enrollment tokens are kept a while after expiry so a late attempt still hears "expired". */
const EXPIRED_TOKEN_GRACE_MS = 7 * 86_400_000;

/**
 * Deletes metrics (whole heartbeats' worth) received before the retention window, past hours' metric usage,
 * long-expired enrollment tokens, and (with `captureRecordsRetentionMs`) capture claims and capture ids older
 * than theirs, with past days' capture usage. Idempotent, so every replica may run it on its own schedule.
 */
export async function pruneExpired(
  db: Kysely<DatabaseSchema>,
  options: { metricsRetentionMs: number; captureRecordsRetentionMs?: number; now?: number },
): Promise<{ metricBatches: number; enrollmentTokens: number; captureRecords: number }> {
  const now = options.now ?? Date.now();
  let captureRecords = 0;
  if (options.captureRecordsRetentionMs !== undefined) {
    const before = now - options.captureRecordsRetentionMs;
    const claims = await db.deleteFrom('capture_objects').where('claimed_at', '<', before).executeTakeFirst();
    const ids = await db.deleteFrom('device_captures').where('stored_at', '<', before).executeTakeFirst();
    captureRecords = Number(claims.numDeletedRows) + Number(ids.numDeletedRows);
    // The daily quota counts only the UTC day under way; a day's grace for clocks.
    await db
      .deleteFrom('device_capture_usage')
      .where('day', '<', new Date(now - 2 * 86_400_000).toISOString().slice(0, 10))
      .execute();
  }
  const metrics = await db
    .deleteFrom('device_metric_batches')
    .where('received_at', '<', now - options.metricsRetentionMs)
    .executeTakeFirst();
  // Hourly metric usage (the per-device quota) matters only for the hour under way; an hour's grace for clocks.
  await db
    .deleteFrom('device_metric_usage')
    .where('hour_start', '<', now - 2 * 3_600_000)
    .execute();
  const tokens = await db
    .deleteFrom('enrollment_tokens')
    .where('expires_at', '<', now - EXPIRED_TOKEN_GRACE_MS)
    .executeTakeFirst();
  return {
    metricBatches: Number(metrics.numDeletedRows),
    enrollmentTokens: Number(tokens.numDeletedRows),
    captureRecords,
  };
}

/** Runs pruneExpired every `intervalMs` until stopped (never two at once); failures are logged and retried. */
export function startRetentionSweeper(
  db: Kysely<DatabaseSchema>,
  options: {
    metricsRetentionMs: number;
    captureRecordsRetentionMs?: number;
    intervalMs: number;
    logger: Logger;
  },
): PeriodicTask {
  return startPeriodicTask(
    async () => {
      const removed = await pruneExpired(db, {
        metricsRetentionMs: options.metricsRetentionMs,
        ...(options.captureRecordsRetentionMs !== undefined && {
          captureRecordsRetentionMs: options.captureRecordsRetentionMs,
        }),
      });
      if (removed.metricBatches > 0 || removed.enrollmentTokens > 0 || removed.captureRecords > 0)
        options.logger.debug(removed, 'retention sweep');
    },
    {
      intervalMs: options.intervalMs,
      logger: options.logger,
      failureMessage: 'retention sweep failed; will retry',
    },
  );
}
