/**
 * What a device's DeploymentResult means for its target row: success, failure (then a retry while attempts
 * remain and the failure came before the switch, else FAILED), or still under way. Heartbeats repeat the last result; a result identical to the
 * one applied before (same digest) changes nothing, so a failure is counted once per attempt.
 */
import { createHash } from 'node:crypto';
import type { DeploymentResult } from '@edgefleet/core';
import type { Transaction } from 'kysely';
import { lastDeploymentResults } from '../devices/index.js';
import { laterOf, type DatabaseSchema } from '../storage/index.js';
import { classifyResult, isProgressOfEndedAttempt } from './result-outcome.js';
import { planOptions, recordEvent, type RecordedEvent } from './stage-progress.js';

export { classifyResult, type ResultOutcome } from './result-outcome.js';

export interface ReportedResult {
  deviceName: string;
  /** The reporting device's fleet, from its authenticated identity (never from the report's body). */
  fleetName: string;
  result: DeploymentResult;
  receivedAt: number;
}

/**
 * A device's last report said HELD (its application holds the update lock): the timeout sweep leaves it alone,
 * since the device is alive and waiting by design; it shows as INPROGRESS with this message, and an operator
 * can cancel it.
 */
const HELD_MESSAGE_PREFIX = 'HELD';
export function isHeldMessage(message: string | null): boolean {
  return (
    message !== null && (message === HELD_MESSAGE_PREFIX || message.startsWith(`${HELD_MESSAGE_PREFIX}:`))
  );
}

function digestOf(result: DeploymentResult): string {
  return createHash('sha256').update(JSON.stringify(result)).digest('hex');
}

/**
 * Applies reported results to the devices' target rows in the caller's transaction; returns the stages whose
 * devices changed, for settling. Results for a plan the device is not targeted by (a newcomer that got a
 * completed plan's models) are kept only in the device's record (devices/), not here. A target row is
 * matched by plan, device name and fleet: a device of another fleet that was given a deregistered device's
 * name must not act on that fleet's rollout.
 */
/** How applyResults judges a failure older than the attempt it would end. */
export interface StaleResultRule {
  /**
   * How far behind the server's clock a device's may be (heartbeat.maxClockSkewSeconds, the window heartbeat
   * times are held to): a failure that ended more than this before the attempt was handed out is not its.
   */
  maxClockSkewMs: number;
  /** Hears each failure left out as stale (the attempt's start, epoch ms). */
  onStale?: (report: ReportedResult, attemptStartedAt: number) => void;
}

/**
 * A failure that ended (or, with no end time, started) before the attempt the server handed out, beyond the clock
 * window: an earlier attempt's, or a replay. Only failures are judged so: a success may rightly carry old times
 * (the agent reports a deployment it committed before, offered again, with that commit's times), and what it
 * claims is the device's own state either way; a failure would end an attempt, or fail a DEPLOYED target.
 */
function isFailureBeforeAttempt(
  result: DeploymentResult,
  attemptStartedAt: number | null,
  maxClockSkewMs: number,
): attemptStartedAt is number {
  const reportedAt = result.DeploymentEndTime ?? result.DeploymentStartTime;
  return (
    attemptStartedAt !== null && reportedAt !== undefined && reportedAt < attemptStartedAt - maxClockSkewMs
  );
}

export async function applyResults(
  trx: Transaction<DatabaseSchema>,
  reports: ReportedResult[],
  stale: StaleResultRule,
  recorded: RecordedEvent[],
): Promise<{ plan: string; stage: string }[]> {
  const named = reports.filter((r) => r.result.DeploymentName !== undefined);
  if (named.length === 0) return [];
  const rows = await trx
    .selectFrom('deployment_targets')
    .innerJoin('deployment_stages', (join) =>
      join
        .onRef('deployment_stages.plan_name', '=', 'deployment_targets.plan_name')
        .onRef('deployment_stages.name', '=', 'deployment_targets.stage_name'),
    )
    .select([
      'deployment_targets.plan_name',
      'deployment_targets.device_name',
      'deployment_targets.fleet_name',
      'deployment_targets.stage_name',
      'deployment_targets.status',
      'deployment_targets.attempts',
      'deployment_targets.result_digest',
      'deployment_targets.started_at',
      'deployment_stages.status as stage_status',
      'deployment_stages.failure_policy',
    ])
    .where(
      'deployment_targets.device_name',
      'in',
      named.map((r) => r.deviceName),
    )
    .execute();
  const keyOf = (plan: string, device: string, fleet: string) => `${plan}\u0000${device}\u0000${fleet}`;
  const byKey = new Map(rows.map((row) => [keyOf(row.plan_name, row.device_name, row.fleet_name), row]));
  // A progress report is news only for a target the device holds now (INPROGRESS: the server handed it an
  // attempt that has not ended). Any other status says the attempt it reports on has ended, whatever start time
  // it carries (a heartbeat written after the device's result call): it must not put "in progress" on a
  // DEPLOYED target's message, nor on a failed attempt's "retrying" one. On an INPROGRESS target it is stale
  // only when it carries the start time of the attempt the device's kept final result ended (the device took
  // the retry since); without start times the device holds an attempt, so it is that attempt's news (a HELD
  // must reach the target, or the timeout sweep fails a device that waits by design).
  const progress = named.filter((r) => classifyResult(r.result).kind === 'progress');
  const kept = await lastDeploymentResults(trx, progress);
  const touched = new Map<string, { plan: string; stage: string }>();
  for (const report of named) {
    const row = byKey.get(keyOf(report.result.DeploymentName ?? '', report.deviceName, report.fleetName));
    // A cancelled or finished-as-failed device keeps its status: a late report does not revive it.
    if (row === undefined || !['READYTODEPLOY', 'INPROGRESS', 'DEPLOYED'].includes(row.status)) continue;
    const digest = digestOf(report.result);
    if (row.result_digest === digest) continue;
    const outcome = classifyResult(report.result);
    const attemptStartedAt = row.started_at === null ? null : Number(row.started_at);
    if (
      outcome.kind === 'failure' &&
      isFailureBeforeAttempt(report.result, attemptStartedAt, stale.maxClockSkewMs)
    ) {
      stale.onStale?.(report, attemptStartedAt);
      continue;
    }
    if (
      outcome.kind === 'progress' &&
      (row.status !== 'INPROGRESS' || isProgressOfEndedAttempt(kept.get(report.deviceName), report.result))
    )
      continue;
    const at = report.receivedAt;
    const where = trx
      .updateTable('deployment_targets')
      .where('plan_name', '=', row.plan_name)
      .where('device_name', '=', row.device_name)
      .where('fleet_name', '=', row.fleet_name)
      .where('status', '=', row.status)
      .where('attempts', '=', row.attempts);
    // Another replica (or the timeout sweep) may have changed the row since it was read: its update then
    // matches nothing, and this report's events must not be recorded a second time.
    const updated = async (query: Promise<{ numUpdatedRows: bigint }[]>) =>
      (await query).some((r) => r.numUpdatedRows > 0n);
    const device = { plan: row.plan_name, stage: row.stage_name, device: row.device_name };
    if (outcome.kind === 'success') {
      if (
        !(await updated(
          where
            .set({
              status: 'DEPLOYED',
              status_message: outcome.message,
              result_digest: digest,
              ended_at: at,
              updated_at: laterOf('updated_at', at),
            })
            .execute(),
        ))
      )
        continue;
    } else if (outcome.kind === 'progress') {
      if (
        !(await updated(
          where
            .set({
              status_message: outcome.message,
              result_digest: digest,
              updated_at: laterOf('updated_at', at),
            })
            .execute(),
        ))
      )
        continue;
    } else if (row.status !== 'READYTODEPLOY') {
      // (A failure for a device not holding the deployment now is an old attempt's: its retry is pending.)
      const options = await planOptions(trx, row.plan_name);
      const retriesLeft = options.maxRetries + 1 - Number(row.attempts);
      if (retriesLeft > 0 && row.stage_status === 'INPROGRESS' && !outcome.afterSwitch) {
        const message = `attempt ${row.attempts} failed: ${outcome.message}; retrying (${retriesLeft} attempt(s) left)`;
        const retried = await updated(
          where
            .set({
              status: 'READYTODEPLOY',
              status_message: message,
              result_digest: digest,
              updated_at: laterOf('updated_at', at),
            })
            .execute(),
        );
        if (!retried) continue;
        await recordEvent(trx, { ...device, kind: 'DeviceRetried', message }, at, recorded);
      } else {
        // Said only where it is why: a stopping stage, or one out of retries, retries nothing anyway.
        const message =
          outcome.afterSwitch && retriesLeft > 0 && row.stage_status === 'INPROGRESS'
            ? `${outcome.message} (not retried: the new version failed after its switch, and a retry would ` +
              'switch it in again)'
            : outcome.message;
        const failed = await updated(
          where
            .set({
              status: 'FAILED',
              status_message: message,
              result_digest: digest,
              ended_at: at,
              updated_at: laterOf('updated_at', at),
            })
            .execute(),
        );
        if (!failed) continue;
        await recordEvent(trx, { ...device, kind: 'DeviceFailed', message }, at, recorded);
        if (row.failure_policy === 'ROLLBACK_ON_FAILURE') {
          await recordEvent(
            trx,
            {
              ...device,
              kind: 'DeviceRolledBack',
              message:
                'ROLLBACK_ON_FAILURE: the device returns every model of this deployment to its previous version',
            },
            at,
            recorded,
          );
        }
      }
    }
    touched.set(`${row.plan_name}\u0000${row.stage_name}`, { plan: row.plan_name, stage: row.stage_name });
  }
  return [...touched.values()];
}
