/**
 * What deregistering a device means for rollouts: its deployments that are still pending (READYTODEPLOY or
 * INPROGRESS) end now, STOPPED with a DeviceCancelled event, and their stages settle. Left pending, they would
 * hold their stage until the timeout sweep, and a device registered later under the same name could report
 * for them.
 */
import type { Transaction } from 'kysely';
import { laterOf, type DatabaseEngine, type DatabaseSchema } from '../storage/index.js';
import type { StopReason } from './deployment-schemas.js';
import { PENDING_DEVICE, recordEvent, settleStage, type RecordedEvent } from './stage-progress.js';

/**
 * Runs in the deregistration's transaction (DeviceStore's `onDeregister`), before the device row goes; returns
 * the events it recorded, for the log once that transaction has committed.
 */
export async function stopDeregisteredDeviceTargets(
  trx: Transaction<DatabaseSchema>,
  device: { name: string; fleetName: string },
  now: number,
  engine: DatabaseEngine,
): Promise<RecordedEvent[]> {
  const recorded: RecordedEvent[] = [];
  const pending = await trx
    .selectFrom('deployment_targets')
    .select(['plan_name', 'stage_name', 'status'])
    .where('device_name', '=', device.name)
    .where('fleet_name', '=', device.fleetName)
    .where('status', 'in', [...PENDING_DEVICE])
    .orderBy('plan_name')
    .execute();
  const message = `cancelled: device ${device.name} was deregistered`;
  const stages = new Map<string, { plan: string; stage: string }>();
  for (const target of pending) {
    // Conditional, as every status change is: a replica that changed the row first keeps its change.
    const stopped = await trx
      .updateTable('deployment_targets')
      .set({
        status: 'STOPPED',
        stop_reason: 'deregistered' satisfies StopReason,
        status_message: message,
        ended_at: now,
        updated_at: laterOf('updated_at', now),
      })
      .where('plan_name', '=', target.plan_name)
      .where('device_name', '=', device.name)
      .where('status', '=', target.status)
      .executeTakeFirst();
    if (Number(stopped.numUpdatedRows) === 0) continue;
    await recordEvent(
      trx,
      {
        plan: target.plan_name,
        stage: target.stage_name,
        device: device.name,
        kind: 'DeviceCancelled',
        message,
      },
      now,
      recorded,
    );
    stages.set(`${target.plan_name}\u0000${target.stage_name}`, {
      plan: target.plan_name,
      stage: target.stage_name,
    });
  }
  for (const { plan, stage } of stages.values()) await settleStage(trx, plan, stage, now, recorded, engine);
  return recorded;
}
