import { randomUUID } from 'node:crypto';
import os from 'node:os';
import type { Kysely } from 'kysely';
import type { Logger } from 'pino';
import { startPeriodicTask } from '../background/index.js';
import type { DatabaseSchema } from '../storage/index.js';

/** How often a running server refreshes its row. */
export const SERVER_SEEN_REFRESH_MS = 15_000;
/** A row refreshed within this long is a server that runs (four refreshes: room for a slow database). */
export const SERVER_SEEN_RECENT_MS = 60_000;

export interface RunningServer {
  host: string;
  pid: number;
  version: string;
  schemaVersion: string;
  lastSeenAt: number;
}

/** The servers seen on this database within SERVER_SEEN_RECENT_MS of `now`; [] before the table exists. */
export async function recentServers(db: Kysely<DatabaseSchema>, now: number): Promise<RunningServer[]> {
  const tables = await db.introspection.getTables();
  if (!tables.some((table) => table.name === 'server_instances')) return [];
  const rows = await db
    .selectFrom('server_instances')
    .select(['host', 'pid', 'version', 'schema_version', 'last_seen_at'])
    .where('last_seen_at', '>', now - SERVER_SEEN_RECENT_MS)
    .orderBy('last_seen_at', 'desc')
    .execute();
  return rows.map((row) => ({
    host: row.host,
    pid: Number(row.pid),
    version: row.version,
    schemaVersion: row.schema_version,
    lastSeenAt: Number(row.last_seen_at),
  }));
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
    now: number,
  ) {
    const listed = servers
      .map(
        (s) =>
          `${s.host} pid ${s.pid} (version ${s.version}, schema ${s.schemaVersion}, last seen ${Math.round((now - s.lastSeenAt) / 1000)} s ago)`,
      )
      .join('; ');
    const expires = new Date(Math.max(...servers.map((s) => s.lastSeenAt)) + SERVER_SEEN_RECENT_MS);
    super(
      `database ${database}: this build would apply ${pending.length} migration(s) (${pending.join(', ')}), and ` +
        `${servers.length} server(s) ran on it within the last ${SERVER_SEEN_RECENT_MS / 1000} s: ${listed}. ` +
        'They would run on a schema they do not know: stop every replica first, then start this version ' +
        '(packages/server/README.md, "Upgrading the server"). A server killed without stopping is listed ' +
        `until ${expires.toISOString()}; to migrate anyway, pass --force-migrate`,
    );
    this.name = 'ServersRunningError';
  }
}

/**
 * Before this build migrates the schema (`pending` not empty): refuses when a server of another schema ran on the
 * database lately, or with `force` says so loudly through `warn` and goes on. Servers of builds before the table existed are not
 * seen (on SQLite, the database lock still tells of a `serve`).
 */
export async function refuseMigratingUnderRunningServers(
  db: Kysely<DatabaseSchema>,
  options: {
    database: string;
    pending: readonly string[];
    /** The schema this build migrates to (its last migration's name). */
    schemaVersion: string;
    force: boolean;
    warn: (message: string) => void;
    now?: number;
  },
): Promise<void> {
  if (options.pending.length === 0) return;
  const now = options.now ?? Date.now();
  // A server on this build's schema is not endangered: a replica of this version that migrated first (replicas
  // starting together on a fresh database) is one.
  const servers = (await recentServers(db, now)).filter((s) => s.schemaVersion !== options.schemaVersion);
  if (servers.length === 0) return;
  const error = new ServersRunningError(options.database, servers, options.pending, now);
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
  db: Kysely<DatabaseSchema>,
  options: {
    version: string;
    schemaVersion: string;
    logger: Logger;
    now?: () => number;
    refreshMs?: number;
  },
): Promise<ServerRegistration> {
  const now = options.now ?? Date.now;
  const id = randomUUID();
  const startedAt = now();
  await db
    .deleteFrom('server_instances')
    .where('last_seen_at', '<', startedAt - 24 * 60 * 60 * 1000)
    .execute();
  await db
    .insertInto('server_instances')
    .values({
      id,
      host: os.hostname(),
      pid: process.pid,
      version: options.version,
      schema_version: options.schemaVersion,
      started_at: startedAt,
      last_seen_at: startedAt,
    })
    .execute();
  const refresh = startPeriodicTask(
    async () => {
      await db.updateTable('server_instances').set({ last_seen_at: now() }).where('id', '=', id).execute();
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
