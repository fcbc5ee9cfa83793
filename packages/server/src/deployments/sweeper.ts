import type { Logger } from 'pino';
import { startPeriodicTask, type PeriodicTask } from '../background/index.js';
import type { DeploymentService } from './deployment-service.js';
import type { RetentionCursor } from './plan-retention.js';

/**
 * Runs DeploymentService.sweep every `intervalMs` (timeouts, and settling stages whose last report raced
 * with another replica's). Every replica runs one; the sweep is idempotent. A sweep never overlaps the last.
 */
export function startDeploymentSweeper(
  deployments: Pick<DeploymentService, 'sweep'>,
  options: { intervalMs: number; logger: Logger },
): PeriodicTask {
  // Plans whose handle rows could not be filled in, logged once each (the sweep meets them again every run).
  const logged = new Set<string>();
  return startPeriodicTask(
    async () => {
      const result = await deployments.sweep();
      if (result.timedOut > 0)
        options.logger.info({ timedOut: result.timedOut }, 'deployment sweep: devices timed out');
      for (const { plan, reason } of result.unreadablePlans) {
        if (logged.has(plan) || logged.size >= 1000) continue;
        logged.add(plan);
        options.logger.error(
          { plan, reason },
          'deployment sweep: plan skipped, its stored model configs do not parse; no device is given it until it is repaired or deleted',
        );
      }
    },
    { ...options, failureMessage: 'deployment sweep failed; will retry' },
  );
}

/**
 * Runs DeploymentService.deleteExpiredPlans every `intervalMs` (deployments.planRetentionDays); every replica
 * runs one, the sweep is idempotent. Each plan deleted is logged by the service; a sweep that deleted any also
 * logs how many it kept.
 */
export function startPlanRetentionSweeper(
  deployments: Pick<DeploymentService, 'deleteExpiredPlans'>,
  options: { retentionMs: number; intervalMs: number; logger: Logger },
): PeriodicTask {
  // Where the last sweep stopped, when it judged a full batch: this sweeper's own, so nothing is shared.
  let after: RetentionCursor | undefined;
  return startPeriodicTask(
    async () => {
      const { deleted, kept, next } = await deployments.deleteExpiredPlans(options.retentionMs, after);
      after = next;
      if (deleted.length > 0)
        options.logger.info(
          { deleted: deleted.length, kept },
          `plan retention sweep: ${deleted.length} finished plan(s) deleted; ${kept} past retention kept (a device's desired state comes from them)`,
        );
    },
    {
      intervalMs: options.intervalMs,
      logger: options.logger,
      failureMessage: 'plan retention sweep failed; will retry',
    },
  );
}
