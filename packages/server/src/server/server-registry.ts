import { randomUUID } from 'node:crypto';
import { readFileSync, readlinkSync } from 'node:fs';
import os from 'node:os';
import { sql } from 'kysely';
import type { Logger } from 'pino';
import { startPeriodicTask } from '../background/index.js';
import { databaseNowMs, type ServerDatabase } from '../storage/index.js';

/** Re-exported: server_instances was its first user. */
export { databaseNowMs } from '../storage/index.js';

/** How often a running server refreshes its row. */
export const SERVER_SEEN_REFRESH_MS = 15_000;
/** A row refreshed within this long is a server that runs (four refreshes: room for a slow database). */
export const SERVER_SEEN_RECENT_MS = 60_000;

export interface RunningServer {
  host: string;
  pid: number;
  version: string;
  schemaVersion: string;
  /** How long ago, on the database's clock, the server last refreshed its row. */
  lastSeenMsAgo: number;
}

/**
 * What a server_instances row calls this process's host: the hostname, and on Linux its PID namespace and boot
 * (`edge-1#pidns=4026531836/boot=1a2b3c4d`), so that the liveness check by pid (recentServers) applies only to
 * rows whose pids mean the same processes as here. Two containers with one hostname (compose `hostname:`, host
 * networking) have separate PID namespaces, and a pid of one says nothing of the other. Where these cannot be
 * read (not Linux), the hostname alone. `procRoot` is /proc, for tests.
 */
export function processHostId(hostname = os.hostname(), procRoot = '/proc'): string {
  try {
    const namespace = /\[(\d+)\]/.exec(readlinkSync(`${procRoot}/self/ns/pid`))?.[1];
    const boot = readFileSync(`${procRoot}/sys/kernel/random/boot_id`, 'utf8').trim().slice(0, 8);
    return namespace === undefined || boot === '' ? hostname : `${hostname}#pidns=${namespace}/boot=${boot}`;
  } catch {
    return hostname;
  }
}

/** Whether a process of this host runs with `pid` (EPERM: it runs, as another user). */
function processIsAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}

/**
 * The servers seen on this database within SERVER_SEEN_RECENT_MS (on the database's clock); [] before the table
 * exists. A row of this host whose process is gone is left out: a server killed without stopping (SIGKILL, OOM, a
 * crash) is not running, however recent its row. "This host" is processHostId: the same hostname in another PID
 * namespace, or a row of an older build (the hostname alone), is another host's, listed until its row ages out.
 */
export async function recentServers(
  database: Pick<ServerDatabase, 'db' | 'engine'>,
): Promise<RunningServer[]> {
  const { db, engine } = database;
  const tables = await db.introspection.getTables();
  if (!tables.some((table) => table.name === 'server_instances')) return [];
  const now = databaseNowMs(engine);
  const rows = await db
    .selectFrom('server_instances')
    .select(['host', 'pid', 'version', 'schema_version'])
    .select(sql<number>`${now} - last_seen_at`.as('ms_ago'))
    .where('last_seen_at', '>', sql<number>`${now} - ${SERVER_SEEN_RECENT_MS}`)
    .orderBy('last_seen_at', 'desc')
    .execute();
  const thisHost = processHostId();
  return rows
    .map((row) => ({
      host: row.host,
      pid: Number(row.pid),
      version: row.version,
      schemaVersion: row.schema_version,
      lastSeenMsAgo: Number(row.ms_ago),
    }))
    .filter((server) => server.host !== thisHost || processIsAlive(server.pid));
}

/**
 * Whether the server process `holderId` (a capture write token's prefix; undefined: an older build's token, which
 * names none) may still be writing the capture object it holds, so that its write waits for the lease (15 min,
 * longer than any upload) rather than being taken over at once. Only a holder certainly done is not:
 * - on SQLite, any other process: the file lock (lockSqliteDatabase) lets one server run on the database, so the
 *   holder is a process that ended (this process's own tokens are judged by CaptureIngest, not here);
 * - on PostgreSQL, a holder of this host (processHostId: hostname, PID namespace, boot) whose pid no longer runs.
 * A holder on another host may be writing however old its row: a frozen (paused VM, SIGSTOP) or partitioned replica
 * stops refreshing its row but its store put goes on. A missing row proves nothing either: a server deletes its
 * row at a clean stop, when a put of an answered upload may still run.
 */
export async function captureHolderMayWrite(
  database: Pick<ServerDatabase, 'db' | 'engine'>,
  holderId: string | undefined,
): Promise<boolean> {
  if (database.engine === 'sqlite') return false;
  if (holderId === undefined) return true;
  const row = await database.db
    .selectFrom('server_instances')
    .select(['host', 'pid'])
    .where('id', '=', holderId)
    .executeTakeFirst();
  if (row === undefined || row.host !== processHostId()) return true;
  return processIsAlive(Number(row.pid));
}

/**
 * Servers run on a database this build would migrate: they run an older schema, and would break the new one's
 * rules (a new unique index they do not know of, a column they leave empty). Exit 4, as for a SQLite database
 * another server holds: stop them first.
 */
export class ServersRunningError extends Error {
  readonly exitCode = 4;
  constructor(
    readonly database: string,
    readonly servers: readonly RunningServer[],
    pending: readonly string[],
  ) {
    const listed = servers
      .map(
        (s) =>
          `${s.host} pid ${s.pid} (version ${s.version}, schema ${s.schemaVersion}, last seen ${Math.round(s.lastSeenMsAgo / 1000)} s ago)`,
      )
      .join('; ');
    const listedFor = Math.ceil(
      (SERVER_SEEN_RECENT_MS - Math.min(...servers.map((s) => s.lastSeenMsAgo))) / 1000,
    );
    super(
      `database ${database}: this build would apply ${pending.length} migration(s) (${pending.join(', ')}), and ` +
        `${servers.length} server(s) ran on it within the last ${SERVER_SEEN_RECENT_MS / 1000} s: ${listed}. ` +
        'They would run on a schema they do not know: stop every replica first, then start this version ' +
        '(packages/server/README.md, "Upgrading the server"). A server of another host killed without stopping ' +
        `is listed ${SERVER_SEEN_RECENT_MS / 1000} s after its last refresh (here: ${listedFor} s more); to migrate ` +
        'anyway, pass --force-migrate',
    );
    this.name = 'ServersRunningError';
  }
}

/**
 * Before this build migrates the schema (`pending` not empty): refuses when a server of another schema ran on the
 * database lately, or with `force` says so loudly through `warn` and goes on. Best-effort, not a lock: servers of
 * builds before the table existed are not seen, and a server registers only once its database is migrated. On
 * SQLite the file lock decides instead (`serve` holds it, init and token test it), so every row there is a dead process's.
 */
export async function refuseMigratingUnderRunningServers(
  database: Pick<ServerDatabase, 'db' | 'engine'>,
  options: {
    database: string;
    pending: readonly string[];
    /** The schema this build migrates to (its last migration's name). */
    schemaVersion: string;
    force: boolean;
    warn: (message: string) => void;
  },
): Promise<void> {
  if (options.pending.length === 0 || database.engine === 'sqlite') return;
  // A server on this build's schema is not endangered: a replica of this version that migrated first (replicas
  // starting together on a fresh database) is one.
  const servers = (await recentServers(database)).filter((s) => s.schemaVersion !== options.schemaVersion);
  if (servers.length === 0) return;
  const error = new ServersRunningError(options.database, servers, options.pending);
  if (!options.force) throw error;
  options.warn(`--force-migrate: migrating although servers run on the database: ${error.message}`);
}

export interface ServerRegistration {
  readonly id: string;
  /** Stops refreshing and deletes the row (a clean stop: the next upgrade need not wait for it to age). */
  stop(): Promise<void>;
}

/**
 * Records this server in server_instances and refreshes its row every SERVER_SEEN_REFRESH_MS until stopped, so
 * that a build about to migrate the schema sees it (refuseMigratingUnderRunningServers). Rows of servers killed
 * long ago are removed at start.
 */
export async function registerServer(
  database: Pick<ServerDatabase, 'db' | 'engine'>,
  options: {
    version: string;
    schemaVersion: string;
    logger: Logger;
    refreshMs?: number;
    /** The id to register under (what this process's capture write tokens name); a new one by default. */
    id?: string;
  },
): Promise<ServerRegistration> {
  const { db, engine } = database;
  const now = databaseNowMs(engine);
  const id = options.id ?? randomUUID();
  await db
    .deleteFrom('server_instances')
    .where('last_seen_at', '<', sql<number>`${now} - ${24 * 60 * 60 * 1000}`)
    .execute();
  // An upsert: a row another server deleted (stale by its clock, or by hand) comes back at the next refresh.
  const seen = () =>
    db
      .insertInto('server_instances')
      .values({
        id,
        host: processHostId(),
        pid: process.pid,
        version: options.version,
        schema_version: options.schemaVersion,
        started_at: now,
        last_seen_at: now,
      })
      .onConflict((conflict) => conflict.column('id').doUpdateSet({ last_seen_at: now }))
      .execute();
  await seen();
  const refresh = startPeriodicTask(
    async () => {
      await seen();
    },
    {
      intervalMs: options.refreshMs ?? SERVER_SEEN_REFRESH_MS,
      logger: options.logger,
      failureMessage: 'could not refresh this server’s row in server_instances; will retry',
    },
  );
  return {
    id,
    stop: async () => {
      await refresh.stop();
      await db
        .deleteFrom('server_instances')
        .where('id', '=', id)
        .execute()
        .catch((error: unknown) =>
          options.logger.warn(
            { err: error },
            'could not delete this server’s row in server_instances; it ages out in a minute',
          ),
        );
    },
  };
}
