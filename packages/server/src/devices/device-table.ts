/**
 * The devices, device_models and device_tags tables have one owner: this folder. Other capabilities read
 * and change device state through these functions (or DeviceStore), never with their own SQL, so the
 * tables' shape can change in one place. Each takes the executor to run on, so callers can include the
 * work in their own transaction.
 */
import { sql, type Kysely, type Transaction } from 'kysely';
import type { DeployedModelNotLoaded, DeploymentResult } from '@edgefleet/core';
import { classifyResult, isStaleProgress } from '../deployments/result-outcome.js';
import {
  lockingRows,
  type DatabaseEngine,
  type DatabaseSchema,
  type DeviceModelsTable,
} from '../storage/index.js';

type Executor = Kysely<DatabaseSchema> | Transaction<DatabaseSchema>;

// Rows per multi-row INSERT: 5 columns × 500 stays far below both engines' bound-parameter limits.
const ROWS_PER_INSERT = 500;

/** What one heartbeat says about a device's current state. */
export interface DeviceHeartbeatState {
  deviceName: string;
  agentVersion: string;
  /** By the server's clock. */
  heartbeatAt: number;
  /** The last DeploymentResult, as reported; absent: keep the previous one. */
  deploymentResult?: DeploymentResult;
  /** The models loaded now (replacing the previous list); absent: keep the list. */
  models?: { name: string; version: string; latestSampleTime?: number; latestInferenceTime?: number }[];
  /**
   * The deployed handles not loaded now (replacing the previous list). Absent: the agent does not report them
   * (older than that field, or its deployments off), so none is kept: a list an agent once sent must not
   * outlive it, as it would were absent to mean "unchanged".
   */
  deployedModelsNotLoaded?: DeployedModelNotLoaded[];
}

/** A device's name and fleet, or undefined when it is not registered. */
export async function deviceFleet(
  db: Executor,
  deviceName: string,
): Promise<{ name: string; fleetName: string } | undefined> {
  const row = await db
    .selectFrom('devices')
    .select(['name', 'fleet_name'])
    .where('name', '=', deviceName)
    .executeTakeFirst();
  return row === undefined ? undefined : { name: row.name, fleetName: row.fleet_name };
}

/**
 * Holds the device's row until the caller's transaction ends, changing nothing (lockedDevices), so that writers
 * of one device's rows run one after the other and each reads what the one before committed. False when the
 * device is not registered. `engine`: the database's (ServerDatabase.engine).
 */
export async function lockDevice(
  trx: Transaction<DatabaseSchema>,
  engine: DatabaseEngine,
  deviceName: string,
): Promise<boolean> {
  return (await lockedDevices(trx, engine, [deviceName])).length > 0;
}

/**
 * The rows of these devices (those registered: name and kept DeploymentResult), held until the caller's
 * transaction ends (storage lockingRows: PostgreSQL's FOR UPDATE; SQLite runs one transaction at a time). Taken
 * in name order, so two transactions locking overlapping devices cannot each wait for the other.
 */
async function lockedDevices(
  trx: Transaction<DatabaseSchema>,
  engine: DatabaseEngine,
  deviceNames: string[],
): Promise<{ name: string; deployment_result: string | null }[]> {
  if (deviceNames.length === 0) return [];
  return lockingRows(
    engine,
    trx
      .selectFrom('devices')
      .select(['name', 'deployment_result'])
      .where('name', 'in', deviceNames)
      .orderBy('name'),
  ).execute();
}

/** How many devices each of these fleets has (fleets without devices are absent). */
export async function deviceCountsByFleet(db: Executor, fleetNames: string[]): Promise<Map<string, number>> {
  if (fleetNames.length === 0) return new Map();
  const rows = await db
    .selectFrom('devices')
    .select(['fleet_name', (eb) => eb.fn.countAll<number>().as('count')])
    .where('fleet_name', 'in', fleetNames)
    .groupBy('fleet_name')
    .execute();
  return new Map(rows.map((r) => [r.fleet_name, Number(r.count)]));
}

/**
 * Records the state of many heartbeats in the caller's transaction: one UPDATE … FROM (VALUES …) for the
 * whole batch, a device's last heartbeat in it winning (a statement per device would cost a round trip each
 * on PostgreSQL); each device's last model list replaces what it had. A progress result (INPROGRESS, HELD)
 * never replaces a final result of the same deployment unless its start time shows a newer attempt
 * (isStaleProgress): the device's own result call may have stored that while this heartbeat waited to be written.
 * `engine`: the database's (ServerDatabase.engine), for the row lock that check takes.
 */
export async function recordHeartbeatStates(
  trx: Transaction<DatabaseSchema>,
  engine: DatabaseEngine,
  states: DeviceHeartbeatState[],
): Promise<void> {
  if (states.length === 0) return;
  const latest = new Map<string, DeviceHeartbeatState>();
  for (const state of states) latest.set(state.deviceName, state);
  const stale = await staleProgressResults(trx, engine, [...latest.values()]);
  const values = [...latest.values()].map(
    (state) =>
      sql`(${state.deviceName}, ${state.agentVersion}, ${state.heartbeatAt}, ${
        state.deploymentResult !== undefined && !stale.has(state.deviceName)
          ? JSON.stringify(state.deploymentResult)
          : null
      }, ${state.deployedModelsNotLoaded !== undefined ? JSON.stringify(state.deployedModelsNotLoaded) : null})`,
  );
  // A changed not-loaded list bumps updated_at, which the console's change feed watches, so a device page
  // shows it at once (as recordDeploymentResult does), whatever the heartbeat times of other devices.
  await sql`update devices set
      agent_version = v.agent_version,
      last_heartbeat_at = v.last_heartbeat_at,
      deployment_result = coalesce(v.deployment_result, devices.deployment_result),
      deployed_models_not_loaded = v.deployed_models_not_loaded,
      updated_at = case
        when v.deployed_models_not_loaded is distinct from devices.deployed_models_not_loaded
          then v.last_heartbeat_at
        else devices.updated_at
      end
    from (
      select column1 as name, column2 as agent_version, cast(column3 as bigint) as last_heartbeat_at,
             column4 as deployment_result, column5 as deployed_models_not_loaded
      from (values ${sql.join(values)}) as t
    ) as v
    where devices.name = v.name`.execute(trx);

  // One row per name and version.
  const models = new Map<string, Map<string, DeviceModelsTable>>();
  for (const state of states) {
    if (state.models === undefined) continue;
    const rows = new Map<string, DeviceModelsTable>();
    for (const m of state.models) {
      rows.set(`${m.name}\u0000${m.version}`, {
        device_name: state.deviceName,
        model_name: m.name,
        model_version: m.version,
        latest_sample_time: m.latestSampleTime ?? null,
        latest_inference_time: m.latestInferenceTime ?? null,
      });
    }
    models.set(state.deviceName, rows);
  }
  if (models.size > 0) {
    await trx
      .deleteFrom('device_models')
      .where('device_name', 'in', [...models.keys()])
      .execute();
    const rows = [...models.values()].flatMap((m) => [...m.values()]);
    for (let i = 0; i < rows.length; i += ROWS_PER_INSERT) {
      await trx
        .insertInto('device_models')
        .values(rows.slice(i, i + ROWS_PER_INSERT))
        .execute();
    }
  }
}

/**
 * The devices among `states` whose heartbeat carries a progress result that their stored final result
 * outranks. Their rows are read locked (lockedDevices), so a result call committing meanwhile is either seen
 * here or waits for this transaction: read unlocked, a result committed between this read and the batch's
 * UPDATE would be overwritten by the progress it outranks (stale-progress.test.ts). Only heartbeats carrying
 * progress are looked at, so most batches cost nothing more.
 */
async function staleProgressResults(
  trx: Transaction<DatabaseSchema>,
  engine: DatabaseEngine,
  states: DeviceHeartbeatState[],
): Promise<Set<string>> {
  const progress = new Map<string, DeploymentResult>();
  for (const state of states) {
    if (state.deploymentResult !== undefined && classifyResult(state.deploymentResult).kind === 'progress')
      progress.set(state.deviceName, state.deploymentResult);
  }
  if (progress.size === 0) return new Set();
  const stored = await lockedDevices(trx, engine, [...progress.keys()]);
  return new Set(
    stored
      .filter((row) => {
        const incoming = progress.get(row.name);
        return incoming !== undefined && isStaleProgress(row.deployment_result, incoming);
      })
      .map((row) => row.name),
  );
}

/**
 * Records a DeploymentResult a device reported on its own call (not in a heartbeat) as its last one, as a
 * heartbeat carrying it would, in the caller's transaction. It bumps updated_at, which the console's change
 * feed watches, so a device page shows the result at once; it leaves last_heartbeat_at alone (the call is
 * not a heartbeat). The row is matched by name and fleet: the reporting device's authenticated identity.
 */
export async function recordDeploymentResult(
  db: Executor,
  device: { deviceName: string; fleetName: string },
  result: unknown,
  at: number,
): Promise<void> {
  await db
    .updateTable('devices')
    .set({ deployment_result: JSON.stringify(result), updated_at: at })
    .where('name', '=', device.deviceName)
    .where('fleet_name', '=', device.fleetName)
    .execute();
}

/**
 * The kept last DeploymentResult (JSON text, or null) of each of these devices, matched by name and fleet
 * (the reporting devices' authenticated identities); devices not registered are absent.
 */
export async function lastDeploymentResults(
  db: Executor,
  devices: { deviceName: string; fleetName: string }[],
): Promise<Map<string, string | null>> {
  if (devices.length === 0) return new Map();
  const fleetOf = new Map(devices.map((d) => [d.deviceName, d.fleetName]));
  const rows = await db
    .selectFrom('devices')
    .select(['name', 'fleet_name', 'deployment_result'])
    .where('name', 'in', [...fleetOf.keys()])
    .execute();
  return new Map(
    rows
      .filter((row) => fleetOf.get(row.name) === row.fleet_name)
      .map((row) => [row.name, row.deployment_result]),
  );
}

/** A device as deployment selection sees it: name, tags, when it registered and when it was last heard from. */
export interface SelectableDevice {
  name: string;
  tags: Record<string, string>;
  registeredAt: number;
  lastHeartbeatAt: number | null;
}

/**
 * The devices of a fleet (all, or those named), with their tags, in name order: what a deployment stage
 * selects from. Tags come from device_tags, one query for the whole fleet.
 */
export async function selectableDevices(
  db: Executor,
  fleetName: string,
  names?: string[],
): Promise<SelectableDevice[]> {
  if (names !== undefined && names.length === 0) return [];
  let devices = db
    .selectFrom('devices')
    .select(['name', 'registered_at', 'last_heartbeat_at'])
    .where('fleet_name', '=', fleetName);
  if (names !== undefined) devices = devices.where('name', 'in', names);
  const rows = await devices.orderBy('name').execute();
  let tags = db
    .selectFrom('device_tags')
    .innerJoin('devices', 'devices.name', 'device_tags.device_name')
    .select(['device_tags.device_name', 'device_tags.key', 'device_tags.value'])
    .where('devices.fleet_name', '=', fleetName);
  if (names !== undefined) tags = tags.where('devices.name', 'in', names);
  const tagsByDevice = new Map<string, Record<string, string>>();
  for (const tag of await tags.execute()) {
    const own = tagsByDevice.get(tag.device_name) ?? {};
    own[tag.key] = tag.value;
    tagsByDevice.set(tag.device_name, own);
  }
  return rows.map((row) => ({
    name: row.name,
    tags: tagsByDevice.get(row.name) ?? {},
    registeredAt: row.registered_at,
    lastHeartbeatAt: row.last_heartbeat_at,
  }));
}

export interface FleetDeviceStats {
  registered: number;
  connected: number;
  /** Registered but never heard from (no heartbeat yet): not offline, just not started. */
  neverSeen: number;
  agentVersions: { version: string; count: number }[];
  models: {
    name: string;
    version: string;
    offline: number;
    connected: number;
    active: number;
    sampling: number;
  }[];
}

/**
 * Counts across a fleet's devices from their latest heartbeats. Connected: heard from since `since`; never seen:
 * no heartbeat at all (the rest are offline); per
 * model and version: offline or connected; active: connected and inferred since `since`; sampling:
 * connected and sampled since `since`.
 */
export async function fleetDeviceStats(
  db: Executor,
  fleetName: string,
  since: number,
): Promise<FleetDeviceStats> {
  const online = sql<number>`case when devices.last_heartbeat_at >= ${since} then 1 else 0 end`;

  const stats = await db
    .selectFrom('devices')
    .select([
      (eb) => eb.fn.countAll<number>().as('registered'),
      (eb) => eb.fn.coalesce(eb.fn.sum<number>(online), sql<number>`0`).as('connected'),
      (eb) =>
        eb.fn
          .coalesce(
            eb.fn.sum<number>(sql<number>`case when devices.last_heartbeat_at is null then 1 else 0 end`),
            sql<number>`0`,
          )
          .as('never_seen'),
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
    registered: Number(stats.registered),
    connected: Number(stats.connected),
    neverSeen: Number(stats.never_seen),
    agentVersions: versions.map((v) => ({ version: v.agent_version as string, count: Number(v.count) })),
    models: models.map((m) => ({
      name: m.model_name,
      version: m.model_version,
      offline: Number(m.offline),
      connected: Number(m.connected),
      active: Number(m.active),
      sampling: Number(m.sampling),
    })),
  };
}
