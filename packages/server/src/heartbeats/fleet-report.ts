import type { Kysely } from 'kysely';
import { fleetDeviceStats } from '../devices/index.js';
import type { FleetOutputOutage, FleetStore } from '../fleets/index.js';
import type { DatabaseSchema } from '../storage/index.js';

export interface FleetReport {
  fleetName: string;
  description: string | null;
  outputConfig: { s3OutputLocation: string; kmsKeyId: string | null };
  reportGenerated: number;
  /** Capture uploads cannot write to the fleet's output now (fleets/output-outage.ts); absent: they can. */
  outputOutage?: FleetOutputOutage;
  /** neverSeenDeviceCount is ours (SageMaker's report has only the other two): registered, never heard from. */
  deviceStats: { connectedDeviceCount: number; registeredDeviceCount: number; neverSeenDeviceCount: number };
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
  const stats = await fleetDeviceStats(db, fleetName, since);

  return {
    fleetName: fleet.name,
    description: fleet.description,
    outputConfig: {
      s3OutputLocation: fleet.outputConfig.s3OutputLocation,
      kmsKeyId: fleet.outputConfig.kmsKeyId,
    },
    reportGenerated: now,
    ...(fleet.outputOutage !== undefined && { outputOutage: fleet.outputOutage }),
    deviceStats: {
      connectedDeviceCount: stats.connected,
      registeredDeviceCount: stats.registered,
      neverSeenDeviceCount: stats.neverSeen,
    },
    agentVersions: stats.agentVersions.map((v) => ({ version: v.version, agentCount: v.count })),
    modelStats: stats.models.map((m) => ({
      modelName: m.name,
      modelVersion: m.version,
      offlineDeviceCount: m.offline,
      connectedDeviceCount: m.connected,
      activeDeviceCount: m.active,
      samplingDeviceCount: m.sampling,
    })),
  };
}
