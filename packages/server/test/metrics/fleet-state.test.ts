import pino from 'pino';
import { sql } from 'kysely';
import { afterAll, describe, expect, it } from 'vitest';
import { BlobStoreUnavailableError } from '../../src/blobs/index.js';
import { OutageLog } from '../../src/http/outage-log.js';
import {
  FleetStateReader,
  FleetStateReadTimeoutError,
  readFailureLog,
  registerFleetStateGauges,
  ServerMetrics,
} from '../../src/metrics/index.js';
import { DatabaseUnavailableError, type ServerDatabase } from '../../src/storage/index.js';
import { databaseEngines, openFreshDatabase } from '../support/engines.js';

const engines = await databaseEngines();
const HOUR = 3_600_000;
const MINUTE = 60_000;

/** Three devices: one heard from a second ago, one ten minutes ago, one never. */
async function seed(database: ServerDatabase, now: number): Promise<void> {
  await database.db
    .insertInto('fleets')
    .values({
      name: 'plant',
      description: null,
      output_s3_location: 's3://captures/edge',
      output_kms_key_id: null,
      role_arn: null,
      tags: '{}',
      created_at: now,
      updated_at: now,
    })
    .execute();
  const device = (name: string, lastHeartbeatAt: number | null) => ({
    name,
    fleet_name: 'plant',
    description: null,
    iot_thing_name: null,
    tags: '{}',
    registered_at: now,
    updated_at: now,
    agent_version: null,
    last_heartbeat_at: lastHeartbeatAt,
    deployment_result: null,
    deployed_models_not_loaded: null,
  });
  await database.db
    .insertInto('devices')
    .values([device('cam-1', now - 1000), device('cam-2', now - 10 * MINUTE), device('cam-3', null)])
    .execute();
}

describe.each(engines)('the fleet state a scrape reads, on $engine', (fixture) => {
  const opened: ServerDatabase[] = [];
  afterAll(async () => {
    for (const database of opened) await database.close().catch(() => undefined);
  });

  it.skipIf(!fixture.available)(
    'counts devices by connection state, once per cache period for any number of concurrent scrapes',
    async () => {
      const database = await openFreshDatabase(fixture);
      opened.push(database);
      let now = Date.now();
      await seed(database, now);
      const reader = new FleetStateReader(database.db, {
        offlineAfterMs: MINUTE,
        ttlMs: 5000,
        now: () => now,
      });
      const answers = await Promise.all(Array.from({ length: 20 }, () => reader.read()));
      expect(reader.evaluations).toBe(1);
      for (const answer of answers) expect(answer?.devices).toEqual({ online: 1, offline: 1, never_seen: 1 });
      expect(answers[0]?.packagingJobs).toEqual({ STARTING: 0, INPROGRESS: 0, COMPLETED: 0, FAILED: 0 });

      // Within the cache period a new device is not read; after it, it is.
      await database.db
        .updateTable('devices')
        .set({ last_heartbeat_at: now })
        .where('name', '=', 'cam-3')
        .execute();
      now += 4999;
      expect((await reader.read())?.devices.never_seen).toBe(1);
      expect(reader.evaluations).toBe(1);
      now += 1;
      expect((await reader.read())?.devices).toEqual({ online: 2, offline: 1, never_seen: 0 });
      expect(reader.evaluations).toBe(2);
    },
  );

  it.skipIf(!fixture.available)(
    'counts the stages that failed within the last hour apart from every FAILED stage kept',
    async () => {
      const database = await openFreshDatabase(fixture);
      opened.push(database);
      const now = Date.now();
      await seed(database, now);
      await database.db
        .insertInto('deployment_plans')
        .values({
          name: 'p',
          fleet_name: 'plant',
          model_configs: '[]',
          options: '{}',
          tags: '[]',
          created_at: now,
          updated_at: now,
        })
        .execute();
      const stage = (name: string, position: number, status: string, endedAt: number | null) => ({
        plan_name: 'p',
        name,
        position,
        selection: '{}',
        failure_policy: 'ROLLBACK',
        status,
        status_message: null,
        started_at: now - 3 * HOUR,
        ended_at: endedAt,
        updated_at: now,
      });
      await database.db
        .insertInto('deployment_stages')
        .values([
          stage('failed-now', 0, 'FAILED', now - MINUTE),
          stage('failed-before', 1, 'FAILED', now - 2 * HOUR),
          stage('deployed-now', 2, 'DEPLOYED', now - MINUTE),
        ])
        .execute();
      const state = await new FleetStateReader(database.db, {
        offlineAfterMs: MINUTE,
        now: () => now,
      }).read();
      expect(state?.deploymentStages.FAILED).toBe(2);
      expect(state?.deploymentStagesFailedLastHour).toBe(1);
    },
  );

  it.skipIf(!fixture.available)(
    'reports a database that cannot answer as not usable, leaving out the counts it could not read',
    async () => {
      const database = await openFreshDatabase(fixture);
      opened.push(database);
      const metrics = new ServerMetrics({ defaultMetrics: false });
      const errors: unknown[] = [];
      registerFleetStateGauges(
        metrics.registry,
        new FleetStateReader(database.db, {
          offlineAfterMs: MINUTE,
          ttlMs: 0,
          onError: (error) => errors.push(error),
        }),
      );
      const usable = await metrics.registry.metrics();
      expect(usable).toMatch(/^edgefleet_server_database_usable 1$/m);
      expect(usable).toMatch(/^edgefleet_server_devices\{state="never_seen"\} 0$/m);

      await database.close();
      const unusable = await metrics.registry.metrics();
      expect(unusable).toMatch(/^edgefleet_server_database_usable 0$/m);
      expect(unusable).not.toMatch(/^edgefleet_server_devices\{/m);
      // Why, for the server's log: the scrape itself names no cause.
      expect(errors.length).toBeGreaterThan(0);
      expect(errors[0]).toBeInstanceOf(Error);
    },
  );
});

// A hang needs a server that can hold a query waiting: PostgreSQL (SQLite's driver is synchronous).
const postgres = engines.find((fixture) => fixture.engine === 'postgres');
describe('a database that hangs', () => {
  it.skipIf(postgres?.available !== true)(
    'answers the scrape within the read deadline, as not usable, and starts no second read beside the hung one',
    async () => {
      const database = await openFreshDatabase(postgres!);
      const errors: unknown[] = [];
      const reader = new FleetStateReader(database.db, {
        offlineAfterMs: MINUTE,
        ttlMs: 0,
        readTimeoutMs: 200,
        onError: (error) => errors.push(error),
      });
      const metrics = new ServerMetrics({ defaultMetrics: false });
      registerFleetStateGauges(metrics.registry, reader);
      let release = () => {};
      const held = new Promise<void>((resolve) => (release = resolve));
      let locked = () => {};
      const isLocked = new Promise<void>((resolve) => (locked = resolve));
      // Another transaction holds the devices table: the reader's count waits for it, as on a hung database.
      const holder = database.db.transaction().execute(async (trx) => {
        await sql`lock table devices in access exclusive mode`.execute(trx);
        locked();
        await held;
      });
      try {
        await isLocked;
        const text = await metrics.registry.metrics();
        expect(text).toMatch(/^edgefleet_server_database_usable 0$/m);
        expect(text).not.toMatch(/^edgefleet_server_devices\{/m);
        expect(errors[0]).toBeInstanceOf(FleetStateReadTimeoutError);
        // Scrapes past the deadline wait on the same hung read, never a second one beside it.
        await reader.read();
        expect(reader.evaluations).toBe(1);
      } finally {
        release();
        await holder;
      }
      // Once the database answers again, so does the scrape.
      await expect.poll(async () => (await reader.read()) !== undefined).toBe(true);
      await database.close();
    },
  );
});

describe("a failed read of the fleet's counts", () => {
  it('is logged at warn with its cause, once for a run of scrapes', () => {
    const lines: Record<string, unknown>[] = [];
    const logger = pino(
      { level: 'info' },
      { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) },
    );
    const log = readFailureLog(logger);
    for (let i = 0; i < 5; i++) log(new Error('connect ECONNREFUSED 10.0.0.5:5432'));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({
      level: 40,
      event: 'metrics_read_failed',
      err: { message: expect.stringMatching(/ECONNREFUSED/) },
    });
  });
});

describe('outages by kind', () => {
  it('counts what OutageLog hears, database and blob store apart', async () => {
    const metrics = new ServerMetrics({ defaultMetrics: false });
    const log = new OutageLog({ onOutage: (component, error) => metrics.outage(component, error) });
    const logger = pino({ level: 'silent' });
    const full = Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' });
    log.log(logger, 'database', new DatabaseUnavailableError('sqlite:x', new Error('gone')), 'down');
    log.log(logger, 'database', Object.assign(new Error('busy'), { code: 'SQLITE_BUSY' }), 'busy');
    log.log(logger, 'database', full, 'full');
    log.log(logger, 'database', full, 'full');
    log.log(
      logger,
      'blobStore',
      new BlobStoreUnavailableError('s3://b', 'http://s3', 'missing-bucket', 'no bucket'),
      'gone',
    );
    const text = await metrics.registry.metrics();
    expect(text).toMatch(/^edgefleet_server_database_errors_total\{kind="unavailable"\} 1$/m);
    expect(text).toMatch(/^edgefleet_server_database_errors_total\{kind="busy"\} 1$/m);
    expect(text).toMatch(/^edgefleet_server_database_errors_total\{kind="disk_full"\} 2$/m);
    expect(text).toMatch(/^edgefleet_server_blob_store_errors_total\{kind="missing_bucket"\} 1$/m);
  });
});
