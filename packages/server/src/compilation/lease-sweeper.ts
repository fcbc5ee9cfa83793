import type { Logger } from 'pino';
import { startPeriodicTask, type PeriodicTask } from '../background/index.js';
import type { CompilationJobStore } from './compilation-jobs.js';

/**
 * Fails compilation imports whose lease ran out (CompilationJobStore.failExpired) every half lease, at most
 * every minute, so a job whose server died is FAILED within about 1.5 leases. Every replica runs one; a sweep
 * is idempotent and never overlaps the last.
 */
export function startCompilationLeaseSweeper(
  jobs: Pick<CompilationJobStore, 'failExpired'>,
  options: { leaseMs: number; logger: Logger },
): PeriodicTask {
  return startPeriodicTask(() => failExpiredImports(jobs, options.logger), {
    intervalMs: Math.min(60_000, Math.max(10, Math.floor(options.leaseMs / 2))),
    logger: options.logger,
    failureMessage: 'compilation lease sweep failed; will retry',
  });
}

/** One sweep: fails the expired imports and logs which. */
export async function failExpiredImports(
  jobs: Pick<CompilationJobStore, 'failExpired'>,
  logger: Logger,
): Promise<void> {
  const failed = await jobs.failExpired();
  if (failed.length > 0)
    logger.warn({ compilationJobs: failed }, 'failed compilation imports whose server stopped renewing them');
}
