import { sql, type Expression, type Kysely, type Transaction } from 'kysely';
import { LOCAL_ACTOR, type Actor, type FleetEventLog } from '../audit/index.js';
import { z } from 'zod';
import { tagListSchema, type Tag } from '../fields/index.js';
import { conflict, notFound } from '../errors/index.js';
import {
  containsIgnoringCase,
  isForeignKeyViolation,
  isUniqueViolation,
  type DatabaseSchema,
  type DeviceCertificatesTable,
  type DevicesTable,
} from '../storage/index.js';
import { eventIdFloor } from '../deployments/event-id.js';
import type { DeviceInput, DeviceSortKey, IdentityStatus, UpdateDeviceInput } from './device-schemas.js';

/** The value a device is sorted by under `sortBy`, as a page token stores it. */
export function deviceSortKeyOf(device: DeviceRecord, sortBy: DeviceSortKey): string | number {
  if (sortBy === 'lastSeen') return device.lastHeartbeatAt ?? NEVER_SEEN;
  if (sortBy === 'registered') return device.registeredAt;
  return device.name;
}

/** A device that never sent a heartbeat sorts as seen before any that did. */
const NEVER_SEEN = -1;

/**
 * The SQL each sort key orders by. The lastSeen expression is written out literally (no parameter) so it
 * matches the expression index of migration 0008 on both engines.
 */
function sortKeyExpression(sortBy: DeviceSortKey): Expression<unknown> {
  if (sortBy === 'lastSeen') return sql`coalesce(last_heartbeat_at, -1)`;
  if (sortBy === 'registered') return sql.ref('registered_at');
  return sql.ref('name');
}

export interface DeviceModelState {
  name: string;
  version: string;
  latestSampleTime: number | null;
  latestInferenceTime: number | null;
}

export interface DeviceCertificateRecord {
  serial: string;
  fingerprintSha256: string;
  subject: string;
  notBefore: number;
  notAfter: number;
  issuedAt: number;
  revokedAt: number | null;
}

export interface DeviceDeploymentEvent {
  id: string;
  planName: string;
  stageName: string | null;
  kind: string;
  message: string;
  at: number;
}

/** A deployed model handle the device's agent reported as not loaded (heartbeat DeployedModelsNotLoaded). */
export interface DeployedModelNotLoadedRecord {
  modelHandle: string;
  deploymentName: string;
  modelName?: string;
  modelVersion?: string;
  /** An application unloaded it (UnLoadModel, REST unload); false: still loading, or its load failed. */
  unloadedByApplication: boolean;
  /** When the application unloaded it (epoch ms, by the device's clock). */
  since?: number;
  reason: string;
}

/** The stored column: the heartbeat's entries as the server parsed them (Since in epoch ms). */
const storedNotLoadedSchema = z.array(
  z.object({
    ModelHandle: z.string(),
    DeploymentName: z.string(),
    ModelName: z.string().optional(),
    ModelVersion: z.string().optional(),
    UnloadedByApplication: z.boolean(),
    Since: z.number().optional(),
    Reason: z.string(),
  }),
);

function notLoadedRecords(column: string | null): DeployedModelNotLoadedRecord[] | null {
  if (column === null) return null;
  return storedNotLoadedSchema.parse(JSON.parse(column)).map((m) => ({
    modelHandle: m.ModelHandle,
    deploymentName: m.DeploymentName,
    ...(m.ModelName !== undefined && { modelName: m.ModelName }),
    ...(m.ModelVersion !== undefined && { modelVersion: m.ModelVersion }),
    unloadedByApplication: m.UnloadedByApplication,
    ...(m.Since !== undefined && { since: m.Since }),
    reason: m.Reason,
  }));
}

export interface DeviceRecord {
  name: string;
  fleetName: string;
  description: string | null;
  iotThingName: string | null;
  tags: Tag[];
  registeredAt: number;
  updatedAt: number;
  agentVersion: string | null;
  lastHeartbeatAt: number | null;
  online: boolean;
  deploymentResult: unknown;
  models: DeviceModelState[];
  /** As of the last heartbeat; null: the agent does not report it (older agent, deployments off). */
  deployedModelsNotLoaded: DeployedModelNotLoadedRecord[] | null;
}

export interface DeviceIdentity {
  status: IdentityStatus;
  certificate?: DeviceCertificateRecord;
}

/** Where the previous page ended: its last device's sort key and name (the tie-breaker). */
export interface DeviceListPosition {
  key: string | number;
  name: string;
}

export interface DeviceListFilters {
  limit: number;
  sortBy?: DeviceSortKey;
  sortOrder?: 'asc' | 'desc';
  after?: DeviceListPosition;
  fleet?: string;
  tags?: { key: string; value?: string }[];
  nameContains?: string;
  status?: 'online' | 'offline' | 'never-seen';
  modelName?: string;
  latestHeartbeatAfter?: number;
}

export interface DeviceStoreOptions {
  /** A device is online while its last heartbeat is younger than this. */
  offlineAfterMs: number;
  now?: () => number;
  /**
   * Run in the deregistration's transaction before the device is removed: what other capabilities end with
   * the device (deployments: its pending targets stop). Injected so devices/ does not depend on them.
   */
  onDeregister?: (
    trx: Transaction<DatabaseSchema>,
    device: { name: string; fleetName: string },
    now: number,
    by: Actor,
  ) => Promise<(() => void) | void>;
  /** Where registrations and deregistrations are logged; absent: nowhere (commands, tests). */
  events?: FleetEventLog;
}

/** Registered devices: their registration, tags, and the latest state their heartbeats reported. */
export class DeviceStore {
  private readonly now: () => number;

  constructor(
    private readonly db: Kysely<DatabaseSchema>,
    private readonly options: DeviceStoreOptions,
  ) {
    this.now = options.now ?? Date.now;
  }

  /** Registers devices into a fleet, all or none; 404 for an unknown fleet, 409 naming existing devices. */
  async register(
    fleetName: string,
    devices: DeviceInput[],
    tags: Tag[],
    by: Actor = LOCAL_ACTOR,
  ): Promise<DeviceRecord[]> {
    const at = this.now();
    try {
      await this.db.transaction().execute(async (trx) => {
        const fleet = await trx
          .selectFrom('fleets')
          .select('name')
          .where('name', '=', fleetName)
          .executeTakeFirst();
        if (fleet === undefined) throw notFound(`fleet ${fleetName}`, { fleet: fleetName });
        const existing = await trx
          .selectFrom('devices')
          .select(['name', 'fleet_name'])
          .where(
            'name',
            'in',
            devices.map((d) => d.name),
          )
          .orderBy('name')
          .execute();
        if (existing.length > 0) {
          // Each with its fleet: a name taken in another fleet is a different fix from a repeated registration.
          throw conflict(
            `device(s) already registered: ${existing.map((d) => `${d.name} (in fleet ${d.fleet_name})`).join(', ')}; device names are unique across fleets: deregister one first to move it`,
            {
              devices: existing.map((d) => d.name),
              fleets: Object.fromEntries(existing.map((d) => [d.name, d.fleet_name])),
            },
          );
        }
        await trx
          .insertInto('devices')
          .values(
            devices.map((d) => ({
              name: d.name,
              fleet_name: fleetName,
              description: d.description ?? null,
              iot_thing_name: d.iotThingName ?? null,
              tags: JSON.stringify(tags),
              registered_at: at,
              updated_at: at,
              agent_version: null,
              last_heartbeat_at: null,
              deployment_result: null,
              deployed_models_not_loaded: null,
            })),
          )
          .execute();
        if (tags.length > 0) {
          await trx
            .insertInto('device_tags')
            .values(
              devices.flatMap((d) => tags.map((t) => ({ device_name: d.name, key: t.key, value: t.value }))),
            )
            .execute();
        }
      });
    } catch (error) {
      if (isUniqueViolation(error)) throw conflict('a device of this request was registered concurrently');
      if (isForeignKeyViolation(error)) throw notFound(`fleet ${fleetName}`, { fleet: fleetName });
      throw error;
    }
    for (const device of devices)
      this.options.events?.info(by, {
        event: 'device_registered',
        outcome: 'registered',
        object: { device: device.name, fleet: fleetName },
        message: `device ${device.name} registered in fleet ${fleetName}`,
      });
    return Promise.all(devices.map((d) => this.get(d.name)));
  }

  async find(name: string): Promise<DeviceRecord | undefined> {
    const row = await this.db.selectFrom('devices').selectAll().where('name', '=', name).executeTakeFirst();
    if (row === undefined) return undefined;
    const models = await this.modelsOf([name]);
    return this.toRecord(row, models.get(name) ?? []);
  }

  async get(name: string): Promise<DeviceRecord> {
    const device = await this.find(name);
    if (device === undefined) throw notFound(`device ${name}`, { device: name });
    return device;
  }

  /**
   * Devices in the requested order, filtered; keyset pagination on (sort key, name), so a page continues
   * exactly where the last one ended even while devices are added. Each order has an index (0001, 0008).
   */
  async list(filters: DeviceListFilters): Promise<DeviceRecord[]> {
    const rows = await this.listQuery(filters).execute();
    const models = await this.modelsOf(rows.map((r) => r.name));
    return rows.map((row) => this.toRecord(row, models.get(row.name) ?? []));
  }

  /** The query `list` runs; public so a test can check each order's plan is an index walk. */
  listQuery(filters: DeviceListFilters) {
    const threshold = this.now() - this.options.offlineAfterMs;
    const order = filters.sortOrder ?? 'asc';
    const key = sortKeyExpression(filters.sortBy ?? 'name');
    let query = this.db
      .selectFrom('devices')
      .selectAll()
      .orderBy(key, order)
      .$if(filters.sortBy !== undefined && filters.sortBy !== 'name', (q) => q.orderBy('name', order))
      .limit(filters.limit);
    if (filters.after !== undefined) {
      const { key: afterKey, name: afterName } = filters.after;
      const beyond = sql.raw(order === 'asc' ? '>' : '<');
      // A row-value comparison, so both engines walk the (key, name) index from the position onwards.
      query =
        filters.sortBy === undefined || filters.sortBy === 'name'
          ? query.where(sql<boolean>`name ${beyond} ${afterName}`)
          : query.where(
              // The leading-key bound alone is what lets SQLite seek into the index on an expression.
              sql<boolean>`${key} ${sql.raw(order === 'asc' ? '>=' : '<=')} ${afterKey} and (${key}, name) ${beyond} (${afterKey}, ${afterName})`,
            );
    }
    if (filters.fleet !== undefined) query = query.where('fleet_name', '=', filters.fleet);
    if (filters.nameContains !== undefined)
      query = query.where(containsIgnoringCase('name', filters.nameContains));
    if (filters.status === 'online') query = query.where('last_heartbeat_at', '>=', threshold);
    if (filters.status === 'never-seen') query = query.where('last_heartbeat_at', 'is', null);
    if (filters.status === 'offline') {
      query = query.where((eb) =>
        eb.or([eb('last_heartbeat_at', 'is', null), eb('last_heartbeat_at', '<', threshold)]),
      );
    }
    if (filters.latestHeartbeatAfter !== undefined) {
      query = query.where('last_heartbeat_at', '>', filters.latestHeartbeatAfter);
    }
    for (const tag of filters.tags ?? []) {
      query = query.where((eb) =>
        eb.exists(
          eb
            .selectFrom('device_tags')
            .select('device_tags.key')
            .whereRef('device_tags.device_name', '=', 'devices.name')
            .where('device_tags.key', '=', tag.key)
            .$if(tag.value !== undefined, (q) => q.where('device_tags.value', '=', tag.value as string)),
        ),
      );
    }
    if (filters.modelName !== undefined) {
      const modelName = filters.modelName;
      query = query.where((eb) =>
        eb.exists(
          eb
            .selectFrom('device_models')
            .select('device_models.model_name')
            .whereRef('device_models.device_name', '=', 'devices.name')
            .where('device_models.model_name', '=', modelName),
        ),
      );
    }
    return query;
  }

  async update(name: string, patch: UpdateDeviceInput, by: Actor = LOCAL_ACTOR): Promise<DeviceRecord> {
    let fleetName = '';
    await this.db.transaction().execute(async (trx) => {
      const changes: Partial<DevicesTable> = { updated_at: this.now() };
      if (patch.description !== undefined) changes.description = patch.description;
      if (patch.iotThingName !== undefined) changes.iot_thing_name = patch.iotThingName;
      if (patch.tags !== undefined) changes.tags = JSON.stringify(patch.tags);
      const result = await trx
        .updateTable('devices')
        .set(changes)
        .where('name', '=', name)
        .executeTakeFirst();
      if (Number(result.numUpdatedRows) === 0) throw notFound(`device ${name}`, { device: name });
      if (patch.tags !== undefined) await replaceTags(trx, name, patch.tags);
      fleetName =
        (await trx.selectFrom('devices').select('fleet_name').where('name', '=', name).executeTakeFirst())
          ?.fleet_name ?? '';
    });
    // The fields set by name, and the tags by key: values (descriptions, tag values) may be long.
    const changed = (['description', 'iotThingName', 'tags'] as const).filter(
      (field) => patch[field] !== undefined,
    );
    const tagKeys = patch.tags?.map((tag) => tag.key).join(',');
    this.options.events?.info(by, {
      event: 'device_updated',
      outcome: 'updated',
      object: { device: name, fleet: fleetName, changed: changed.join(','), tagKeys },
      message: `device ${name} of fleet ${fleetName} updated (${changed.length > 0 ? changed.join(', ') : 'nothing set'})${tagKeys !== undefined ? `; its tags now: ${tagKeys === '' ? 'none' : tagKeys.split(',').join(', ')}` : ''}`,
    });
    return this.get(name);
  }

  /**
   * Removes the device and everything about it, and revokes every certificate it was issued: its identity
   * is refused from now on, even if a device of the same name is registered again. Its pending deployments
   * end in the same transaction (`onDeregister`).
   */
  async deregister(name: string, by: Actor = LOCAL_ACTOR): Promise<void> {
    const at = this.now();
    let fleetName = '';
    const afterCommit: (() => void)[] = [];
    await this.db.transaction().execute(async (trx) => {
      const device = await trx
        .selectFrom('devices')
        .select(['name', 'fleet_name'])
        .where('name', '=', name)
        .executeTakeFirst();
      if (device === undefined) throw notFound(`device ${name}`, { device: name });
      fleetName = device.fleet_name;
      const then = await this.options.onDeregister?.(
        trx,
        { name: device.name, fleetName: device.fleet_name },
        at,
        by,
      );
      if (then !== undefined) afterCommit.push(then);
      await trx
        .updateTable('device_certificates')
        .set({ revoked_at: at, revocation_reason: 'deregistered' })
        .where('device_name', '=', name)
        .where('revoked_at', 'is', null)
        .execute();
      await trx.deleteFrom('device_metric_batches').where('device_name', '=', name).execute();
      // Its capture claims and ids: a new device registered under the name starts with none of them.
      await trx.deleteFrom('capture_objects').where('device_name', '=', name).execute();
      await trx.deleteFrom('device_captures').where('device_name', '=', name).execute();
      // device_tags, device_models and enrollment_tokens go by ON DELETE CASCADE.
      await trx.deleteFrom('devices').where('name', '=', name).execute();
    });
    this.options.events?.info(by, {
      event: 'device_deregistered',
      outcome: 'deregistered',
      object: { device: name, fleet: fleetName },
      message: `device ${name} deregistered from fleet ${fleetName}; its certificates are revoked`,
    });
    for (const then of afterCommit) then();
  }

  /**
   * The device's deployment events (retried, failed, timed out, cancelled, rolled back), newest first, from its
   * current registration on (not those of an earlier device of the same name); keyset-paged on the event id.
   */
  async deploymentEvents(
    device: Pick<DeviceRecord, 'name' | 'registeredAt'>,
    page: { limit: number; before?: string },
  ): Promise<DeviceDeploymentEvent[]> {
    let query = this.db
      .selectFrom('deployment_events')
      .selectAll()
      .where('device_name', '=', device.name)
      // Ids begin with the event's time: a bound on the (device_name, id) index range, so that the events of an
      // earlier device of the same name are not walked; `at` states the rule.
      .where('id', '>=', eventIdFloor(device.registeredAt))
      .where('at', '>=', device.registeredAt)
      .orderBy('id', 'desc')
      .limit(page.limit);
    if (page.before !== undefined) query = query.where('id', '<', page.before);
    return (await query.execute()).map((row) => ({
      id: row.id,
      planName: row.plan_name,
      stageName: row.stage_name,
      kind: row.kind,
      message: row.message,
      at: Number(row.at),
    }));
  }

  /** The device's identity: its newest certificate issued since it was registered, and that one's state. */
  async identity(device: Pick<DeviceRecord, 'name' | 'registeredAt'>): Promise<DeviceIdentity> {
    const row = await this.db
      .selectFrom('device_certificates')
      .selectAll()
      .where('device_name', '=', device.name)
      .where('issued_at', '>=', device.registeredAt)
      .orderBy('issued_at', 'desc')
      .orderBy('serial', 'desc')
      .executeTakeFirst();
    if (row === undefined) return { status: 'NOT_ENROLLED' };
    const certificate = toCertificate(row);
    const status: IdentityStatus =
      row.revoked_at !== null ? 'REVOKED' : row.not_after <= this.now() ? 'EXPIRED' : 'ENROLLED';
    return { status, certificate };
  }

  private toRecord(row: DevicesTable, models: DeviceModelState[]): DeviceRecord {
    const threshold = this.now() - this.options.offlineAfterMs;
    return {
      name: row.name,
      fleetName: row.fleet_name,
      description: row.description,
      iotThingName: row.iot_thing_name,
      tags: tagListSchema.parse(JSON.parse(row.tags)),
      registeredAt: row.registered_at,
      updatedAt: row.updated_at,
      agentVersion: row.agent_version,
      lastHeartbeatAt: row.last_heartbeat_at,
      online: row.last_heartbeat_at !== null && row.last_heartbeat_at >= threshold,
      deploymentResult: row.deployment_result === null ? null : JSON.parse(row.deployment_result),
      models,
      deployedModelsNotLoaded: notLoadedRecords(row.deployed_models_not_loaded),
    };
  }

  private async modelsOf(names: string[]): Promise<Map<string, DeviceModelState[]>> {
    const byDevice = new Map<string, DeviceModelState[]>();
    if (names.length === 0) return byDevice;
    const rows = await this.db
      .selectFrom('device_models')
      .selectAll()
      .where('device_name', 'in', names)
      .orderBy('device_name')
      .orderBy('model_name')
      .orderBy('model_version')
      .execute();
    for (const row of rows) {
      const list = byDevice.get(row.device_name) ?? [];
      list.push({
        name: row.model_name,
        version: row.model_version,
        latestSampleTime: row.latest_sample_time,
        latestInferenceTime: row.latest_inference_time,
      });
      byDevice.set(row.device_name, list);
    }
    return byDevice;
  }
}

async function replaceTags(trx: Transaction<DatabaseSchema>, device: string, tags: Tag[]): Promise<void> {
  await trx.deleteFrom('device_tags').where('device_name', '=', device).execute();
  if (tags.length > 0) {
    await trx
      .insertInto('device_tags')
      .values(tags.map((t) => ({ device_name: device, key: t.key, value: t.value })))
      .execute();
  }
}

export function toCertificate(row: DeviceCertificatesTable): DeviceCertificateRecord {
  return {
    serial: row.serial,
    fingerprintSha256: row.fingerprint_sha256,
    subject: row.subject,
    notBefore: row.not_before,
    notAfter: row.not_after,
    issuedAt: row.issued_at,
    revokedAt: row.revoked_at,
  };
}
