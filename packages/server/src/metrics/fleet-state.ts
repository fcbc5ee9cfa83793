import { Gauge, type Registry } from 'prom-client';
import { sql, type Kysely } from 'kysely';
import type { Logger } from 'pino';
import { stageStatusSchema } from '../deployments/deployment-schemas.js';
import { LineLimiter } from '../logging/line-limiter.js';
import { packagingJobStatusSchema } from '../packaging/packaging-jobs.js';
import type { DatabaseSchema } from '../storage/index.js';

/** Stage statuses as stored (deployments' StageStatus): the only label values the stage gauge takes. */
const STAGE_STATUSES = stageStatusSchema.options;
/** Packaging job statuses as stored (packaging's PackagingJobStatus). */
const PACKAGING_JOB_STATUSES = packagingJobStatusSchema.options;

/** How long one evaluation serves scrapes; a scrape flood then costs the database one read per this. */
export const DEFAULT_FLEET_STATE_TTL_MS = 5_000;
/** How long a scrape waits for the counts: a database that hangs shows as not usable, not as a hung scrape. */
export const DEFAULT_FLEET_STATE_READ_TIMEOUT_MS = 2_000;

/** The counts were not read within the reader's deadline (the database hangs, or its pool is used up). */
export class FleetStateReadTimeoutError extends Error {
  constructor(readonly timeoutMs: number) {
    super(`the database did not answer the fleet's counts within ${timeoutMs} ms`);
    this.name = 'FleetStateReadTimeoutError';
  }
}

/** The fleet as counted at one moment: a few grouped counts, whatever the number of devices or plans. */
export interface FleetState {
  devices: { online: number; offline: number; never_seen: number };
  deploymentStages: Record<(typeof STAGE_STATUSES)[number], number>;
  /** Stages that ended FAILED within the last hour: retention deletes old plans, so the gauge above can fall. */
  deploymentStagesFailedLastHour: number;
  packagingJobs: Record<(typeof PACKAGING_JOB_STATUSES)[number], number>;
}

/** A status column's grouped counts, on the statuses known; a value no build writes is left out. */
function countsOf<S extends string>(
  known: readonly S[],
  rows: readonly { status: string; count: number | string | bigint }[],
): Record<S, number> {
  const counts = Object.fromEntries(known.map((status) => [status, 0])) as Record<S, number>;
  for (const row of rows)
    if ((known as readonly string[]).includes(row.status)) counts[row.status as S] = Number(row.count);
  return counts;
}

/**
 * Reads the fleet's state for a scrape: three grouped queries, cached for `ttlMs`, and one evaluation in flight
 * shared by every scrape that arrives while it runs. A failed read is cached as long (an outage must not turn
 * a scrape flood into a query flood) and reported as the database not usable; so is one not done within
 * `readTimeoutMs`, whose queries are left to finish (never a second set beside them: no pile-up of queries on a
 * hung database).
 */
export class FleetStateReader {
  readonly #db: Kysely<DatabaseSchema>;
  readonly #offlineAfterMs: number;
  readonly #ttlMs: number;
  readonly #readTimeoutMs: number;
  readonly #now: () => number;
  readonly #onError: ((error: unknown) => void) | undefined;
  #cached: { at: number; state: FleetState | undefined } | undefined;
  #inFlight: Promise<FleetState | undefined> | undefined;
  /** The database read itself, until it settles: may outlive #inFlight when the deadline passes first. */
  #reading: Promise<FleetState | undefined> | undefined;
  #evaluations = 0;

  /** `onError` hears why a read failed (the scrape shows only that the database could not be used). */
  constructor(
    db: Kysely<DatabaseSchema>,
    options: {
      offlineAfterMs: number;
      ttlMs?: number;
      readTimeoutMs?: number;
      now?: () => number;
      onError?: (error: unknown) => void;
    },
  ) {
    this.#db = db;
    this.#offlineAfterMs = options.offlineAfterMs;
    this.#ttlMs = options.ttlMs ?? DEFAULT_FLEET_STATE_TTL_MS;
    this.#readTimeoutMs = options.readTimeoutMs ?? DEFAULT_FLEET_STATE_READ_TIMEOUT_MS;
    this.#now = options.now ?? Date.now;
    this.#onError = options.onError;
  }

  /** Reads of the database run so far (concurrent scrapes share one). */
  get evaluations(): number {
    return this.#evaluations;
  }

  /** The state, at most ttlMs old; undefined when the database did not answer. */
  read(): Promise<FleetState | undefined> {
    if (this.#cached !== undefined && this.#now() - this.#cached.at < this.#ttlMs)
      return Promise.resolve(this.#cached.state);
    if (this.#inFlight !== undefined) return this.#inFlight;
    this.#reading ??= this.#evaluate().finally(() => (this.#reading = undefined));
    this.#inFlight = this.#withinDeadline(this.#reading).then((state) => {
      this.#cached = { at: this.#now(), state };
      this.#inFlight = undefined;
      return state;
    });
    return this.#inFlight;
  }

  /** `reading`'s state, or undefined (and onError told why) when it is not done within readTimeoutMs. */
  #withinDeadline(reading: Promise<FleetState | undefined>): Promise<FleetState | undefined> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#onError?.(new FleetStateReadTimeoutError(this.#readTimeoutMs));
        resolve(undefined);
      }, this.#readTimeoutMs);
      timer.unref();
      void reading.then((state) => {
        clearTimeout(timer);
        resolve(state);
      });
    });
  }

  async #evaluate(): Promise<FleetState | undefined> {
    this.#evaluations++;
    const since = this.#now() - this.#offlineAfterMs;
    try {
      // One after another, not together: a scrape holds one of the pool's connections, never three.
      // One row: devices heard from within offlineAfterMs, and never heard from (the rest are offline).
      const devices = await this.#db
        .selectFrom('devices')
        .select([
          sql<number | string>`count(*)`.as('registered'),
          sql<number | string>`count(case when last_heartbeat_at >= ${since} then 1 end)`.as('online'),
          sql<number | string>`count(case when last_heartbeat_at is null then 1 end)`.as('never_seen'),
        ])
        .executeTakeFirstOrThrow();
      const hourAgo = this.#now() - 3_600_000;
      const stages = await this.#db
        .selectFrom('deployment_stages')
        .select([
          'status',
          sql<number | string>`count(*)`.as('count'),
          sql<number | string>`count(case when ended_at >= ${hourAgo} then 1 end)`.as('ended_last_hour'),
        ])
        .groupBy('status')
        .execute();
      const jobs = await this.#db
        .selectFrom('packaging_jobs')
        .select(['status', sql<number | string>`count(*)`.as('count')])
        .groupBy('status')
        .execute();
      const online = Number(devices.online);
      const neverSeen = Number(devices.never_seen);
      return {
        devices: { online, offline: Number(devices.registered) - online - neverSeen, never_seen: neverSeen },
        deploymentStages: countsOf(STAGE_STATUSES, stages),
        deploymentStagesFailedLastHour: Number(
          stages.find((row) => row.status === 'FAILED')?.ended_last_hour ?? 0,
        ),
        packagingJobs: countsOf(PACKAGING_JOB_STATUSES, jobs),
      };
    } catch (error) {
      this.#onError?.(error);
      return undefined;
    }
  }
}

/**
 * FleetStateReader's `onError` for the server's log: at warn, once a minute at most (a scraper asks every few
 * seconds for as long as the database is down), with the number of failures left out since.
 */
export function readFailureLog(logger: Logger): (error: unknown) => void {
  const lines = new LineLimiter();
  return (error) => {
    const admitted = lines.admit('fleet-state');
    if (admitted === undefined) return;
    logger.warn(
      {
        err: error,
        event: 'metrics_read_failed',
        ...(admitted.leftOut > 0 && { failuresNotLogged: admitted.leftOut }),
      },
      "GET /metrics could not read the fleet's counts from the database: edgefleet_server_database_usable is 0 and they are left out (logged at most once a minute)",
    );
  };
}

/**
 * Gauges read from the fleet's state at each scrape (the reader's cache bounds what that costs), and
 * edgefleet_server_database_usable: whether the database answered that read. While it does not, the fleet
 * gauges are left out of the scrape rather than showing stale counts.
 */
export function registerFleetStateGauges(registry: Registry, reader: FleetStateReader): void {
  const registers = [registry];
  new Gauge({
    name: 'edgefleet_server_database_usable',
    help: "1 when the database answered the scrape's read (cached a few seconds), 0 when it could not be used (unreachable, full or failing disk, or given up until a restart)",
    registers,
    async collect() {
      this.set((await reader.read()) === undefined ? 0 : 1);
    },
  });
  // One gauge per group of the state, a sample per label value; left out while the database cannot be used.
  const groupedGauge = (
    name: string,
    help: string,
    label: string,
    pick: (state: FleetState) => Record<string, number>,
  ) =>
    new Gauge({
      name,
      help,
      labelNames: [label],
      registers,
      async collect() {
        this.reset();
        const state = await reader.read();
        if (state === undefined) return;
        for (const [value, count] of Object.entries(pick(state))) this.set({ [label]: value }, count);
      },
    });
  groupedGauge(
    'edgefleet_server_devices',
    'Registered devices by connection state: online (a heartbeat within heartbeat.intervalSeconds × heartbeat.offlineAfterMissed), offline (heard from, not since), never_seen',
    'state',
    (state) => state.devices,
  );
  groupedGauge(
    'edgefleet_server_deployment_stages',
    `Deployment plans' stages by status (a plan has no status of its own: its stages' are its progress): ${STAGE_STATUSES.join(', ')}`,
    'status',
    (state) => state.deploymentStages,
  );
  new Gauge({
    name: 'edgefleet_server_deployment_stages_failed_last_hour',
    help: 'Deployment stages that ended FAILED within the last hour (alert on it: plan retention deletes old plans, so the FAILED count of edgefleet_server_deployment_stages can fall while new stages fail)',
    registers,
    async collect() {
      const state = await reader.read();
      if (state !== undefined) this.set(state.deploymentStagesFailedLastHour);
      else this.reset();
    },
  });
  groupedGauge(
    'edgefleet_server_packaging_jobs',
    `Packaging jobs by status: ${PACKAGING_JOB_STATUSES.join(', ')}`,
    'status',
    (state) => state.packagingJobs,
  );
}
