import type { EdgeMetric, ReceivedHeartbeat, SendHeartbeatResult } from '@edgefleet/core';
import type { Kysely, Transaction } from 'kysely';
import { recordHeartbeatStates } from '../devices/index.js';
import { DomainError } from '../errors/index.js';
import type { AuthenticatedDevice } from '../identity/index.js';
import type { DatabaseEngine, DatabaseSchema, DeviceMetricBatchesTable } from '../storage/index.js';

/**
 * Who else reads the DeploymentResults heartbeats carry (deployments/). Called once the heartbeats are
 * committed, in its own transaction: a failure there never costs a heartbeat, and since heartbeats repeat
 * the last result, the next one delivers it again.
 */
export interface DeploymentResultSink {
  /**
   * The fleet of each of these plans that exists (read in the heartbeats' transaction): a heartbeat's result
   * naming a plan that is not one of its device's fleet's is left out, neither kept nor passed on.
   */
  fleetsOfPlans?(db: Transaction<DatabaseSchema>, plans: string[]): Promise<Map<string, string>>;
  recordResults(
    reports: {
      deviceName: string;
      fleetName: string;
      result: NonNullable<ReceivedHeartbeat['DeploymentResult']>;
      receivedAt: number;
    }[],
  ): Promise<void>;
}

export interface HeartbeatServiceOptions {
  /** The database's engine (ServerDatabase.engine): how a batch holds the rows of devices reporting progress. */
  databaseEngine: DatabaseEngine;
  registrationCacheTtlSeconds: number;
  /** How far ahead of the server's clock a timestamp may be; default one hour. */
  maxClockSkewMs?: number;
  /** Metrics older than this are refused (they would be pruned at once); default: no lower bound. */
  metricsRetentionMs?: number;
  /** Most heartbeats written in one transaction. */
  maxBatch?: number;
  /**
   * Metric bytes (as stored) one device may store per clock hour; past it a heartbeat's state is recorded and
   * it succeeds, but its metrics are dropped (the answer's `MetricsDropped` says so). Default: no limit.
   */
  metricBytesPerDevicePerHour?: number;
  /** Told of a device's first heartbeat in a clock hour whose metrics were dropped (the server logs a warning). */
  onMetricsDropped?: (device: AuthenticatedDevice, dropped: MetricsDropped) => void;
  now?: () => number;
  deploymentResults?: DeploymentResultSink;
  /** Told when the sink fails (logged by the server); the heartbeats themselves are stored. */
  onDeploymentResultsError?: (error: unknown) => void;
}

/** A device may only speak for itself: the names in the body must be those its certificate was issued to. */
export function assertActsAsItself(
  device: AuthenticatedDevice,
  claimed: { DeviceName: string; DeviceFleetName: string },
): void {
  if (claimed.DeviceName !== device.deviceName || claimed.DeviceFleetName !== device.fleetName) {
    throw new DomainError(
      'Forbidden',
      `${device.credential ?? 'this certificate'} belongs to device ${device.deviceName} of fleet ${device.fleetName}; it cannot act as ` +
        `${claimed.DeviceName} of fleet ${claimed.DeviceFleetName}`,
      { certificateDevice: device.deviceName, certificateFleet: device.fleetName },
    );
  }
}

/** Why a recorded heartbeat's metrics were not stored. */
export type MetricsDropped = NonNullable<SendHeartbeatResult['MetricsDropped']>;

interface PendingHeartbeat {
  device: AuthenticatedDevice;
  heartbeat: ReceivedHeartbeat;
  receivedAt: number;
  resolve: (result: SendHeartbeatResult) => void;
  reject: (error: unknown) => void;
}

const HOUR_MS = 3_600_000;
const hourStart = (ms: number) => Math.floor(ms / HOUR_MS) * HOUR_MS;

// Rows per multi-row INSERT: 9 columns × 500 stays far below both engines' bound-parameter limits.
const ROWS_PER_INSERT = 500;

/**
 * Ingests heartbeats: the device's latest state (agent version, models, deployment result, deployed models
 * not loaded, time of the heartbeat by the server's clock) and its metrics as a time series.
 *
 * Heartbeats that arrive while a write is under way are written together in the next transaction (group
 * commit): a commit costs about the same for one heartbeat as for a hundred, so this is what lets one server
 * take thousands a second. Each caller is answered only once its heartbeat is committed. Nothing is kept
 * in memory beyond the write in progress.
 */
export class HeartbeatService {
  private readonly now: () => number;
  private readonly maxBatch: number;
  private queue: PendingHeartbeat[] = [];
  private writing = false;
  /** The clock hour each device was last reported for (onMetricsDropped), so that it is told once an hour. */
  private readonly droppedReported = new Map<string, number>();

  constructor(
    private readonly db: Kysely<DatabaseSchema>,
    private readonly options: HeartbeatServiceOptions,
  ) {
    this.now = options.now ?? Date.now;
    this.maxBatch = options.maxBatch ?? 256;
  }

  /**
   * Records a heartbeat. Over its device's hourly metric quota it still succeeds (the state is recorded, so the
   * device stays online and goes on renewing), and the answer's `MetricsDropped` says its metrics were not kept.
   */
  record(device: AuthenticatedDevice, heartbeat: ReceivedHeartbeat): Promise<SendHeartbeatResult> {
    assertActsAsItself(device, heartbeat);
    this.assertTimestampsInWindow(heartbeat);
    return new Promise<SendHeartbeatResult>((resolve, reject) => {
      this.queue.push({ device, heartbeat, receivedAt: this.now(), resolve, reject });
      if (!this.writing) {
        // Start on the next turn of the event loop, so heartbeats that arrive in this one join the batch.
        this.writing = true;
        setImmediate(() => void this.writeQueued());
      }
    });
  }

  private async writeQueued(): Promise<void> {
    try {
      while (this.queue.length > 0) {
        const batch = this.queue.splice(0, this.maxBatch);
        try {
          await this.write(batch);
        } catch (error) {
          if (batch.length === 1) {
            batch[0]?.reject(error);
            continue;
          }
          // One bad heartbeat must not fail its neighbours: write them one by one.
          for (const item of batch) await this.write([item]).catch(item.reject);
        }
      }
    } finally {
      this.writing = false;
    }
  }

  /** Writes heartbeats in one transaction, then answers each: stored, or its metrics dropped for the quota. */
  private async write(batch: PendingHeartbeat[]): Promise<void> {
    let kept = batch;
    const dropped = await this.db.transaction().execute(async (trx) => {
      kept = await this.withoutForeignResults(trx, batch);
      return writeBatch(trx, this.options.databaseEngine, kept, this.options.metricBytesPerDevicePerHour);
    });
    await this.passDeploymentResults(kept);
    for (const item of kept) {
      const drop = dropped.get(item);
      if (drop === undefined) {
        item.resolve({});
        continue;
      }
      this.reportDropped(item, drop);
      item.resolve({ MetricsDropped: drop });
    }
  }

  /** Tells onMetricsDropped of a device's first drop in each clock hour, not of every heartbeat after it. */
  private reportDropped(item: PendingHeartbeat, drop: MetricsDropped): void {
    const hour = hourStart(item.receivedAt);
    const name = item.device.deviceName;
    if (this.droppedReported.get(name) === hour) return;
    // Entries of past hours are of no more use: a new hour's first report clears them.
    for (const [device, reported] of this.droppedReported) {
      if (reported < hour) this.droppedReported.delete(device);
    }
    this.droppedReported.set(name, hour);
    this.options.onMetricsDropped?.(item.device, drop);
  }

  /**
   * Drops each heartbeat's DeploymentResult that names a plan not of its device's fleet (another fleet's, one
   * deleted since, none): a device reports only on its own fleet's plans, and its last result must not show
   * another's. The heartbeat itself is kept; the result call leaves such a result out the same way.
   */
  private async withoutForeignResults(
    trx: Transaction<DatabaseSchema>,
    batch: PendingHeartbeat[],
  ): Promise<PendingHeartbeat[]> {
    const lookup = this.options.deploymentResults?.fleetsOfPlans?.bind(this.options.deploymentResults);
    const named = batch.filter((item) => item.heartbeat.DeploymentResult?.DeploymentName !== undefined);
    if (lookup === undefined || named.length === 0) return batch;
    const fleets = await lookup(trx, [
      ...new Set(named.map((item) => item.heartbeat.DeploymentResult!.DeploymentName!)),
    ]);
    // New items with a copy of the heartbeat: the caller's object (the request's, and the batch a failed write
    // retries one by one) stays as it came.
    return batch.map((item) => {
      const plan = item.heartbeat.DeploymentResult?.DeploymentName;
      if (plan === undefined || fleets.get(plan) === item.device.fleetName) return item;
      const { DeploymentResult: _foreign, ...heartbeat } = item.heartbeat;
      return { ...item, heartbeat };
    });
  }

  private async passDeploymentResults(batch: PendingHeartbeat[]): Promise<void> {
    const sink = this.options.deploymentResults;
    const reports = batch.flatMap(({ device, heartbeat, receivedAt }) =>
      heartbeat.DeploymentResult !== undefined
        ? [
            {
              deviceName: device.deviceName,
              fleetName: device.fleetName,
              result: heartbeat.DeploymentResult,
              receivedAt,
            },
          ]
        : [],
    );
    if (sink === undefined || reports.length === 0) return;
    try {
      await sink.recordResults(reports);
    } catch (error) {
      this.options.onDeploymentResultsError?.(error);
    }
  }

  /**
   * Every timestamp must lie within a window around the server's clock: none ahead of it by more than the
   * allowed skew (a far-future time would make a device look active forever and dodge every time query),
   * and metrics no older than the retention window. Model activity times may be old (a model idle for weeks).
   */
  private assertTimestampsInWindow(heartbeat: ReceivedHeartbeat): void {
    const now = this.now();
    const latest = now + (this.options.maxClockSkewMs ?? 3_600_000);
    const earliestMetric =
      this.options.metricsRetentionMs !== undefined ? now - this.options.metricsRetentionMs : -Infinity;
    const check = (field: string, at: number | undefined, earliest = -Infinity) => {
      if (at === undefined || (at <= latest && at >= earliest)) return;
      const ahead = at > latest;
      throw new DomainError(
        'ValidationError',
        `${field} is ${new Date(at).toISOString()}, ${
          ahead
            ? 'ahead of the server clock by more than the allowed skew'
            : 'older than the metrics retention'
        } (accepted: ${Number.isFinite(earliest) ? new Date(earliest).toISOString() : 'any time'} to ${new Date(
          latest,
        ).toISOString()}); check the device clock (NTP)`,
        { in: 'body', field, serverTime: new Date(now).toISOString() },
      );
    };
    heartbeat.AgentMetrics?.forEach((m, i) =>
      check(`AgentMetrics.${i}.Timestamp`, m.Timestamp, earliestMetric),
    );
    heartbeat.Models?.forEach((model, i) => {
      check(`Models.${i}.LatestSampleTime`, model.LatestSampleTime);
      check(`Models.${i}.LatestInference`, model.LatestInference);
      model.ModelMetrics?.forEach((m, j) =>
        check(`Models.${i}.ModelMetrics.${j}.Timestamp`, m.Timestamp, earliestMetric),
      );
    });
    check('DeploymentResult.DeploymentStartTime', heartbeat.DeploymentResult?.DeploymentStartTime);
    check('DeploymentResult.DeploymentEndTime', heartbeat.DeploymentResult?.DeploymentEndTime);
    // Shown only, and sent unchanged by the agent until the model is loaded again: a time stamped by a clock
    // that ran ahead would refuse every later heartbeat (the device offline, no deployments) even once the clock
    // is right. It is left out instead.
    for (const model of heartbeat.DeployedModelsNotLoaded ?? [])
      if (model.Since !== undefined && model.Since > latest) delete model.Since;
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

/** A stored metric: [metricName, dimension, modelName, modelVersion, value, timestamp]. */
export type StoredMetric = [string, string | null, string | null, string | null, number, number];

/** The heartbeat's metrics as one row, or undefined when it carried none. */
function metricBatch(item: PendingHeartbeat): DeviceMetricBatchesTable | undefined {
  const { device, heartbeat, receivedAt } = item;
  const metrics: StoredMetric[] = [];
  const add = (list: EdgeMetric[] | undefined, model?: { name: string; version: string }) => {
    for (const metric of list ?? []) {
      metrics.push([
        metric.MetricName,
        metric.Dimension ?? null,
        model?.name ?? null,
        model?.version ?? null,
        metric.Value,
        metric.Timestamp ?? receivedAt,
      ]);
    }
  };
  add(heartbeat.AgentMetrics);
  for (const model of heartbeat.Models ?? []) {
    add(model.ModelMetrics, { name: model.ModelName, version: model.ModelVersion });
  }
  if (metrics.length === 0) return undefined;
  let first = Number.POSITIVE_INFINITY;
  let last = Number.NEGATIVE_INFINITY;
  for (const m of metrics) {
    first = Math.min(first, m[5]);
    last = Math.max(last, m[5]);
  }
  return {
    device_name: device.deviceName,
    fleet_name: device.fleetName,
    received_at: receivedAt,
    first_timestamp: first,
    last_timestamp: last,
    metric_count: metrics.length,
    metrics: JSON.stringify(metrics),
  };
}

/**
 * Charges each device's metric rows to its usage of the hour they were received in, and keeps those that fit
 * its quota; answers why the others were dropped. One upsert for the whole group: the add comes first and the check reads its result, so replicas'
 * concurrent writes queue on the rows' locks (as capture quotas do); what did not fit is taken back.
 */
async function chargeMetricUsage(
  trx: Transaction<DatabaseSchema>,
  rows: { item: PendingHeartbeat; row: DeviceMetricBatchesTable }[],
  quota: number,
): Promise<Map<PendingHeartbeat, MetricsDropped>> {
  const dropped = new Map<PendingHeartbeat, MetricsDropped>();
  const byUsage = new Map<string, { device: string; hour: number; rows: typeof rows; bytes: number }>();
  for (const entry of rows) {
    const hour = hourStart(entry.item.receivedAt);
    const key = JSON.stringify([entry.row.device_name, hour]);
    const usage = byUsage.get(key) ?? { device: entry.row.device_name, hour, rows: [], bytes: 0 };
    usage.rows.push(entry);
    usage.bytes += entry.row.metrics.length;
    byUsage.set(key, usage);
  }
  // In one order on every replica, so that two replicas' batches holding the same devices lock their usage
  // rows in the same order instead of deadlocking on PostgreSQL.
  const usages = [...byUsage.values()].sort((a, b) =>
    a.device < b.device ? -1 : a.device > b.device ? 1 : a.hour - b.hour,
  );
  for (let i = 0; i < usages.length; i += ROWS_PER_INSERT) {
    const charged = await trx
      .insertInto('device_metric_usage')
      .values(
        usages
          .slice(i, i + ROWS_PER_INSERT)
          .map((u) => ({ device_name: u.device, hour_start: u.hour, bytes: u.bytes })),
      )
      .onConflict((oc) =>
        oc
          .columns(['device_name', 'hour_start'])
          .doUpdateSet({ bytes: (eb) => eb('device_metric_usage.bytes', '+', eb.ref('excluded.bytes')) }),
      )
      .returning(['device_name', 'hour_start', 'bytes'])
      .execute();
    for (const total of charged) {
      const usage = byUsage.get(JSON.stringify([total.device_name, Number(total.hour_start)]));
      if (usage === undefined || Number(total.bytes) <= quota) continue;
      // Over the quota: keep this group's heartbeats in order while they fit, drop the rest's metrics.
      let used = Number(total.bytes) - usage.bytes;
      let takenBack = 0;
      for (const { item, row } of usage.rows) {
        const bytes = row.metrics.length;
        if (used + bytes <= quota) {
          used += bytes;
          continue;
        }
        takenBack += bytes;
        const retryAfterSeconds = Math.max(1, Math.ceil((usage.hour + HOUR_MS - item.receivedAt) / 1000));
        dropped.set(item, {
          Message: `device ${usage.device} has stored ${used} bytes of metrics this hour; this heartbeat's ${bytes} more would pass its quota of ${quota} (heartbeat.metricBytesPerDevicePerHour); its state was recorded, its metrics were dropped: send fewer metrics (the quota starts again in ${retryAfterSeconds} s)`,
          QuotaBytes: quota,
          UsedBytes: used,
          RetryAfterSeconds: retryAfterSeconds,
        });
      }
      await trx
        .updateTable('device_metric_usage')
        .set((eb) => ({ bytes: eb('bytes', '-', takenBack) }))
        .where('device_name', '=', usage.device)
        .where('hour_start', '=', usage.hour)
        .execute();
    }
  }
  return dropped;
}

/** Writes the batch's states and metrics; answers which heartbeats' metrics were dropped for their quota. */
async function writeBatch(
  trx: Transaction<DatabaseSchema>,
  engine: DatabaseEngine,
  batch: PendingHeartbeat[],
  metricBytesPerDevicePerHour: number | undefined,
): Promise<Map<PendingHeartbeat, MetricsDropped>> {
  // The devices' state is the devices capability's to write; the metric series is ours.
  await recordHeartbeatStates(
    trx,
    engine,
    batch.map(({ device, heartbeat, receivedAt }) => ({
      deviceName: device.deviceName,
      agentVersion: heartbeat.AgentVersion,
      heartbeatAt: receivedAt,
      ...(heartbeat.DeploymentResult !== undefined && { deploymentResult: heartbeat.DeploymentResult }),
      ...(heartbeat.DeployedModelsNotLoaded !== undefined && {
        deployedModelsNotLoaded: heartbeat.DeployedModelsNotLoaded,
      }),
      ...(heartbeat.Models !== undefined && {
        models: heartbeat.Models.map((m) => ({
          name: m.ModelName,
          version: m.ModelVersion,
          ...(m.LatestSampleTime !== undefined && { latestSampleTime: m.LatestSampleTime }),
          ...(m.LatestInference !== undefined && { latestInferenceTime: m.LatestInference }),
        })),
      }),
    })),
  );

  const rows = batch.flatMap((item) => {
    const row = metricBatch(item);
    return row === undefined ? [] : [{ item, row }];
  });
  const dropped =
    metricBytesPerDevicePerHour === undefined
      ? new Map<PendingHeartbeat, MetricsDropped>()
      : await chargeMetricUsage(trx, rows, metricBytesPerDevicePerHour);
  const kept = rows.filter(({ item }) => !dropped.has(item)).map(({ row }) => row);
  for (let i = 0; i < kept.length; i += ROWS_PER_INSERT) {
    await trx
      .insertInto('device_metric_batches')
      .values(kept.slice(i, i + ROWS_PER_INSERT))
      .execute();
  }
  return dropped;
}
