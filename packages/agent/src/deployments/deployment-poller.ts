import {
  LineLimiter,
  getDeploymentsResultSchema,
  type DeviceIds,
  type GetDeploymentsResult,
} from '@edgefleet/core';
import { sleepUnlessAborted } from '../retry/index.js';
import { DeploymentStorageFullError, type EngineLogger, type UpdateEngine } from './update-engine.js';

/** The device API's GetDeployments route (relative to sagemaker_edge_core_endpoint_override). */
export const GET_DEPLOYMENTS_PATH = 'api/v1/device/deployments';

/** What the poller needs of the device API client (fleet/device-api.ts's DeviceApiClient). */
export interface DeploymentsSource {
  post(
    operation: string,
    body: unknown,
    schema: typeof getDeploymentsResultSchema,
    signal?: AbortSignal,
  ): Promise<GetDeploymentsResult>;
}

export interface DeploymentPollerOptions {
  engine: Pick<UpdateEngine, 'resume' | 'apply'>;
  source: DeploymentsSource;
  ids: DeviceIds;
  intervalMs: number;
  logger: EngineLogger;
  random?: () => number;
  now?: () => number;
}

export interface DeploymentPoller {
  /** Cancels the wait and the request in flight; resolves once the loop has stopped. */
  stop(): Promise<void>;
}

/**
 * Resumes what a crash interrupted, then asks for the device's deployments at start-up and every interval
 * (±10% jitter, so a fleet does not poll in lockstep). A failed poll is logged and retried at the next one; a
 * device offline for days converges at its first poll back.
 */
export function startDeploymentPoller(options: DeploymentPollerOptions): DeploymentPoller {
  const { engine, source, ids, logger } = options;
  const random = options.random ?? Math.random;
  const abort = new AbortController();
  let lastError = '';
  const storageFullLines = new LineLimiter({ ...(options.now && { now: options.now }) });
  let storageFull = false;

  /**
   * The device's storage is full: one line, then at most one a minute with a count, without a stack (the
   * device's state, not a bug); status and the heartbeat's deployment result say it meanwhile.
   */
  const reportStorageFull = (error: DeploymentStorageFullError): void => {
    storageFull = true;
    const admitted = storageFullLines.admit('storage-full');
    if (admitted === undefined) return;
    logger.warn(
      {
        event: 'deployment-storage-full',
        reason: error.message,
        ...(admitted.leftOut > 0 && { passesNotLogged: admitted.leftOut }),
      },
      `${error.message} (retried at each poll; ` +
        (admitted.leftOut > 0
          ? `${admitted.leftOut} more failed pass(es) since the last line, not logged)`
          : 'repeats logged at most once a minute)'),
    );
  };
  const passed = (): void => {
    if (!storageFull) return;
    storageFull = false;
    storageFullLines.forget('storage-full');
    logger.info(
      { event: 'deployment-storage-writable' },
      "the update engine's state can be written again; deployments go on",
    );
  };

  const loop = async () => {
    await engine.resume().then(passed, (error: unknown) => {
      if (error instanceof DeploymentStorageFullError) reportStorageFull(error);
      else
        logger.error(
          { event: 'deployment-resume-failed', err: error },
          `resuming deployments failed: ${(error as Error).message}`,
        );
    });
    while (!abort.signal.aborted) {
      let result: GetDeploymentsResult | undefined;
      try {
        result = await source.post(GET_DEPLOYMENTS_PATH, ids, getDeploymentsResultSchema, abort.signal);
        lastError = '';
      } catch (error) {
        if (abort.signal.aborted) break;
        const message = (error as Error).message;
        if (message !== lastError)
          logger.warn(
            { event: 'deployment-poll-failed', reason: message },
            `GetDeployments failed: ${message}; retrying at the next poll`,
          );
        lastError = message;
      }
      // Without an answer, updates already under way still go on (a download resumes, a rollback completes).
      await engine.apply(result?.Deployments ?? []).then(passed, (error: unknown) => {
        if (error instanceof DeploymentStorageFullError) reportStorageFull(error);
        else
          logger.error(
            { event: 'deployment-apply-failed', err: error },
            `applying deployments failed: ${(error as Error).message}; retrying at the next poll`,
          );
      });
      await sleepUnlessAborted(Math.round(options.intervalMs * (0.9 + 0.2 * random())), abort.signal);
    }
  };
  const running = loop().catch((error: unknown) =>
    logger.error(
      { event: 'deployment-poller-failed', err: error },
      `the deployment poller stopped unexpectedly: ${(error as Error).message}`,
    ),
  );
  let stopping: Promise<void> | undefined;
  return {
    stop() {
      stopping ??= (async () => {
        abort.abort();
        await running;
      })();
      return stopping;
    },
  };
}
