import type { Logger } from 'pino';
import type { DeploymentService } from './deployment-service.js';

/**
 * Runs DeploymentService.sweep every `intervalMs` (timeouts, and settling stages whose last report raced
 * with another replica's). Every replica runs one; the sweep is idempotent. A sweep never overlaps the last.
 */
export function startDeploymentSweeper(
  deployments: Pick<DeploymentService, 'sweep'>,
  options: { intervalMs: number; logger: Logger },
): { stop(): Promise<void> } {
  let running: Promise<unknown> | undefined;
  const timer = setInterval(() => {
    if (running !== undefined) return;
    running = deployments
      .sweep()
      .then(
        (result) => {
          if (result.timedOut > 0) options.logger.info(result, 'deployment sweep: devices timed out');
        },
        (error: unknown) => options.logger.warn({ err: error }, 'deployment sweep failed; will retry'),
      )
      .finally(() => {
        running = undefined;
      });
  }, options.intervalMs);
  timer.unref();
  return {
    stop: async () => {
      clearInterval(timer);
      await running;
    },
  };
}
