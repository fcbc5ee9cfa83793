import type { Kysely } from 'kysely';
import { ApiError } from '../http/errors.js';
import type { AuthenticatedDevice } from '../identity/index.js';
import type { DatabaseSchema, DeviceMetricsTable } from '../storage/index.js';
import type { EdgeMetric, SendHeartbeatRequest } from './heartbeat-schemas.js';

export interface HeartbeatServiceOptions {
  registrationCacheTtlSeconds: number;
  now?: () => number;
}

/** A device may only speak for itself: the names in the body must be those its certificate was issued to. */
export function assertActsAsItself(
  device: AuthenticatedDevice,
  claimed: { DeviceName: string; DeviceFleetName: string },
): void {
  if (claimed.DeviceName !== device.deviceName || claimed.DeviceFleetName !== device.fleetName) {
    throw new ApiError(
      403,
      'Forbidden',
      `this certificate belongs to device ${device.deviceName} of fleet ${device.fleetName}; it cannot act as ` +
        `${claimed.DeviceName} of fleet ${claimed.DeviceFleetName}`,
      { certificateDevice: device.deviceName, certificateFleet: device.fleetName },
    );
  }
}

/**
 * Ingests heartbeats: the device's latest state (agent version, models, deployment result, time of the
 * heartbeat by the server's clock) and its metrics as a time series, in one transaction per heartbeat.
 */
export class HeartbeatService {
  private readonly now: () => number;

  constructor(
    private readonly db: Kysely<DatabaseSchema>,
    private readonly options: HeartbeatServiceOptions,
  ) {
    this.now = options.now ?? Date.now;
  }

  async record(device: AuthenticatedDevice, heartbeat: SendHeartbeatRequest): Promise<void> {
    assertActsAsItself(device, heartbeat);
    const receivedAt = this.now();
    const metrics: DeviceMetricsTable[] = [];
    const addMetrics = (list: EdgeMetric[] | undefined, model?: { name: string; version: string }) => {
      for (const metric of list ?? []) {
        metrics.push({
          device_name: device.deviceName,
          fleet_name: device.fleetName,
          model_name: model?.name ?? null,
          model_version: model?.version ?? null,
          dimension: metric.Dimension ?? null,
          metric_name: metric.MetricName,
          value: metric.Value,
          timestamp: metric.Timestamp ?? receivedAt,
          received_at: receivedAt,
        });
      }
    };
    addMetrics(heartbeat.AgentMetrics);
    for (const model of heartbeat.Models ?? []) {
      addMetrics(model.ModelMetrics, { name: model.ModelName, version: model.ModelVersion });
    }
    // One row per model name and version; a repeated entry's later values win.
    const models = new Map((heartbeat.Models ?? []).map((m) => [`${m.ModelName}\u0000${m.ModelVersion}`, m]));

    await this.db.transaction().execute(async (trx) => {
      await trx
        .updateTable('devices')
        .set({
          agent_version: heartbeat.AgentVersion,
          last_heartbeat_at: receivedAt,
          ...(heartbeat.DeploymentResult !== undefined
            ? { deployment_result: JSON.stringify(heartbeat.DeploymentResult) }
            : {}),
        })
        .where('name', '=', device.deviceName)
        .execute();
      if (heartbeat.Models !== undefined) {
        await trx.deleteFrom('device_models').where('device_name', '=', device.deviceName).execute();
        if (models.size > 0) {
          await trx
            .insertInto('device_models')
            .values(
              [...models.values()].map((m) => ({
                device_name: device.deviceName,
                model_name: m.ModelName,
                model_version: m.ModelVersion,
                latest_sample_time: m.LatestSampleTime ?? null,
                latest_inference_time: m.LatestInference ?? null,
              })),
            )
            .execute();
        }
      }
      // Chunks keep each statement under SQLite's bound-parameter limit.
      for (let i = 0; i < metrics.length; i += 100) {
        await trx
          .insertInto('device_metrics')
          .values(metrics.slice(i, i + 100))
          .execute();
      }
    });
  }

  /** GetDeviceRegistration: a device that passed certificate checks is registered, by construction. */
  registration(
    device: AuthenticatedDevice,
    request: { DeviceName: string; DeviceFleetName: string },
  ): { DeviceRegistration: 'REGISTERED'; CacheTTL: string } {
    assertActsAsItself(device, request);
    return { DeviceRegistration: 'REGISTERED', CacheTTL: String(this.options.registrationCacheTtlSeconds) };
  }
}
