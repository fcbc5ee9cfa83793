/**
 * Servers record themselves in server_instances while they run; a build that would migrate the schema refuses
 * while a server of another schema ran lately (or, forced, warns), on both engines.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { sql } from 'kysely';
import pino from 'pino';
import { describe, expect, it, onTestFinished, vi } from 'vitest';
import {
  captureHolderMayWrite,
  databaseNowMs,
  processHostId,
  recentServers,
  refuseMigratingUnderRunningServers,
  registerServer,
  SERVER_SEEN_RECENT_MS,
  ServersRunningError,
} from '../../src/server/index.js';
import { migrationNames, openDatabase } from '../../src/storage/index.js';
import { databaseEngines, openFreshDatabase } from '../support/engines.js';
import { startTestServer } from '../support/server.js';

const engines = await databaseEngines();
const schema = migrationNames.at(-1)!;
/** A pid no process can have (above pid_max): an exited child's pid could be reused by another during the test. */
const unusedPid = async () => Number(await readFile('/proc/sys/kernel/pid_max', 'utf8')) + 1;

describe.each(engines)('server_instances on $engine', (fixture) => {
  it.skipIf(!fixture.available)(
    'a running server is listed with its version and schema, and its row goes when it stops',
    async () => {
      const location = await fixture.createLocation();
      // Kept across the restart below (the key material is bound to the database).
      const dataDir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-registry-'));
      onTestFinished(() => rm(dataDir, { recursive: true, force: true }));
      const t = await startTestServer({ database: location, dataDir });
      const db = t.server.database.db;
      let stopped = false;
      try {
        const seen = await recentServers(t.server.database);
        expect(seen).toEqual([
          expect.objectContaining({ host: processHostId(), pid: process.pid, schemaVersion: schema }),
        ]);
        const version = seen[0]!.version;
        expect(version).toMatch(/^\d+\.\d+\.\d+/);

        // The same server seen by a build whose schema is newer (pending migrations): refused, naming it. On SQLite
        // the file lock decides instead (serve holds it; init and token test it): no refusal from the rows there.
        const newer = {
          database: 'the database',
          pending: ['9999_from_a_newer_build'],
          schemaVersion: '9999_from_a_newer_build',
        };
        const refused = await refuseMigratingUnderRunningServers(t.server.database, {
          ...newer,
          force: false,
          warn: () => {},
        }).then(
          () => undefined,
          (error: unknown) => error,
        );
        if (fixture.engine === 'sqlite') {
          expect(refused).toBeUndefined();
        } else {
          expect(refused).toBeInstanceOf(ServersRunningError);
          expect((refused as ServersRunningError).exitCode).toBe(4);
          expect((refused as Error).message).toContain(
            `this build would apply 1 migration(s) (9999_from_a_newer_build), and 1 server(s) ran on it within the last 60 s: ${processHostId()} pid ${process.pid} (version ${version}, schema ${schema}`,
          );
          expect((refused as Error).message).toMatch(/stop every replica first.*--force-migrate/);

          // Forced: a warning, no refusal.
          const warnings: string[] = [];
          await refuseMigratingUnderRunningServers(t.server.database, {
            ...newer,
            force: true,
            warn: (m) => warnings.push(m),
          });
          expect(warnings).toEqual([
            expect.stringMatching(/^--force-migrate: migrating although servers run/),
          ]);
        }
        // Nothing to migrate, or a server on the schema this build migrates to: nothing to refuse.
        await refuseMigratingUnderRunningServers(t.server.database, {
          ...newer,
          pending: [],
          force: false,
          warn: () => {},
        });
        await refuseMigratingUnderRunningServers(t.server.database, {
          ...newer,
          schemaVersion: schema,
          force: false,
          warn: () => {},
        });
        // A server not seen for longer than SERVER_SEEN_RECENT_MS (killed) is not counted.
        await sql`update server_instances set last_seen_at = last_seen_at - ${SERVER_SEEN_RECENT_MS + 1000}`.execute(
          db,
        );
        expect(await recentServers(t.server.database)).toEqual([]);
        await refuseMigratingUnderRunningServers(t.server.database, {
          ...newer,
          force: false,
          warn: () => {},
        });

        await t.stop();
        stopped = true;
      } finally {
        if (!stopped) await t.stop();
      }
      // Its row went with it: the next upgrade need not wait for it to age out.
      const again = await startTestServer({ database: location, dataDir });
      try {
        const rows = await sql<{ pid: number }>`select pid from server_instances`.execute(
          again.server.database.db,
        );
        expect(rows.rows).toHaveLength(1);
      } finally {
        await again.stop();
      }
    },
  );
});

describe.each(engines)('the registry on $engine', (fixture) => {
  it.skipIf(!fixture.available)(
    'a recent row of a server killed on this host does not keep an upgraded server from starting',
    async () => {
      const location = await fixture.createLocation();
      const dataDir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-registry-'));
      onTestFinished(() => rm(dataDir, { recursive: true, force: true }));
      const first = await startTestServer({ database: location, dataDir });
      const last = migrationNames.at(-1)!;
      const previous = migrationNames.at(-2)!;
      // A pid with no process: it stands for a server SIGKILLed (or killed by the OOM killer) just now.
      const gone = await unusedPid();
      await first.stop();
      // The database one migration behind this build, and the killed server's row as fresh as can be.
      const reopened = await openDatabase(location);
      try {
        await sql`insert into server_instances (id, host, pid, version, schema_version, started_at, last_seen_at)
          values ('killed', ${processHostId()}, ${gone}, '0.0.9', ${previous}, 0, ${databaseNowMs(fixture.engine)})`.execute(
          reopened.db,
        );
        await sql`delete from edgefleet_migrations where name = ${last}`.execute(reopened.db);
      } finally {
        await reopened.close();
      }

      const upgraded = await startTestServer({ database: location, dataDir });
      try {
        const applied = await sql<{ name: string }>`select name from edgefleet_migrations`.execute(
          upgraded.server.database.db,
        );
        expect(applied.rows.map((r) => r.name)).toContain(last);
      } finally {
        await upgraded.stop();
      }
    },
  );

  it.skipIf(!fixture.available)(
    'calls a capture write holder done only on SQLite, or on PostgreSQL when it is of this host and its pid is gone, however old the rows (review GL F1)',
    async () => {
      const database = await openFreshDatabase(fixture);
      onTestFinished(() => database.close());
      const gone = await unusedPid();
      const stale = SERVER_SEEN_RECENT_MS + 1000;
      const rows = [
        { id: 'gone-here', host: processHostId(), pid: gone, age: 0 },
        { id: 'gone-here-stale', host: processHostId(), pid: gone, age: stale },
        { id: 'alive-here', host: processHostId(), pid: process.pid, age: 0 },
        { id: 'other-host', host: 'another-host', pid: gone, age: 0 },
        // Frozen or cut off from the database: its row is not refreshed, its store put may still run.
        { id: 'other-host-stale', host: 'another-host', pid: gone, age: stale },
      ];
      for (const row of rows)
        await sql`insert into server_instances (id, host, pid, version, schema_version, started_at, last_seen_at)
          values (${row.id}, ${row.host}, ${row.pid}, '0.0.9', 'x', 0, ${databaseNowMs(fixture.engine)} - ${row.age})`.execute(
          database.db,
        );
      const judged: Record<string, boolean> = {};
      for (const id of [...rows.map((row) => row.id), 'no-row', undefined])
        judged[String(id)] = await captureHolderMayWrite(database, id);
      const postgres = fixture.engine === 'postgres';
      expect(judged).toEqual({
        'gone-here': false,
        'gone-here-stale': false,
        'alive-here': postgres,
        'other-host': postgres,
        'other-host-stale': postgres,
        // A server deletes its row as it stops, while an answered upload's put may still run.
        'no-row': postgres,
        // An older build's token names no server.
        undefined: postgres,
      });
    },
  );

  it.skipIf(!fixture.available)(
    "judges a row's pid only in this PID namespace and boot: the same hostname elsewhere is another host (review F9)",
    async () => {
      const database = await openFreshDatabase(fixture);
      onTestFinished(() => database.close());
      // A pid with no process here, as a running replica in another container with this hostname may have.
      const gone = await unusedPid();
      const hosts = {
        here: processHostId(),
        otherNamespace: `${os.hostname()}#pidns=1/boot=00000000`,
        // An older build's row: the hostname alone, which says nothing of the namespace.
        hostnameOnly: os.hostname(),
      };
      for (const [id, host] of Object.entries(hosts))
        await sql`insert into server_instances (id, host, pid, version, schema_version, started_at, last_seen_at)
          values (${id}, ${host}, ${gone}, '0.0.9', 'older', 0, ${databaseNowMs(fixture.engine)})`.execute(
          database.db,
        );
      const listed = (await recentServers(database)).map((server) => server.host).sort();
      // On Linux only the row of this namespace and boot is left out (its process is gone here); elsewhere there
      // is no namespace to tell, and the hostname alone is this host, as before.
      expect(listed).toEqual(
        hosts.here === os.hostname()
          ? [hosts.otherNamespace]
          : [hosts.hostnameOnly, hosts.otherNamespace].sort(),
      );
    },
  );

  it.skipIf(!fixture.available)(
    'rows are written and compared on the database clock, and a row deleted as stale comes back',
    async () => {
      const database = await openFreshDatabase(fixture);
      onTestFinished(() => database.close());
      const logger = pino({ level: 'silent' });
      // This replica's clock 120 s behind the others' (and the database's).
      vi.useFakeTimers({ toFake: ['Date'] });
      vi.setSystemTime(Date.now() - 120_000);
      let registration;
      try {
        registration = await registerServer(database, {
          version: '0.0.9',
          schemaVersion: 'older',
          logger,
          refreshMs: 20,
        });
      } finally {
        vi.useRealTimers();
      }
      onTestFinished(() => registration.stop());
      const seen = await recentServers(database);
      expect(seen).toEqual([expect.objectContaining({ pid: process.pid, schemaVersion: 'older' })]);
      expect(seen[0]!.lastSeenMsAgo).toBeGreaterThanOrEqual(0);
      expect(seen[0]!.lastSeenMsAgo).toBeLessThan(SERVER_SEEN_RECENT_MS);

      // Deleted by another server (stale by its clock): the next refresh writes the row again.
      await sql`delete from server_instances`.execute(database.db);
      await vi.waitFor(
        async () => {
          expect(await recentServers(database)).toHaveLength(1);
        },
        { timeout: 10_000, interval: 20 },
      );
    },
  );
});

const postgres = engines.find((e) => e.engine === 'postgres')!;

describe.skipIf(!postgres.available)('a replica of a newer build beside an older one on PostgreSQL', () => {
  it('is refused with exit code 4 before it migrates, and starts with forceMigrate', async () => {
    const location = await postgres.createLocation();
    const dataDir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-registry-'));
    onTestFinished(() => rm(dataDir, { recursive: true, force: true }));
    const older = await startTestServer({ database: location, dataDir });
    try {
      // Make the running server an older build's: the database one migration behind this build (its record taken
      // away), and the server recorded on that schema (as a server of the previous version would be).
      const db = older.server.database.db;
      const last = migrationNames.at(-1)!;
      const previous = migrationNames.at(-2)!;
      expect(last).toBe('0027_packaging_job_disk_retries');
      await sql`update server_instances set schema_version = ${previous}, version = '0.0.1'`.execute(db);
      // The table stays: its migration creates it only where it is missing.
      await sql`delete from edgefleet_migrations where name = ${last}`.execute(db);

      const refused = await startTestServer({ database: location, dataDir }).then(
        async (started) => {
          await started.stop();
          return undefined;
        },
        (error: unknown) => error,
      );
      expect(refused).toBeInstanceOf(ServersRunningError);
      expect((refused as Error).message).toContain(
        `this build would apply 1 migration(s) (${last}), and 1 server(s) ran on it within the last 60 s`,
      );
      expect((refused as Error).message).toContain('version 0.0.1');
      const applied = await sql<{ name: string }>`select name from edgefleet_migrations`.execute(db);
      expect(applied.rows.map((r) => r.name)).not.toContain(last);

      const forced = await startTestServer({ database: location, dataDir, start: { forceMigrate: true } });
      await forced.stop();
      const after = await sql<{ name: string }>`select name from edgefleet_migrations`.execute(db);
      expect(after.rows.map((r) => r.name)).toContain(last);
    } finally {
      await older.stop();
    }
  });
});
