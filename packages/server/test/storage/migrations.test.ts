import type { Kysely } from 'kysely';
import { afterEach, describe, expect, it } from 'vitest';
import {
  appliedMigrations,
  migrateTo,
  migrateToLatest,
  migrationNames,
  openDatabase,
  type DatabaseSchema,
  type ServerDatabase,
} from '../../src/storage/index.js';
import { databaseEngines } from '../support/engines.js';

const engines = await databaseEngines();

/** Tables, columns, types and nullability, in a stable order: what a schema is, whatever path made it. */
async function schemaOf(db: Kysely<DatabaseSchema>): Promise<unknown[]> {
  const tables = await db.introspection.getTables();
  return tables
    .map((t) => ({
      table: t.name,
      columns: t.columns
        .map((c) => ({ name: c.name, type: c.dataType, nullable: c.isNullable }))
        .sort((a, b) => a.name.localeCompare(b.name)),
    }))
    .sort((a, b) => a.table.localeCompare(b.table));
}

describe.each(engines)('schema migrations on $engine', (fixture) => {
  const opened: ServerDatabase[] = [];
  afterEach(async () => {
    for (const database of opened.splice(0)) await database.close();
  });
  const open = async () => {
    const database = await openDatabase(await fixture.createLocation());
    opened.push(database);
    return database;
  };

  it.skipIf(!fixture.available)('from an empty database: every table of the current schema', async () => {
    const { db } = await open();
    await migrateToLatest(db);
    const tables = (await schemaOf(db)).map((t) => (t as { table: string }).table);
    expect(tables).toEqual(
      expect.arrayContaining(['fleets', 'devices', 'api_tokens', 'model_versions', 'packaging_jobs']),
    );
  });

  it.skipIf(!fixture.available || migrationNames.length < 2)(
    'from a database made by the previous schema version: its rows are kept and the schema equals a fresh one',
    async () => {
      const previous = migrationNames.at(-2)!;
      const { db } = await open();
      await migrateTo(db, previous);
      expect(await appliedMigrations(db)).toEqual(migrationNames.slice(0, -1));
      // Rows written by the previous version (tables every version has had since 0001).
      const now = 1_800_000_000_000;
      await db
        .insertInto('fleets')
        .values({
          name: 'plant-a',
          description: 'before the upgrade',
          output_s3_location: 's3://captures/plant-a',
          output_kms_key_id: null,
          role_arn: null,
          tags: '[]',
          created_at: now,
          updated_at: now,
        })
        .execute();
      await db
        .insertInto('devices')
        .values({
          name: 'cam-01',
          fleet_name: 'plant-a',
          description: null,
          iot_thing_name: null,
          tags: '[]',
          registered_at: now,
          updated_at: now,
          agent_version: '0.1.0',
          last_heartbeat_at: now,
          deployment_result: null,
        })
        .execute();

      const upgraded = await migrateToLatest(db);
      expect(upgraded.map((r) => [r.migrationName, r.status])).toEqual([[migrationNames.at(-1), 'Success']]);
      expect(await db.selectFrom('fleets').select(['name', 'description', 'created_at']).execute()).toEqual([
        { name: 'plant-a', description: 'before the upgrade', created_at: now },
      ]);
      expect(
        await db.selectFrom('devices').select(['name', 'fleet_name', 'agent_version']).execute(),
      ).toEqual([{ name: 'cam-01', fleet_name: 'plant-a', agent_version: '0.1.0' }]);

      const fresh = await open();
      await migrateToLatest(fresh.db);
      expect(await schemaOf(db)).toEqual(await schemaOf(fresh.db));
    },
  );

  it.skipIf(!fixture.available)(
    'from 0017: unrevoked access keys sharing a profile do not break 0018; the oldest keeps the profile',
    async () => {
      const { db } = await open();
      await migrateTo(db, '0017_packaging_object_uri');
      const key = (id: string, name: string, at: number, revoked: number | null = null) => ({
        access_key_id: id,
        name,
        scope: 'admin',
        device_name: null,
        secret_ciphertext: 'x',
        created_at: at,
        revoked_at: revoked,
      });
      await db
        .insertInto('access_keys')
        .values([
          key('AKEF-NEW', 'ci.bot', 2000),
          key('AKEF-OLD', 'ci bot', 1000),
          key('AKEF-REVOKED', 'ci-bot', 500, 600),
        ] as never)
        .execute();
      await migrateToLatest(db);
      const rows = await db
        .selectFrom('access_keys')
        .select(['access_key_id', 'aws_profile'])
        .orderBy('access_key_id')
        .execute();
      expect(rows).toEqual([
        { access_key_id: 'AKEF-NEW', aws_profile: null },
        { access_key_id: 'AKEF-OLD', aws_profile: 'ci-bot' },
        { access_key_id: 'AKEF-REVOKED', aws_profile: null },
      ]);
    },
  );

  it.skipIf(!fixture.available)(
    'from 0010: devices stopped unstarted before then get their stop time as ended_at, other rows are kept',
    async () => {
      const { db } = await open();
      await migrateTo(db, '0010_devices_updated_at_index');
      const created = 1_800_000_000_000;
      await db
        .insertInto('fleets')
        .values({
          name: 'plant-a',
          description: null,
          output_s3_location: 's3://captures/plant-a',
          output_kms_key_id: null,
          role_arn: null,
          tags: '[]',
          created_at: created,
          updated_at: created,
        })
        .execute();
      await db
        .insertInto('deployment_plans')
        .values({
          name: 'rollout',
          fleet_name: 'plant-a',
          model_configs: '[]',
          options: '{}',
          tags: '[]',
          created_at: created,
          updated_at: created,
        })
        .execute();
      await db
        .insertInto('deployment_stages')
        .values({
          plan_name: 'rollout',
          name: 'canary',
          position: 0,
          selection: '{}',
          failure_policy: '{}',
          status: 'STOPPED',
          status_message: null,
          started_at: created,
          ended_at: created + 9,
          updated_at: created + 9,
        })
        .execute();
      // What the previous version wrote: an unstarted device stopped with the stage (no ended_at), one an
      // operator cancelled (ended_at set), and devices still deploying or failed, which keep theirs.
      const target = (device: string, status: string, endedAt: number | null, updatedAt: number) => ({
        plan_name: 'rollout',
        device_name: device,
        stage_name: 'canary',
        fleet_name: 'plant-a',
        status,
        status_message: null,
        attempts: 0,
        result_digest: null,
        started_at: null,
        ended_at: endedAt,
        updated_at: updatedAt,
      });
      await db
        .insertInto('deployment_targets')
        .values([
          target('cam-unstarted', 'STOPPED', null, created + 5),
          target('cam-cancelled', 'STOPPED', created + 3, created + 3),
          target('cam-deploying', 'INPROGRESS', null, created + 4),
          target('cam-failed', 'FAILED', created + 2, created + 2),
        ])
        .execute();

      await migrateToLatest(db);
      const rows = await db
        .selectFrom('deployment_targets')
        .select(['device_name', 'status', 'ended_at', 'updated_at'])
        .orderBy('device_name')
        .execute();
      expect(rows.map((r) => [r.device_name, r.status, r.ended_at, r.updated_at])).toEqual([
        ['cam-cancelled', 'STOPPED', created + 3, created + 3],
        ['cam-deploying', 'INPROGRESS', null, created + 4],
        ['cam-failed', 'FAILED', created + 2, created + 2],
        ['cam-unstarted', 'STOPPED', created + 5, created + 5],
      ]);
    },
  );

  it.skipIf(!fixture.available)(
    'from 0019: stopped devices get their stop reason from the words their message was written with',
    async () => {
      const { db } = await open();
      await migrateTo(db, '0019_devices_deployed_models_not_loaded');
      const at = 1_800_000_000_000;
      await db
        .insertInto('fleets')
        .values({
          name: 'plant-a',
          description: null,
          output_s3_location: 's3://captures/plant-a',
          output_kms_key_id: null,
          role_arn: null,
          tags: '[]',
          created_at: at,
          updated_at: at,
        })
        .execute();
      await db
        .insertInto('deployment_plans')
        .values({
          name: 'rollout',
          fleet_name: 'plant-a',
          model_configs: '[]',
          options: '{}',
          tags: '[]',
          created_at: at,
          updated_at: at,
        })
        .execute();
      await db
        .insertInto('deployment_stages')
        .values({
          plan_name: 'rollout',
          name: 'canary',
          position: 0,
          selection: '{}',
          failure_policy: '{}',
          status: 'STOPPING',
          status_message: 'stopped by an operator',
          started_at: at,
          ended_at: null,
          updated_at: at,
        })
        .execute();
      const target = (device: string, status: string, message: string | null) => ({
        plan_name: 'rollout',
        device_name: device,
        stage_name: 'canary',
        fleet_name: 'plant-a',
        status,
        status_message: message,
        attempts: 0,
        result_digest: null,
        started_at: null,
        ended_at: at,
        updated_at: at,
      });
      // What 0019's writers left: each way a device was stopped, one STOPPED row without a message (an older
      // version's; it was counted "not started"), and a failed device, which gets no reason.
      await db
        .insertInto('deployment_targets')
        .values([
          target('cam-aborted', 'STOPPED', 'not started: the stage was aborted'),
          target('cam-cancelled', 'STOPPED', 'cancelled by an operator'),
          target('cam-deregistered', 'STOPPED', 'cancelled: device cam-deregistered was deregistered'),
          target('cam-failed', 'FAILED', 'cancelled the update: no disk space'),
          target('cam-old', 'STOPPED', null),
          target('cam-stopped', 'STOPPED', 'not started: the stage was stopped'),
        ])
        .execute();

      await migrateToLatest(db);
      const rows = await db
        .selectFrom('deployment_targets')
        .select(['device_name', 'stop_reason', 'status_message'])
        .orderBy('device_name')
        .execute();
      expect(rows.map((r) => [r.device_name, r.stop_reason])).toEqual([
        ['cam-aborted', 'stage-aborted'],
        ['cam-cancelled', 'cancelled'],
        ['cam-deregistered', 'deregistered'],
        ['cam-failed', null],
        ['cam-old', 'stage-stopped'],
        ['cam-stopped', 'stage-stopped'],
      ]);
      // Messages are kept as they were.
      expect(rows.find((r) => r.device_name === 'cam-cancelled')?.status_message).toBe(
        'cancelled by an operator',
      );
    },
  );

  it.skipIf(!fixture.available)(
    "from 0024: every plan's model handles get their rows, read in pages (a history of 1,201 plans)",
    async () => {
      const { db } = await open();
      await migrateTo(db, '0024_capture_object_writes');
      const at = 1_800_000_000_000;
      await db
        .insertInto('fleets')
        .values({
          name: 'plant-a',
          description: null,
          output_s3_location: 's3://captures/plant-a',
          output_kms_key_id: null,
          role_arn: null,
          tags: '[]',
          created_at: at,
          updated_at: at,
        })
        .execute();
      // Two configs of one handle and one of another, then the odd ones: one handle; one plan with none.
      const plans = Array.from({ length: 1201 }, (_, i) => ({
        name: `plan-${String(i).padStart(4, '0')}`,
        fleet_name: 'plant-a',
        model_configs: JSON.stringify(
          i === 1200
            ? []
            : i % 2 === 0
              ? [{ modelHandle: 'det' }, { modelHandle: 'det' }, { modelHandle: `h${i}` }]
              : [{ modelHandle: 'det' }],
        ),
        options: '{}',
        tags: '[]',
        created_at: at + i,
        updated_at: at + i,
      }));
      for (let i = 0; i < plans.length; i += 100)
        await db
          .insertInto('deployment_plans')
          .values(plans.slice(i, i + 100))
          .execute();
      // Stored configs that do not parse (hand edits) get no rows and do not fail the upgrade.
      const unreadable = ['not json', '{"modelHandle":"det"}', '[{"modelHandle":5}]', '[null]'];
      await db
        .insertInto('deployment_plans')
        .values(
          unreadable.map((model_configs, i) => ({ ...plans[0]!, name: `zz-unreadable-${i}`, model_configs })),
        )
        .execute();
      await migrateToLatest(db);
      const rows = await db
        .selectFrom('deployment_plan_handles')
        .select(['plan_name', 'fleet_name', 'model_handle', 'created_at'])
        .orderBy('plan_name')
        .orderBy('model_handle')
        .execute();
      // 1,200 plans on det, and 600 with a handle of their own.
      expect(rows.length).toBe(1800);
      expect(rows.filter((r) => r.model_handle === 'det').length).toBe(1200);
      expect(rows.slice(0, 3).map((r) => [r.plan_name, r.model_handle, Number(r.created_at)])).toEqual([
        ['plan-0000', 'det', at],
        ['plan-0000', 'h0', at],
        ['plan-0001', 'det', at + 1],
      ]);
      expect(rows.at(-1)).toMatchObject({
        plan_name: 'plan-1199',
        model_handle: 'det',
        fleet_name: 'plant-a',
      });
    },
  );

  it.skipIf(!fixture.available)('refuses an unknown target migration by name', async () => {
    const { db } = await open();
    await expect(migrateTo(db, '9999_nope')).rejects.toThrow(
      /unknown migration 9999_nope; expected one of 0001/,
    );
  });
});
