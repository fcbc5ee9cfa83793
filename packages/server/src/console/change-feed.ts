import { sql, type Kysely } from 'kysely';
import type { Logger } from 'pino';
import type { DatabaseSchema } from '../storage/index.js';
import { startPeriodicTask, type PeriodicTask } from '../background/index.js';

/** What changed, in the console's terms: each page refetches the topics it shows. */
export type ChangeTopic = 'fleets' | 'devices' | 'models' | 'packaging' | 'tokens' | 'deployments';

type Snapshot = Record<ChangeTopic, string>;

/** A fleet's output outage problem (fleets/output-outage.ts) as a weight; no outage: 0. */
const OUTAGE_PROBLEM_WEIGHT = sql<number>`case output_outage_problem
  when 'missing-bucket' then 1 when 'forbidden' then 1000 when 'credentials' then 1000000
  when 'unreachable' then 1000000000 else 0 end`;

/** A device's last heartbeat, -1 for never, spelt as the devices_last_seen index (migration 0008) has it. */
const lastSeen = sql<number>`coalesce(last_heartbeat_at, -1)`;

/**
 * The statement one poll runs: every topic's fingerprint values as scalar subqueries of a single select, so a
 * poll holds one pooled connection (not one per value, which filled PostgreSQL's pool on every poll) and
 * reads one consistent snapshot. Counts catch deletions; the newest timestamps catch updates and heartbeats;
 * the oldest heartbeat among the devices online catches devices going quiet, which writes nothing.
 * `onlineSince`: heartbeats after it are online. Exported for the query-plan tests.
 */
export function snapshotQuery(db: Kysely<DatabaseSchema>, onlineSince: number) {
  return db.selectNoFrom((eb) => [
    eb.selectFrom('fleets').select(eb.fn.countAll().as('v')).as('fleets_n'),
    eb
      .selectFrom('fleets')
      .select((e) => e.fn.max('updated_at').as('v'))
      .as('fleets_t'),
    // An output outage starting, ending or failing again (captures/capture-ingest.ts) writes no updated_at: the
    // fleet was not edited. The sum of the outages' start and last failure times changes with each (the last
    // failure moves at most once a minute); fleets are few, so reading them is cheap.
    eb
      .selectFrom('fleets')
      .select(sql<number>`sum(output_outage_since + coalesce(output_outage_last_failure_at, 0))`.as('v'))
      .as('fleets_outages'),
    // An outage whose problem changes (forbidden, then missing-bucket) keeps its start time: the count of
    // fleets with each problem, one per thousand's digit group, changes with it (exact below 1000 fleets each).
    eb
      .selectFrom('fleets')
      .select(sql<number>`sum(${OUTAGE_PROBLEM_WEIGHT})`.as('v'))
      .as('fleets_problems'),
    // Devices: the count (which catches deletions) reads the whole table, or its smallest index, on every
    // poll; the other three are each one entry of an index (0010's devices_updated_at, 0008's
    // devices_last_seen). They are spelt as `order by … limit 1` rather than max()/min() so the plan shows
    // that the index gives the order: a min()'s plan reads the same whether or not it stops at the first
    // entry. Devices go quiet oldest heartbeat first, so the oldest heartbeat among those online changes
    // whenever one goes quiet, where counting the online devices read every row.
    eb.selectFrom('devices').select(eb.fn.countAll().as('v')).as('devices_n'),
    eb.selectFrom('devices').select('updated_at').orderBy('updated_at', 'desc').limit(1).as('devices_u'),
    eb.selectFrom('devices').select(lastSeen.as('v')).orderBy(lastSeen, 'desc').limit(1).as('devices_h'),
    eb
      .selectFrom('devices')
      .select(lastSeen.as('v'))
      .where(lastSeen, '>', onlineSince)
      .orderBy(lastSeen, 'asc')
      .limit(1)
      .as('devices_oldest_online'),
    eb.selectFrom('device_certificates').select(eb.fn.countAll().as('v')).as('certificates_n'),
    eb
      .selectFrom('device_certificates')
      .select((e) => e.fn.max('revoked_at').as('v'))
      .as('certificates_r'),
    eb.selectFrom('model_versions').select(eb.fn.countAll().as('v')).as('models_n'),
    eb
      .selectFrom('model_versions')
      .select((e) => e.fn.max('created_at').as('v'))
      .as('models_t'),
    eb.selectFrom('packaging_jobs').select(eb.fn.countAll().as('v')).as('packaging_n'),
    eb
      .selectFrom('packaging_jobs')
      .select((e) => e.fn.max('updated_at').as('v'))
      .as('packaging_t'),
    eb.selectFrom('api_tokens').select(eb.fn.countAll().as('v')).as('tokens_n'),
    eb
      .selectFrom('api_tokens')
      .select((e) => e.fn.max('revoked_at').as('v'))
      .as('tokens_r'),
    // Plans, stages and each device's progress (a device taking or finishing a deployment writes only its
    // target row); events are written with those rows, so they need no fingerprint of their own. Targets,
    // one row per device per plan, are only ever deleted with their plan, which the plan count catches; so
    // they are read by their newest updated_at alone, one entry of the 0008 index, instead of counted.
    eb.selectFrom('deployment_plans').select(eb.fn.countAll().as('v')).as('plans_n'),
    eb
      .selectFrom('deployment_plans')
      .select((e) => e.fn.max('updated_at').as('v'))
      .as('plans_t'),
    eb.selectFrom('deployment_stages').select(eb.fn.countAll().as('v')).as('stages_n'),
    eb
      .selectFrom('deployment_stages')
      .select((e) => e.fn.max('updated_at').as('v'))
      .as('stages_t'),
    eb
      .selectFrom('deployment_targets')
      .select('updated_at')
      .orderBy('updated_at', 'desc')
      .limit(1)
      .as('targets_t'),
  ]);
}

/**
 * One fingerprint per topic, read from the database (not from this process's memory), so a change any
 * replica wrote reaches consoles connected to every replica. Exported for tests.
 */
export async function readSnapshot(db: Kysely<DatabaseSchema>, onlineSince: number): Promise<Snapshot> {
  const row = await snapshotQuery(db, onlineSince).executeTakeFirstOrThrow();
  const fingerprint = (...values: unknown[]) => JSON.stringify(values);
  return {
    fleets: fingerprint(row.fleets_n, row.fleets_t, row.fleets_outages, row.fleets_problems),
    devices: fingerprint(
      row.devices_n,
      row.devices_u,
      row.devices_h,
      row.devices_oldest_online,
      row.certificates_n,
      row.certificates_r,
    ),
    models: fingerprint(row.models_n, row.models_t),
    packaging: fingerprint(row.packaging_n, row.packaging_t),
    tokens: fingerprint(row.tokens_n, row.tokens_r),
    deployments: fingerprint(row.plans_n, row.plans_t, row.stages_n, row.stages_t, row.targets_t),
  };
}

export type ChangeListener = (topics: ChangeTopic[]) => void;

/**
 * Polls the database while at least one console listens, and tells listeners which topics changed. One
 * poll per server serves every open stream.
 */
export class ChangeFeed {
  private readonly listeners = new Set<ChangeListener>();
  private task: PeriodicTask | undefined;
  private last: Snapshot | undefined;
  /** The first snapshot of the current task, taken at once when it starts (not one poll later). */
  private baseline: Promise<void> | undefined;

  constructor(
    private readonly db: Kysely<DatabaseSchema>,
    private readonly options: {
      pollMs: number;
      offlineAfterMs: number;
      logger: Logger;
      now?: () => number;
    },
  ) {}

  get listenerCount(): number {
    return this.listeners.size;
  }

  subscribe(listener: ChangeListener): () => void {
    this.listeners.add(listener);
    if (this.task === undefined) {
      const failureMessage = 'console change feed: database poll failed';
      // Polls wait for the baseline, so that two never run at once.
      const task: PeriodicTask = startPeriodicTask(
        async () => {
          await baseline;
          await this.poll(task);
        },
        {
          intervalMs: this.options.pollMs,
          logger: this.options.logger,
          // A lost connection is replaced by the pool; the next poll tries again.
          failureMessage,
        },
      );
      this.task = task;
      const baseline = this.poll(task).catch((error: unknown) =>
        this.options.logger.warn({ err: error }, failureMessage),
      );
      this.baseline = baseline;
    }
    return () => {
      this.listeners.delete(listener);
      if (this.listeners.size === 0) void this.stop();
    };
  }

  /**
   * Resolves once the feed holds the snapshot that later changes are told against: a change after it reaches
   * every listener subscribed before it. A stream says so to its console ("ready"), which then reloads what it
   * showed, so that nothing changed between its page's load and that snapshot is missed.
   */
  ready(): Promise<void> {
    return this.baseline ?? Promise.resolve();
  }

  /** Stops polling (until the next subscriber) and waits for a poll under way. */
  async stop(): Promise<void> {
    const task = this.task;
    this.task = undefined;
    this.baseline = undefined;
    this.last = undefined;
    await task?.stop();
  }

  private async poll(task: PeriodicTask): Promise<void> {
    const now = (this.options.now ?? Date.now)();
    const next = await readSnapshot(this.db, now - this.options.offlineAfterMs);
    // Stopped (and perhaps started again) while reading: this snapshot belongs to no poll of the current task.
    if (this.task !== task) return;
    const previous = this.last;
    this.last = next;
    if (previous === undefined) return;
    const changed = (Object.keys(next) as ChangeTopic[]).filter((topic) => next[topic] !== previous[topic]);
    if (changed.length === 0) return;
    for (const listener of this.listeners) listener(changed);
  }
}
