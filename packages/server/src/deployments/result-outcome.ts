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
 * True when `incoming` is a progress report (INPROGRESS, HELD, …) that must not replace `stored`, the device's
 * last result as kept (JSON text or parsed): a success or failure of the same DeploymentName that the report
 * cannot be shown to be newer than. The agent's heartbeat loop and its result call are not ordered, so a
 * heartbeat built while the update ran can be written after the final result, and the agent never repeats a
 * result it has reported. Only DeploymentStartTime tells attempts apart, and EdgeFleet's agent sends it on
 * every result, progress and final: when both carry one, a different one is a new attempt's report. When
 * either lacks it (another Edge Manager client; the member is optional), the two cannot be told apart, and the
 * final result stays: dropping a new attempt's progress only delays what that attempt's final result will
 * show, while keeping a stale progress report would show the device under way until its next deployment.
 * (A target row needs none of this: the server knows which attempt it handed out; see device-results.ts.)
 * Anything that does not parse as a result outranks nothing.
 */
export function isStaleProgress(stored: unknown, incoming: DeploymentResult): boolean {
  if (classifyResult(incoming).kind !== 'progress') return false;
  const final = storedFinalResult(stored);
  if (final === undefined || final.DeploymentName !== incoming.DeploymentName) return false;
  return !(
    final.DeploymentStartTime !== undefined &&
    incoming.DeploymentStartTime !== undefined &&
    final.DeploymentStartTime !== incoming.DeploymentStartTime
  );
}

/**
 * True when `incoming` is a progress report of the very attempt that `stored` (the device's kept result) ended:
 * both carry the same DeploymentName and DeploymentStartTime. Without a start time on both, false: nothing
 * shows it to be that attempt's.
 */
export function isProgressOfEndedAttempt(stored: unknown, incoming: DeploymentResult): boolean {
  if (classifyResult(incoming).kind !== 'progress') return false;
  const final = storedFinalResult(stored);
  return (
    final !== undefined &&
    final.DeploymentName === incoming.DeploymentName &&
    final.DeploymentStartTime !== undefined &&
    final.DeploymentStartTime === incoming.DeploymentStartTime
  );
}

/** The kept result when it is a final one (success or failure); undefined for progress or what does not parse. */
function storedFinalResult(stored: unknown): DeploymentResult | undefined {
  let value = stored;
  if (typeof stored === 'string') {
    try {
      value = JSON.parse(stored);
    } catch {
      return undefined;
    }
  }
  const parsed = storedResultSchema.safeParse(value);
  if (!parsed.success) return undefined;
  const final = parsed.data as DeploymentResult;
  return classifyResult(final).kind === 'progress' ? undefined : final;
}
