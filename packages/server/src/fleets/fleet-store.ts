import type { Kysely, Selectable, Updateable } from 'kysely';
import { LOCAL_ACTOR, type Actor, type FleetEventLog } from '../audit/index.js';
import { deviceCountsByFleet } from '../devices/index.js';
import { splitS3Uri, tagListSchema, type Tag } from '../fields/index.js';
import { conflict, DomainError, notFound } from '../errors/index.js';
import {
  containsIgnoringCase,
  isForeignKeyViolation,
  isUniqueViolation,
  type DatabaseSchema,
  type FleetsTable,
} from '../storage/index.js';
import type { CreateFleetInput, UpdateFleetInput } from './fleet-schemas.js';
import type { FleetOutputOutage } from './output-outage.js';

export interface FleetRecord {
  name: string;
  description: string | null;
  outputConfig: { s3OutputLocation: string; kmsKeyId: string | null; bucket: string; prefix: string };
  roleArn: string | null;
  tags: Tag[];
  deviceCount: number;
  createdAt: number;
  updatedAt: number;
  /** Capture uploads cannot write to the output location now (fleets/output-outage.ts); absent: they can. */
  outputOutage?: FleetOutputOutage;
  /** What the answer to a create or update should tell its caller (e.g. that the output bucket could not be checked). */
  warnings?: string[];
}

function toRecord(row: Selectable<FleetsTable>, deviceCount: number): FleetRecord {
  const outage = row.output_outage_since ?? null;
  return {
    name: row.name,
    description: row.description,
    outputConfig: {
      s3OutputLocation: row.output_s3_location,
      kmsKeyId: row.output_kms_key_id,
      ...splitS3Uri(row.output_s3_location),
    },
    roleArn: row.role_arn,
    tags: tagListSchema.parse(JSON.parse(row.tags)),
    deviceCount,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    ...(outage !== null && {
      outputOutage: {
        outputLocation: row.output_s3_location,
        since: Number(outage),
        lastFailureAt: Number(row.output_outage_last_failure_at ?? outage),
        problem: row.output_outage_problem ?? 'unreachable',
        reason: row.output_outage_reason ?? '',
      },
    }),
  };
}

/** Device fleets: a named group of devices with one capture output location. */
export class FleetStore {
  constructor(
    private readonly db: Kysely<DatabaseSchema>,
    private readonly now: () => number = Date.now,
    /**
     * Checks that the server can write an output location (its bucket exists and answers), throwing a
     * DomainError that says why not, or answering a warning; called when a fleet takes a new location, after
     * the cheaper checks (the fleet's name) so those answer first. Default: no check.
     */
    private readonly checkOutput: (
      location: string,
      kmsKeyId?: string,
    ) => Promise<{ warning?: string }> = async () => ({}),
    /** The operator's log of fleet events (fleet created, updated, deleted). */
    private readonly events?: FleetEventLog,
  ) {}

  async create(input: CreateFleetInput, by: Actor = LOCAL_ACTOR): Promise<FleetRecord> {
    const existing = await this.db
      .selectFrom('fleets')
      .select('name')
      .where('name', '=', input.name)
      .executeTakeFirst();
    if (existing !== undefined) throw conflict(`fleet ${input.name} already exists`, { fleet: input.name });
    const { warning } = await this.checkOutput(
      input.outputConfig.s3OutputLocation,
      input.outputConfig.kmsKeyId,
    );
    const at = this.now();
    const row: Selectable<FleetsTable> = {
      name: input.name,
      description: input.description ?? null,
      output_s3_location: input.outputConfig.s3OutputLocation,
      output_kms_key_id: input.outputConfig.kmsKeyId ?? null,
      role_arn: input.roleArn ?? null,
      tags: JSON.stringify(input.tags ?? []),
      created_at: at,
      updated_at: at,
      output_outage_since: null,
      output_outage_problem: null,
      output_outage_reason: null,
      output_outage_last_failure_at: null,
    };
    try {
      await this.db.insertInto('fleets').values(row).execute();
    } catch (error) {
      if (isUniqueViolation(error))
        throw conflict(`fleet ${input.name} already exists`, { fleet: input.name });
      throw error;
    }
    this.events?.info(by, {
      event: 'fleet_created',
      outcome: 'created',
      object: { fleet: input.name, outputLocation: input.outputConfig.s3OutputLocation },
      message: `fleet ${input.name} created, output ${input.outputConfig.s3OutputLocation}`,
    });
    return { ...toRecord(row, 0), ...(warning !== undefined && { warnings: [warning] }) };
  }

  async find(name: string): Promise<FleetRecord | undefined> {
    const row = await this.db.selectFrom('fleets').selectAll().where('name', '=', name).executeTakeFirst();
    if (row === undefined) return undefined;
    return toRecord(row, (await this.deviceCounts([name])).get(name) ?? 0);
  }

  async get(name: string): Promise<FleetRecord> {
    const fleet = await this.find(name);
    if (fleet === undefined) throw notFound(`fleet ${name}`, { fleet: name });
    return fleet;
  }

  /** Fleets in name order, after `after` (keyset pagination). */
  async list(options: { limit: number; after?: string; nameContains?: string }): Promise<FleetRecord[]> {
    let query = this.db.selectFrom('fleets').selectAll().orderBy('name').limit(options.limit);
    if (options.after !== undefined) query = query.where('name', '>', options.after);
    if (options.nameContains !== undefined) {
      query = query.where(containsIgnoringCase('name', options.nameContains));
    }
    const rows = await query.execute();
    const counts = await this.deviceCounts(rows.map((r) => r.name));
    return rows.map((row) => toRecord(row, counts.get(row.name) ?? 0));
  }

  async update(name: string, patch: UpdateFleetInput, by: Actor = LOCAL_ACTOR): Promise<FleetRecord> {
    const changes: Updateable<FleetsTable> = { updated_at: this.now() };
    if (patch.description !== undefined) changes.description = patch.description;
    if (patch.roleArn !== undefined) changes.role_arn = patch.roleArn;
    if (patch.tags !== undefined) changes.tags = JSON.stringify(patch.tags);
    let warning: string | undefined;
    if (patch.outputConfig !== undefined) {
      const current = await this.db
        .selectFrom('fleets')
        .select('output_s3_location')
        .where('name', '=', name)
        .executeTakeFirst();
      if (current === undefined) throw notFound(`fleet ${name}`, { fleet: name });
      // UpdateDeviceFleet always carries the output: an unchanged one needs no check (nor S3 up).
      if (current.output_s3_location !== patch.outputConfig.s3OutputLocation) {
        ({ warning } = await this.checkOutput(
          patch.outputConfig.s3OutputLocation,
          patch.outputConfig.kmsKeyId,
        ));
        // An outage of the old location says nothing about the new one.
        changes.output_outage_since = null;
        changes.output_outage_problem = null;
        changes.output_outage_reason = null;
        changes.output_outage_last_failure_at = null;
      }
      changes.output_s3_location = patch.outputConfig.s3OutputLocation;
      changes.output_kms_key_id = patch.outputConfig.kmsKeyId ?? null;
    }
    const result = await this.db
      .updateTable('fleets')
      .set(changes)
      .where('name', '=', name)
      .executeTakeFirst();
    if (Number(result.numUpdatedRows) === 0) throw notFound(`fleet ${name}`, { fleet: name });
    // The fields set, by name (their values may be long: tags, descriptions); the output location in full.
    const changed = (['description', 'roleArn', 'tags', 'outputConfig'] as const).filter(
      (field) => patch[field] !== undefined,
    );
    this.events?.info(by, {
      event: 'fleet_updated',
      outcome: 'updated',
      object: {
        fleet: name,
        changed: changed.join(','),
        outputLocation: patch.outputConfig?.s3OutputLocation,
      },
      message: `fleet ${name} updated (${changed.length > 0 ? changed.join(', ') : 'nothing set'})${patch.outputConfig !== undefined ? `, output ${patch.outputConfig.s3OutputLocation}` : ''}`,
    });
    const fleet = await this.get(name);
    return warning !== undefined ? { ...fleet, warnings: [warning] } : fleet;
  }

  /**
   * Deletes an empty fleet; refuses (409 ResourceInUse) while devices remain registered in it or deployment
   * plans name it, naming which.
   */
  async delete(name: string, by: Actor = LOCAL_ACTOR): Promise<void> {
    const devicesInUse = (count: number) =>
      new DomainError(
        'ResourceInUse',
        `fleet ${name} still has ${count || 'some'} registered device(s); deregister them first`,
        { fleet: name, deviceCount: count },
      );
    const count = (await this.deviceCounts([name])).get(name) ?? 0;
    if (count > 0) throw devicesInUse(count);
    try {
      const result = await this.db.deleteFrom('fleets').where('name', '=', name).executeTakeFirst();
      if (Number(result.numDeletedRows) === 0) throw notFound(`fleet ${name}`, { fleet: name });
      this.events?.info(by, {
        event: 'fleet_deleted',
        outcome: 'deleted',
        object: { fleet: name },
        message: `fleet ${name} deleted`,
      });
    } catch (error) {
      if (!isForeignKeyViolation(error)) throw error;
      // Devices and deployment plans reference a fleet: say which kept it.
      const plans = await this.db
        .selectFrom('deployment_plans')
        .select('name')
        .where('fleet_name', '=', name)
        .orderBy('name')
        .execute();
      if (plans.length > 0) {
        const shown = plans.slice(0, 5).map((p) => p.name);
        const more = plans.length > shown.length ? ` and ${plans.length - shown.length} more` : '';
        throw new DomainError(
          'ResourceInUse',
          `fleet ${name} has deployment plan(s) ${shown.join(', ')}${more}; delete them first`,
          { fleet: name, deploymentPlans: plans.map((p) => p.name) },
        );
      }
      throw devicesInUse((await this.deviceCounts([name])).get(name) ?? 0);
    }
  }

  private deviceCounts(names: string[]): Promise<Map<string, number>> {
    return deviceCountsByFleet(this.db, names);
  }
}
