import { sql, type Kysely } from 'kysely';
import type { Logger } from 'pino';
import type { DatabaseSchema } from '../storage/index.js';

/** What changed, in the console's terms: each page refetches the topics it shows. */
export type ChangeTopic = 'fleets' | 'devices' | 'models' | 'packaging' | 'tokens' | 'deployments';

type Snapshot = Record<ChangeTopic, string>;

/** A device's last heartbeat, -1 for never, spelt as the devices_last_seen index (migration 0008) has it. */
const lastSeen = sql<number>`coalesce(last_heartbeat_at, -1)`;

/**
 * One fingerprint per topic, read from the database (not from this process's memory), so a change any
 * replica wrote reaches consoles connected to every replica. Counts catch deletions; the newest timestamps
 * catch updates and heartbeats; the oldest heartbeat among the devices online catches devices going quiet,
 * which writes nothing. `onlineSince`: heartbeats after it are online. Exported for tests.
 */
export async function readSnapshot(db: Kysely<DatabaseSchema>, onlineSince: number): Promise<Snapshot> {
  const fingerprint = async (query: Promise<unknown>) => JSON.stringify(await query);
  const [fleets, devices, models, packaging, tokens, deployments] = await Promise.all([
    fingerprint(
      db
        .selectFrom('fleets')
        .select((eb) => [eb.fn.countAll().as('n'), eb.fn.max('updated_at').as('t')])
        .executeTakeFirst(),
    ),
    // Each an index seek (0008's devices_last_seen, 0010's devices_updated_at) but the count, which catches
    // deletions. Devices go quiet oldest heartbeat first, so the oldest heartbeat among those online changes
    // whenever one goes quiet: a seek, where counting the online devices read every row on every poll.
    fingerprint(
      Promise.all([
        db
          .selectFrom('devices')
          .select((eb) => eb.fn.countAll().as('n'))
          .executeTakeFirst(),
        db
          .selectFrom('devices')
          .select((eb) => eb.fn.max('updated_at').as('u'))
          .executeTakeFirst(),
        db
          .selectFrom('devices')
          .select((eb) => eb.fn.max(lastSeen).as('h'))
          .executeTakeFirst(),
        db
          .selectFrom('devices')
          .select((eb) => eb.fn.min(lastSeen).as('oldestOnline'))
          .where(lastSeen, '>', onlineSince)
          .executeTakeFirst(),
        db
          .selectFrom('device_certificates')
          .select((eb) => [eb.fn.countAll().as('n'), eb.fn.max('revoked_at').as('r')])
          .executeTakeFirst(),
      ]),
    ),
    fingerprint(
      db
        .selectFrom('model_versions')
        .select((eb) => [eb.fn.countAll().as('n'), eb.fn.max('created_at').as('t')])
        .executeTakeFirst(),
    ),
    fingerprint(
      db
        .selectFrom('packaging_jobs')
        .select((eb) => [eb.fn.countAll().as('n'), eb.fn.max('updated_at').as('t')])
        .executeTakeFirst(),
    ),
    fingerprint(
      db
        .selectFrom('api_tokens')
        .select((eb) => [eb.fn.countAll().as('n'), eb.fn.max('revoked_at').as('r')])
        .executeTakeFirst(),
    ),
    // Plans, stages and each device's progress (a device taking or finishing a deployment writes only its
    // target row); events are written with those rows, so they need no fingerprint of their own. Targets,
    // one row per device per plan, are only ever deleted with their plan, which the plan count catches; so
    // they are read by their newest updated_at alone, one entry of the 0008 index, instead of counted.
    fingerprint(
      Promise.all([
        ...(['deployment_plans', 'deployment_stages'] as const).map((table) =>
          db
            .selectFrom(table)
            .select((eb) => [eb.fn.countAll().as('n'), eb.fn.max('updated_at').as('t')])
            .executeTakeFirst(),
        ),
        db
          .selectFrom('deployment_targets')
          .select((eb) => eb.fn.max('updated_at').as('t'))
          .executeTakeFirst(),
      ]),
    ),
  ]);
  return { fleets, devices, models, packaging, tokens, deployments };
}

export type ChangeListener = (topics: ChangeTopic[]) => void;

/**
 * Polls the database while at least one console listens, and tells listeners which topics changed. One
 * poll per server serves every open stream.
 */
export class ChangeFeed {
  private readonly listeners = new Set<ChangeListener>();
  private timer: NodeJS.Timeout | undefined;
  private last: Snapshot | undefined;
  private polling = false;

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
    this.timer ??= setInterval(() => void this.poll(), this.options.pollMs);
    return () => {
      this.listeners.delete(listener);
      if (this.listeners.size === 0) this.stop();
    };
  }

  stop(): void {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
    this.last = undefined;
  }

  private async poll(): Promise<void> {
    if (this.polling) return;
    this.polling = true;
    try {
      const now = (this.options.now ?? Date.now)();
      const next = await readSnapshot(this.db, now - this.options.offlineAfterMs);
      const previous = this.last;
      this.last = next;
      if (previous === undefined) return;
      const changed = (Object.keys(next) as ChangeTopic[]).filter((topic) => next[topic] !== previous[topic]);
      if (changed.length === 0) return;
      for (const listener of this.listeners) listener(changed);
    } catch (error) {
      // A lost connection is replaced by the pool; the next poll tries again.
      this.options.logger.warn({ err: error }, 'console change feed: database poll failed');
    } finally {
      this.polling = false;
    }
  }
}
