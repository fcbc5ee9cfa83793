import { sql, type Kysely } from 'kysely';
import type { FleetStore } from '../fleets/index.js';
import type { DatabaseSchema } from '../storage/index.js';

export interface FleetReport {
  fleetName: string;
  description: string | null;
  outputConfig: { s3OutputLocation: string; kmsKeyId: string | null };
  reportGenerated: number;
  deviceStats: { connectedDeviceCount: number; registeredDeviceCount: number };
  agentVersions: { version: string; agentCount: number }[];
  modelStats: {
    modelName: string;
    modelVersion: string;
    offlineDeviceCount: number;
    connectedDeviceCount: number;
    activeDeviceCount: number;
    samplingDeviceCount: number;
  }[];
}

/**
 * GetDeviceFleetReport: counts across the fleet's devices, computed from their latest heartbeats.
 * Connected: heard from within the offline window. For each model and version a device reports: offline or
 * connected; active: connected and inferred within the window; sampling: connected and sampled within it.
 */
export async function fleetReport(
  db: Kysely<DatabaseSchema>,
  fleets: FleetStore,
  fleetName: string,
  options: { offlineAfterMs: number; now?: number },
): Promise<FleetReport> {
  const fleet = await fleets.get(fleetName);
  const now = options.now ?? Date.now();
  const since = now - options.offlineAfterMs;
  const online = sql<number>`case when devices.last_heartbeat_at >= ${since} then 1 else 0 end`;

  const stats = await db
    .selectFrom('devices')
    .select([
      (eb) => eb.fn.countAll<number>().as('registered'),
      (eb) => eb.fn.coalesce(eb.fn.sum<number>(online), sql<number>`0`).as('connected'),
    ])
    .where('fleet_name', '=', fleetName)
    .executeTakeFirstOrThrow();

  const versions = await db
    .selectFrom('devices')
    .select(['agent_version', (eb) => eb.fn.countAll<number>().as('count')])
    .where('fleet_name', '=', fleetName)
    .where('agent_version', 'is not', null)
    .groupBy('agent_version')
    .orderBy('agent_version')
    .execute();

  const models = await db
    .selectFrom('device_models')
    .innerJoin('devices', 'devices.name', 'device_models.device_name')
    .select([
      'device_models.model_name',
      'device_models.model_version',
      sql<number>`sum(1 - ${online})`.as('offline'),
      sql<number>`sum(${online})`.as('connected'),
      sql<number>`sum(case when devices.last_heartbeat_at >= ${since} and device_models.latest_inference_time >= ${since} then 1 else 0 end)`.as(
        'active',
      ),
      sql<number>`sum(case when devices.last_heartbeat_at >= ${since} and device_models.latest_sample_time >= ${since} then 1 else 0 end)`.as(
        'sampling',
      ),
    ])
    .where('devices.fleet_name', '=', fleetName)
    .groupBy(['device_models.model_name', 'device_models.model_version'])
    .orderBy('device_models.model_name')
    .orderBy('device_models.model_version')
    .execute();

  return {
    fleetName: fleet.name,
    description: fleet.description,
    outputConfig: {
      s3OutputLocation: fleet.outputConfig.s3OutputLocation,
      kmsKeyId: fleet.outputConfig.kmsKeyId,
    },
    reportGenerated: now,
    deviceStats: {
      connectedDeviceCount: Number(stats.connected),
      registeredDeviceCount: Number(stats.registered),
    },
    agentVersions: versions.map((v) => ({ version: v.agent_version as string, agentCount: Number(v.count) })),
    modelStats: models.map((m) => ({
      modelName: m.model_name,
      modelVersion: m.model_version,
      offlineDeviceCount: Number(m.offline),
      connectedDeviceCount: Number(m.connected),
      activeDeviceCount: Number(m.active),
      samplingDeviceCount: Number(m.sampling),
    })),
  };
}
