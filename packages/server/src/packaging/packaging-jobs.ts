import type { Kysely } from 'kysely';
import { z } from 'zod';
import { LOCAL_ACTOR, type Actor, type FleetEventLog } from '../audit/index.js';
import {
  DEFAULT_LEASE_MS,
  leaseExpiredBefore,
  leaseRenewalIntervalMs,
  newClaimToken,
} from '../background/index.js';
import { conflict, notFound } from '../errors/index.js';
import type { ModelStore } from '../models/index.js';
import {
  isUniqueViolation,
  leaseClock,
  type DatabaseClock,
  type DatabaseSchema,
  type PackagingJobsTable,
} from '../storage/index.js';

/** Who ends a packaging job in the fleet event log: the packaging worker of whichever replica ran it. */
const PACKAGING_ACTOR: Actor = { kind: 'server', worker: 'packaging' };

/** STARTING → INPROGRESS → COMPLETED | FAILED, as Edge Manager's packaging jobs. */
export const packagingJobStatusSchema = z.enum(['STARTING', 'INPROGRESS', 'COMPLETED', 'FAILED']);
export type PackagingJobStatus = z.infer<typeof packagingJobStatusSchema>;

export interface PackagingJobRecord {
  name: string;
  modelName: string;
  modelVersion: string;
  status: PackagingJobStatus;
  statusMessage: string | null;
  outputS3Location: string | null;
  artifactKey: string | null;
  /** Where the package is (`s3://…` or `file://…`). */
  artifactLocation: string | null;
  artifactSizeBytes: number | null;
  artifactSha256: string | null;
  /** The signature document (model.sig: a Sigstore bundle with a DSSE envelope), JSON text. */
  signature: string | null;
  createdAt: number;
  updatedAt: number;
}

/**
 * One runner's hold on a job: claiming writes a fresh token to the job's row, so a runner that stalled past its
 * lease while another replica resumed the job finds its token gone, and its writes (lease renewals, the
 * result) match nothing.
 */
export interface PackagingClaim {
  jobName: string;
  token: string;
}

/** An INPROGRESS job claimed under this server's identity, as read at one time (PackagingJobStore.ownClaims). */
export interface SeenClaim {
  name: string;
  token: string;
  updatedAt: number;
}

/**
 * What an INPROGRESS job's row says of its runner, read at `now`: nothing while it renews its lease; once two
 * renewals are missed (its server was killed, crashed or stalled), that it waits for its lease to expire and
 * when it will be resumed.
 */
function leaseNote(row: PackagingJobsTable, now: number, leaseMs: number): string | undefined {
  // A job waiting for disk space has no runner (its status message says when it is due).
  if (row.retry_at !== null && row.retry_at !== undefined) return undefined;
  if (row.status !== 'INPROGRESS' || now - row.updated_at <= 2 * leaseRenewalIntervalMs(leaseMs))
    return undefined;
  const renewed = new Date(row.updated_at).toISOString();
  const expires = row.updated_at + leaseMs;
  return (
    `its runner has not renewed the job's lease since ${renewed}: the server running it was interrupted ` +
    '(killed, crashed or stalled); ' +
    (now < expires
      ? `it is resumed by a server once the lease expires at ${new Date(expires).toISOString()} ` +
        '(at once if that same server restarts)'
      : `the lease expired at ${new Date(expires).toISOString()}: the next server to look for jobs resumes it`)
  );
}

function toRecord(row: PackagingJobsTable, now: number, leaseMs: number): PackagingJobRecord {
  const note = leaseNote(row, now, leaseMs);
  return {
    name: row.name,
    modelName: row.model_name,
    modelVersion: row.model_version,
    status: row.status as PackagingJobStatus,
    statusMessage:
      note === undefined ? row.status_message : [row.status_message, note].filter(Boolean).join('; '),
    outputS3Location: row.output_s3_location,
    artifactKey: row.artifact_key,
    artifactLocation: row.artifact_location,
    artifactSizeBytes: row.artifact_size_bytes,
    artifactSha256: row.artifact_sha256,
    signature: row.signature,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

/** Packaging jobs as rows: any replica may create one, and exactly one replica claims and runs it. */
export class PackagingJobStore {
  private readonly now: () => number;
  /** The clock of every time another replica compares (lease renewals, claims, retry times): the database's. */
  private readonly leaseNow: DatabaseClock;
  private readonly instanceId: string | undefined;
  private readonly leaseMs: number;

  /**
   * `options.instanceId`: this server's persisted identity (server/instance-id.ts); it prefixes the claim tokens
   * this store writes, so that the same server, restarted, knows its interrupted jobs (reclaimOwnInterrupted).
   * `options.leaseMs`: packaging.leaseSeconds, for what a job waiting on an interrupted runner's lease says.
   * `options.databaseNow`: the database's clock (databaseClock), which leases are written and judged by so that
   * replica clock skew does not count; absent: `now` (one process, tests).
   */
  constructor(
    private readonly db: Kysely<DatabaseSchema>,
    private readonly models: ModelStore,
    now?: () => number,
    options: {
      instanceId?: string;
      leaseMs?: number;
      events?: FleetEventLog;
      databaseNow?: DatabaseClock;
    } = {},
  ) {
    this.now = now ?? Date.now;
    this.leaseNow = leaseClock(options.databaseNow, () => this.now());
    this.instanceId = options.instanceId;
    this.leaseMs = options.leaseMs ?? DEFAULT_LEASE_MS;
    this.events = options.events;
  }

  /** The operator's log of fleet events (packaging job created, completed, failed). */
  private readonly events: FleetEventLog | undefined;

  /**
   * `now`: the database's clock (leaseNow) wherever the row may be INPROGRESS, since its updated_at was written by
   * that clock; the process clock would let a replica that runs ahead call a live runner interrupted.
   */
  private record(row: PackagingJobsTable, now: number): PackagingJobRecord {
    return toRecord(row, now, this.leaseMs);
  }

  /**
   * Called once when this server's packaging worker starts, before it claims anything: the INPROGRESS jobs whose
   * claim this same server identity wrote. Such a job was interrupted with this server's last run, unless a live
   * process with the same identity holds it (a data dir shared by replicas, or copied). `stale`: not renewed for
   * two renewal intervals (leaseRenewalIntervalMs), so no live runner holds them: release them now. `recent`:
   * renewed since, so release only those that stay unrenewed for two intervals more (releaseUnrenewed).
   */
  async ownClaims(): Promise<{ stale: SeenClaim[]; recent: SeenClaim[] }> {
    if (this.instanceId === undefined) return { stale: [], recent: [] };
    const rows = await this.db
      .selectFrom('packaging_jobs')
      .select(['name', 'claim_token', 'updated_at'])
      .where('status', '=', 'INPROGRESS')
      .where('claim_token', 'like', `${this.instanceId}.%`)
      .execute();
    const seen = rows.map((row) => ({
      name: row.name,
      token: row.claim_token ?? '',
      updatedAt: Number(row.updated_at),
    }));
    const cutoff = (await this.leaseNow()) - 2 * leaseRenewalIntervalMs(this.leaseMs);
    return {
      stale: seen.filter((job) => job.updatedAt < cutoff),
      recent: seen.filter((job) => job.updatedAt >= cutoff),
    };
  }

  /**
   * Ends the leases of the jobs of `seen` (ownClaims) that no runner renewed since, so the worker resumes them at
   * once instead of after the lease. For `recent` jobs, call it once two renewal intervals have passed since they
   * were read: a live runner renews every interval, so a job still as it was has lost its runner, and a live
   * process's job is left alone. Were a runner to stall past that (and so a job be taken from it),
   * its claim token fences it: work is repeated, never mixed. Returns the jobs released.
   */
  async releaseUnrenewed(seen: SeenClaim[]): Promise<string[]> {
    const released: string[] = [];
    for (const job of seen) {
      const now = await this.leaseNow();
      const result = await this.db
        .updateTable('packaging_jobs')
        .set({
          status_message: 'interrupted: the server running it restarted; resuming it',
          // An expired lease is what claimNext resumes; the claim stays until then, so any stray runner of it
          // still finds its token current only until the job is claimed again.
          updated_at: now - this.leaseMs - 1,
        })
        .where('name', '=', job.name)
        .where('status', '=', 'INPROGRESS')
        .where('claim_token', '=', job.token)
        .where('updated_at', '=', job.updatedAt)
        .executeTakeFirst();
      if (Number(result.numUpdatedRows) === 1) released.push(job.name);
    }
    return released;
  }

  async create(
    input: {
      name: string;
      modelName: string;
      modelVersion: string;
      outputS3Location?: string;
    },
    by: Actor = LOCAL_ACTOR,
  ): Promise<PackagingJobRecord> {
    await this.models.getVersion(input.modelName, input.modelVersion);
    const at = this.now();
    const row: PackagingJobsTable = {
      name: input.name,
      model_name: input.modelName,
      model_version: input.modelVersion,
      status: 'STARTING',
      status_message: null,
      output_s3_location: input.outputS3Location ?? null,
      artifact_key: null,
      artifact_location: null,
      artifact_size_bytes: null,
      artifact_sha256: null,
      signature: null,
      claim_token: null,
      created_at: at,
      updated_at: at,
      disk_full_attempts: 0,
      retry_at: null,
    };
    try {
      await this.db.insertInto('packaging_jobs').values(row).execute();
    } catch (error) {
      if (isUniqueViolation(error))
        throw conflict(`packaging job ${input.name} already exists`, { job: input.name });
      throw error;
    }
    this.events?.info(by, {
      event: 'packaging_job_created',
      outcome: 'created',
      object: { packagingJob: input.name, model: input.modelName, version: input.modelVersion },
      message: `packaging job ${input.name} created for model ${input.modelName} version ${input.modelVersion}`,
    });
    // A new job is STARTING, so it has no lease to judge: the process clock serves.
    return this.record(row, at);
  }

  async get(name: string): Promise<PackagingJobRecord> {
    const row = await this.db
      .selectFrom('packaging_jobs')
      .selectAll()
      .where('name', '=', name)
      .executeTakeFirst();
    if (row === undefined) throw notFound(`packaging job ${name}`, { job: name });
    return this.record(row, await this.leaseNow());
  }

  async list(options: {
    limit: number;
    after?: string;
    status?: PackagingJobStatus;
  }): Promise<PackagingJobRecord[]> {
    let query = this.db.selectFrom('packaging_jobs').selectAll().orderBy('name').limit(options.limit);
    if (options.after !== undefined) query = query.where('name', '>', options.after);
    if (options.status !== undefined) query = query.where('status', '=', options.status);
    const rows = await query.execute();
    const now = await this.leaseNow();
    return rows.map((row) => this.record(row, now));
  }

  /**
   * Takes the oldest job that is waiting (STARTING), whose wait for disk space is over (INPROGRESS, unclaimed,
   * its retry due), or whose runner's lease ran out (INPROGRESS, untouched for `leaseMs`: its server crashed, was
   * killed or stalled), or undefined. Runners touch their job well within the lease, so a live replica's job is
   * never taken. The update is conditional on the status and time read, so exactly one caller wins a job; it
   * gets a new claim token, which ends any earlier runner's claim. `attempt`: the attempt this claim makes (1,
   * or one more than those that met a full disk).
   */
  async claimNext(leaseMs: number): Promise<
    | {
        job: PackagingJobRecord;
        resumed: boolean;
        claim: PackagingClaim;
        attempt: number;
      }
    | undefined
  > {
    for (;;) {
      const now = await this.leaseNow();
      const next = await this.db
        .selectFrom('packaging_jobs')
        .select(['name', 'status', 'updated_at', 'retry_at', 'disk_full_attempts'])
        .where((eb) =>
          eb.or([
            eb('status', '=', 'STARTING'),
            eb.and([eb('status', '=', 'INPROGRESS'), eb('retry_at', '<=', now)]),
            eb.and([
              eb('status', '=', 'INPROGRESS'),
              eb('retry_at', 'is', null),
              eb('updated_at', '<', leaseExpiredBefore(now, leaseMs)),
            ]),
          ]),
        )
        .orderBy('created_at')
        .orderBy('name')
        .executeTakeFirst();
      if (next === undefined) return undefined;
      const waited = next.retry_at !== null;
      const resumed = next.status === 'INPROGRESS' && !waited;
      const attempt = Number(next.disk_full_attempts) + 1;
      const token = newClaimToken(this.instanceId);
      const result = await this.db
        .updateTable('packaging_jobs')
        .set({
          status: 'INPROGRESS',
          status_message: waited
            ? attempt > 1
              ? `packaging (attempt ${attempt}, after a full disk)`
              : 'packaging (resumed: the server packaging it stopped)'
            : resumed
              ? 'packaging (resumed after an interruption)'
              : 'packaging',
          claim_token: token,
          retry_at: null,
          updated_at: now,
        })
        .where('name', '=', next.name)
        .where('status', '=', next.status)
        .where('updated_at', '=', next.updated_at)
        .executeTakeFirst();
      if (Number(result.numUpdatedRows) === 1)
        return { job: await this.get(next.name), resumed, claim: { jobName: next.name, token }, attempt };
      // Another replica claimed it first: look again.
    }
  }

  /**
   * Hands the claim back. Gives up the claim on a job whose attempt `attempt` met a full disk, for `delayMs`: the
   * job stays INPROGRESS with `message(when its next attempt is due)`, and any replica (one with room) takes it
   * once due (claimNext).
   * When it is due; undefined, nothing written, once the claim is lost. A stopping server hands its job in hand
   * back the same way, due at once and with no attempt counted (`attempt` the attempts before it, `delayMs` 0).
   */
  async waitForSpace(
    claim: PackagingClaim,
    wait: { attempt: number; delayMs: number; message: (retryAt: number) => string },
  ): Promise<number | undefined> {
    const now = await this.leaseNow();
    const retryAt = now + wait.delayMs;
    const result = await this.db
      .updateTable('packaging_jobs')
      .set({
        status_message: wait.message(retryAt),
        claim_token: null,
        disk_full_attempts: wait.attempt,
        retry_at: retryAt,
        updated_at: now,
      })
      .where('name', '=', claim.jobName)
      .where('status', '=', 'INPROGRESS')
      .where('claim_token', '=', claim.token)
      .executeTakeFirst();
    return Number(result.numUpdatedRows) === 1 ? retryAt : undefined;
  }

  /**
   * Of `names`, the jobs this server identity (instanceId) holds now: INPROGRESS under one of its claims. A
   * temporary folder of any other job (finished, deleted, waiting unclaimed, or resumed by another replica, which
   * builds in its own data dir) has no runner here. Without an identity (tests), every claimed job counts.
   */
  async heldHere(names: string[]): Promise<Set<string>> {
    if (names.length === 0) return new Set();
    const rows = await this.db
      .selectFrom('packaging_jobs')
      .select('name')
      .where('name', 'in', names)
      .where('status', '=', 'INPROGRESS')
      .where(
        'claim_token',
        this.instanceId === undefined ? 'is not' : 'like',
        this.instanceId === undefined ? null : `${this.instanceId}.%`,
      )
      .execute();
    return new Set(rows.map((row) => row.name));
  }

  /** True while the claim is the job's current one (nobody resumed the job since, and it is not finished). */
  async holds(claim: PackagingClaim): Promise<boolean> {
    const row = await this.db
      .selectFrom('packaging_jobs')
      .select('name')
      .where('name', '=', claim.jobName)
      .where('status', '=', 'INPROGRESS')
      .where('claim_token', '=', claim.token)
      .executeTakeFirst();
    return row !== undefined;
  }

  /** Renews the runner's lease on the job (see claimNext); false once the claim is lost. */
  async touch(claim: PackagingClaim, message: string): Promise<boolean> {
    const result = await this.db
      .updateTable('packaging_jobs')
      .set({ status_message: message, updated_at: await this.leaseNow() })
      .where('name', '=', claim.jobName)
      .where('status', '=', 'INPROGRESS')
      .where('claim_token', '=', claim.token)
      .executeTakeFirst();
    return Number(result.numUpdatedRows) === 1;
  }

  /** Records the claim's artifact and marks the job COMPLETED; false (nothing written) once the claim is lost. */
  async complete(
    claim: PackagingClaim,
    result: {
      artifactKey: string;
      artifactLocation: string;
      artifactSizeBytes: number;
      artifactSha256: string;
      signature: string;
      message: string;
    },
  ): Promise<boolean> {
    const updated = await this.db
      .updateTable('packaging_jobs')
      .set({
        status: 'COMPLETED',
        status_message: result.message,
        artifact_key: result.artifactKey,
        artifact_location: result.artifactLocation,
        artifact_size_bytes: result.artifactSizeBytes,
        artifact_sha256: result.artifactSha256,
        signature: result.signature,
        updated_at: this.now(),
      })
      .where('name', '=', claim.jobName)
      .where('status', '=', 'INPROGRESS')
      .where('claim_token', '=', claim.token)
      .executeTakeFirst();
    if (Number(updated.numUpdatedRows) !== 1) return false;
    this.events?.info(PACKAGING_ACTOR, {
      event: 'packaging_job_completed',
      outcome: 'completed',
      object: {
        packagingJob: claim.jobName,
        artifact: result.artifactLocation,
        bytes: result.artifactSizeBytes,
        sha256: result.artifactSha256,
      },
      message: `packaging job ${claim.jobName} completed: ${result.artifactLocation} (${result.artifactSizeBytes} bytes, SHA-256 ${result.artifactSha256})`,
    });
    return true;
  }

  /**
   * Fails the claim's job. A runner that lost its claim (stalled past its lease while another replica resumed
   * and finished the job) must not turn that replica's COMPLETED into FAILED: false, nothing written.
   */
  async fail(claim: PackagingClaim, message: string): Promise<boolean> {
    const result = await this.db
      .updateTable('packaging_jobs')
      .set({ status: 'FAILED', status_message: message, updated_at: this.now() })
      .where('name', '=', claim.jobName)
      .where('status', '=', 'INPROGRESS')
      .where('claim_token', '=', claim.token)
      .executeTakeFirst();
    if (Number(result.numUpdatedRows) !== 1) return false;
    // The reason as the job records it (GET shows it too), cut short for the log line.
    this.events?.warn(PACKAGING_ACTOR, {
      event: 'packaging_job_failed',
      outcome: 'failed',
      object: { packagingJob: claim.jobName },
      message: `packaging job ${claim.jobName} failed: ${message.slice(0, 500)}`,
    });
    return true;
  }
}
