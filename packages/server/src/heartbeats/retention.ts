import type { Kysely } from 'kysely';
import type { Logger } from 'pino';
import { startPeriodicTask, type PeriodicTask } from '../background/index.js';
import type { DatabaseSchema } from '../storage/index.js';

/** Old enrollment tokens are kept a while after expiry so a late attempt still hears "expired". */
const EXPIRED_TOKEN_GRACE_MS = 7 * 86_400_000;

/**
 * Deletes metrics (whole heartbeats' worth) received before the retention window, past hours' metric usage,
 * and long-expired enrollment tokens. Idempotent, so every replica may run it on its own schedule.
 */
export async function pruneExpired(
  db: Kysely<DatabaseSchema>,
  options: { metricsRetentionMs: number; now?: number },
): Promise<{ metricBatches: number; enrollmentTokens: number }> {
  const now = options.now ?? Date.now();
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
  return { metricBatches: Number(metrics.numDeletedRows), enrollmentTokens: Number(tokens.numDeletedRows) };
}

/** Runs pruneExpired every `intervalMs` until stopped (never two at once); failures are logged and retried. */
export function startRetentionSweeper(
  db: Kysely<DatabaseSchema>,
  options: { metricsRetentionMs: number; intervalMs: number; logger: Logger },
): PeriodicTask {
  return startPeriodicTask(
    async () => {
      const removed = await pruneExpired(db, { metricsRetentionMs: options.metricsRetentionMs });
      if (removed.metricBatches > 0 || removed.enrollmentTokens > 0)
        options.logger.debug(removed, 'retention sweep');
    },
    {
      intervalMs: options.intervalMs,
      logger: options.logger,
      failureMessage: 'retention sweep failed; will retry',
    },
  );
}
