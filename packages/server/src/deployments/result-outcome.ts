/**
 * What a device's DeploymentResult says (final success, failure, or still under way), and which reports a
 * stored final result outranks. Pure functions, no storage: devices/ uses them for the device's own row.
 */
import type { DeploymentResult } from '@edgefleet/core';
import { z } from 'zod';

/**
 * A result as the server keeps it (already parsed once: times in ms), read back for what decides its kind and
 * attempt; its other members are kept as they are. Not the device API's schema, which would convert the
 * stored milliseconds again.
 */
const storedResultSchema = z.looseObject({
  DeploymentName: z.string().optional(),
  DeploymentStatus: z.string().optional(),
  DeploymentStartTime: z.number().optional(),
  DeploymentModels: z.array(z.looseObject({ Status: z.enum(['SUCCESS', 'FAIL']).optional() })).optional(),
});

export type ResultOutcome =
  | { kind: 'success'; message: string | null }
  | {
      kind: 'failure';
      message: string;
      /**
       * A model's new version was switched in and failed (the agent's FailedAfterSwitch): final, never
       * retried, since a retry would switch the failing version in again. False when the device does not say
       * (an older agent): retried as any failure.
       */
      afterSwitch: boolean;
    }
  | { kind: 'progress'; message: string | null };

const SUCCESS_STATUSES = new Set(['SUCCESS', 'SUCCEEDED', 'DEPLOYED', 'COMPLETED', 'COMMITTED']);
const ROLLED_BACK_STATUSES = new Set(['ROLLEDBACK', 'ROLLED-BACK']);
const FAILURE_STATUSES = new Set(['FAIL', 'FAILED', ...ROLLED_BACK_STATUSES, 'ERROR']);
/**
 * Overall statuses that say the device is not done: one model may already be FAIL while the device still
 * rolls the others back (ROLLBACK_ON_FAILURE), so only the final report decides.
 */
const UNDER_WAY_STATUSES = new Set(['INPROGRESS', 'IN_PROGRESS', 'HELD', 'PENDING']);

/**
 * Reads a device's report: a final one with any model FAIL (or a failed overall status) is a failure; all
 * SUCCESS is success; an overall status that is still under way (INPROGRESS, HELD) is progress.
 */
export function classifyResult(result: DeploymentResult): ResultOutcome {
  const models = result.DeploymentModels ?? [];
  const failed = models.filter((m) => m.Status === 'FAIL');
  const status = (result.DeploymentStatus ?? '').toUpperCase();
  if (!UNDER_WAY_STATUSES.has(status) && (failed.length > 0 || FAILURE_STATUSES.has(status))) {
    const reasons = failed.map(
      (m) =>
        `${m.ModelHandle ?? m.ModelName ?? 'model'}: ${m.StatusReason ?? 'failed'}` +
        (m.RollbackFailureReason !== undefined ? ` (rollback failed: ${m.RollbackFailureReason})` : ''),
    );
    // The device's message may already name each failed model (the agent's does): say each reason once.
    const overall = result.DeploymentStatusMessage ?? '';
    const message = [overall, ...reasons.filter((r) => !overall.includes(r))].filter(Boolean).join('; ');
    return {
      kind: 'failure',
      message: message || `the device reported ${status || 'FAIL'}`,
      // A result without the member (an older agent, Edge Manager's agent over the facade) still says it when
      // a rollback was attempted: a failed rollback, or an overall ROLLEDBACK (the version had been switched in).
      // With no failed model listed, the overall status alone says it.
      afterSwitch:
        failed.length === 0
          ? ROLLED_BACK_STATUSES.has(status)
          : failed.some(
              (m) =>
                m.FailedAfterSwitch ??
                (m.RollbackFailureReason !== undefined || ROLLED_BACK_STATUSES.has(status)),
            ),
    };
  }
  const allSucceeded = models.length > 0 && models.every((m) => m.Status === 'SUCCESS');
  if (SUCCESS_STATUSES.has(status) || (status === '' && allSucceeded)) {
    return { kind: 'success', message: result.DeploymentStatusMessage ?? null };
  }
  // A device message that only restates the status ("INPROGRESS" and "in progress") is said once.
  const plain = (text: string) => text.toLowerCase().replace(/[\s_-]/g, '');
  const detail = result.DeploymentStatusMessage;
  const restated = detail !== undefined && plain(detail) === plain(status);
  return {
    kind: 'progress',
    message: [status, restated ? undefined : detail].filter(Boolean).join(': ') || null,
  };
}

/**
 * True when `incoming` is a progress report (INPROGRESS, HELD, …) of the deployment attempt that `stored`
 * already ended (a success or failure of the same DeploymentName and DeploymentStartTime; both absent
 * counts as the same). Such a report is stale: the agent's heartbeat loop and its result call are not
 * ordered, so a heartbeat built while the update ran can be written after the final result, and the agent
 * never repeats a result it has reported. `stored` is the device's last result as kept (JSON text or
 * parsed); anything that does not parse as a result outranks nothing.
 */
export function isStaleProgress(stored: unknown, incoming: DeploymentResult): boolean {
  if (classifyResult(incoming).kind !== 'progress') return false;
  let value = stored;
  if (typeof stored === 'string') {
    try {
      value = JSON.parse(stored);
    } catch {
      return false;
    }
  }
  const parsed = storedResultSchema.safeParse(value);
  if (!parsed.success) return false;
  const final = parsed.data as DeploymentResult;
  return (
    final.DeploymentName === incoming.DeploymentName &&
    final.DeploymentStartTime === incoming.DeploymentStartTime &&
    classifyResult(final).kind !== 'progress'
  );
}
