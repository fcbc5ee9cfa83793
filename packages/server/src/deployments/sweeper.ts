import type { Logger } from 'pino';
import { startPeriodicTask, type PeriodicTask } from '../background/index.js';
import type { DeploymentService } from './deployment-service.js';

/**
 * Runs DeploymentService.sweep every `intervalMs` (timeouts, and settling stages whose last report raced
 * with another replica's). Every replica runs one; the sweep is idempotent. A sweep never overlaps the last.
 */
export function startDeploymentSweeper(
  deployments: Pick<DeploymentService, 'sweep'>,
  options: { intervalMs: number; logger: Logger },
): PeriodicTask {
  return startPeriodicTask(
    async () => {
      const result = await deployments.sweep();
      if (result.timedOut > 0) options.logger.info(result, 'deployment sweep: devices timed out');
    },
    { ...options, failureMessage: 'deployment sweep failed; will retry' },
  );
}
