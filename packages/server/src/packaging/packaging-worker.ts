import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  createModelPackage,
  extractPackageArchive,
  openModelPackage,
  packModelPackage,
  signPackage,
  SIGNATURE_FILE,
} from '@edgefleet/core';
import type { Logger } from 'pino';
import {
  DEFAULT_LEASE_MS,
  leaseRenewalIntervalMs,
  RepeatedFailureLog,
  renewLease,
} from '../background/index.js';
import type { BlobStore } from '../blobs/index.js';
import type { ModelStore } from '../models/index.js';
import { diskFaultOf } from '../storage/index.js';
import {
  type PackagingClaim,
  type PackagingJobRecord,
  type PackagingJobStore,
  type SeenClaim,
} from './packaging-jobs.js';
import type { PackageSigningIdentity } from './signing-keys.js';

export interface PackagingWorkerOptions {
  jobs: PackagingJobStore;
  models: ModelStore;
  blobs: BlobStore;
  signing: PackageSigningIdentity;
  workDir: string;
  pollIntervalMs: number;
  logger: Logger;
  /**
   * Runs once a job's package is built and stored, before the job is marked COMPLETED (a failure fails the
   * job): the SageMaker facade copies packages of its jobs to their S3 output location here. It writes to one
   * place per job whichever runner calls it, so a runner that finds it lost its claim after calling it calls
   * it again with the job's recorded package once the job completed (see `run`). `signal` aborts when the
   * worker stops: the job is then handed back, and whoever resumes it publishes again.
   */
  afterPackaged?: (
    job: PackagingJobRecord,
    archiveFile: string,
    sizeBytes: number,
    signal: AbortSignal,
  ) => Promise<void>;
  /** An INPROGRESS job untouched this long lost its runner (a crash) and is claimed again. */
  leaseMs?: number;
  /** The clock (ms) of the log of repeated poll failures; injected by tests. */
  now?: () => number;
  /**
   * The waits before each new attempt of a job that failed on a full disk (ENOSPC, EDQUOT, SQLITE_FULL, 53100);
   * their count bounds the attempts (default DISK_FULL_RETRY_DELAYS_MS; [] fails the job at once).
   */
  diskFullRetryDelaysMs?: readonly number[];
  /**
   * How often the temporary folders of jobs this server no longer runs are removed (removeLeftFolders), besides
   * at start (default TEMP_FOLDER_SWEEP_INTERVAL_MS).
   */
  folderSweepIntervalMs?: number;
}

/** Every 10 minutes: a readdir of the work dir and, when it holds job folders, one query. */
const TEMP_FOLDER_SWEEP_INTERVAL_MS = 600_000;

/** `job-<name>-XXXXXX` (mkdtemp's six characters): the job's name, or undefined for another entry. */
function jobOfFolder(entry: string): string | undefined {
  return /^job-.+-[A-Za-z0-9]{6}$/.test(entry) ? entry.slice('job-'.length, -7) : undefined;
}

/**
 * The waits before each new attempt of a job whose disk was full: 1, 2, 4, 8 and 16 minutes (about half an hour
 * in all, for an operator to free space), the job INPROGRESS meanwhile with a status message that says it waits
 * for space and when it is due. It waits unclaimed: the worker goes on with other jobs, and any replica (one
 * whose disk has room) takes it once due.
 */
export const DISK_FULL_RETRY_DELAYS_MS: readonly number[] = [60_000, 120_000, 240_000, 480_000, 960_000];

/**
 * The object key of a job's package: Edge Manager's `<name>-<version>.tar.gz`, under the job's name and the
 * claim that built it, so a runner that lost its claim never overwrites the package the job records.
 */
export function artifactKeyOf(
  job: Pick<PackagingJobRecord, 'name' | 'modelName' | 'modelVersion'>,
  claim: Pick<PackagingClaim, 'token'>,
): string {
  // The token's random part only: the server identity before it (packaging-jobs.ts) is no business of a key.
  const unique = claim.token.slice(claim.token.lastIndexOf('.') + 1);
  return `packages/${job.name}/${unique}/${job.modelName}-${job.modelVersion.replace(/ /g, '_')}.tar.gz`;
}

/** A runner found its claim taken by a replica that resumed the job: it stops, writing nothing more. */
class ClaimLostError extends Error {}

/** The server is stopping: the build stops at its next step and the job is handed back (see `run`). */
class WorkerStoppedError extends Error {}

/** How a build checks its claim: between local steps (no round trip) and before each write others see. */
interface ClaimCheck {
  /**
   * Aborted when the worker stops: passed to the steps that take long (the source copy, building or extracting
   * the package, signing, packing, hashing, the store's put, the output copy).
   */
  signal: AbortSignal;
  /** Throws once a lease renewal found the claim gone, or the worker is stopping. */
  stopIfLost(step: string): void;
  /** Throws unless the database still says the claim is the job's. */
  assertHeld(step: string): Promise<void>;
}

/**
 * Runs packaging jobs one at a time: builds the package from the uploaded model (or re-signs an uploaded
 * package), signs it with the server's code-signing certificate, packs `<name>-<version>.tar.gz` and puts it
 * in the blob store. Polls the database, so jobs created on any replica get run by some replica.
 */
export class PackagingWorker {
  private timer: NodeJS.Timeout | undefined;
  private folderTimer: NodeJS.Timeout | undefined;
  /** The job this worker is building (its folder is never swept). */
  private inHand: string | undefined;
  private sweepingFolders: Promise<void> | undefined;
  private running: Promise<void> | undefined;
  private stopped = false;
  private again = false;
  /** Whether this server's own interrupted jobs (from before a restart) were looked for; done once, first. */
  private lookedForOwn = false;
  /** Releasing them, once a round of lease renewals has passed (releaseOwnLater). */
  private releasingOwn: Promise<void> | undefined;
  private readonly stopping = new AbortController();
  /** Polls that fail (a database outage) are logged once, then at most once a minute. */
  private readonly pollFailures: RepeatedFailureLog;

  constructor(private readonly options: PackagingWorkerOptions) {
    this.pollFailures = new RepeatedFailureLog({
      logger: options.logger,
      message: 'packaging worker: could not look for jobs; will retry',
      ...(options.now && { now: options.now }),
    });
  }

  start(): void {
    this.timer = setInterval(() => this.kick(), this.options.pollIntervalMs);
    this.timer.unref();
    this.folderTimer = setInterval(
      () => this.sweepFolders(),
      this.options.folderSweepIntervalMs ?? TEMP_FOLDER_SWEEP_INTERVAL_MS,
    );
    this.folderTimer.unref();
    this.sweepFolders();
    this.kick();
  }

  /** Look for work now (called when this replica creates a job). */
  kick(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = this.drain().finally(() => {
      this.running = undefined;
      if (this.again) {
        this.again = false;
        this.kick();
      }
    });
  }

  /**
   * Stops looking for jobs and stops the job in hand at its next step (a copy or the packing, aborted where it
   * is): its claim is handed back, so any replica resumes it at once, and its temporary folder removed.
   */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    if (this.folderTimer) clearInterval(this.folderTimer);
    this.stopping.abort();
    await this.running;
    await this.releasingOwn;
    await this.sweepingFolders;
  }

  /** Runs jobs until none is waiting; resolves when idle (tests await it). */
  async drain(): Promise<void> {
    try {
      const leaseMs = this.options.leaseMs ?? DEFAULT_LEASE_MS;
      if (!this.lookedForOwn) {
        // Before this worker claims anything, so none of the claims it reads is one of this process's.
        const { stale, recent } = await this.options.jobs.ownClaims();
        this.lookedForOwn = true;
        await this.releaseAndResume(stale);
        if (recent.length > 0) this.releasingOwn = this.releaseOwnLater(recent, leaseMs);
      }
      // A job claimed as the worker stops is run too: its first step finds the stop and hands it back.
      for (
        let claimed = await this.options.jobs.claimNext(leaseMs);
        claimed;
        claimed = this.stopped ? undefined : await this.options.jobs.claimNext(leaseMs)
      ) {
        if (claimed.resumed) {
          this.options.logger.info(
            { packagingJob: claimed.job.name },
            'resuming an interrupted packaging job',
          );
        }
        await this.run(claimed.job, claimed.claim, claimed.attempt);
      }
      this.pollFailures.succeeded();
    } catch (error) {
      this.pollFailures.failed(error);
    }
  }

  /** Runs removeLeftFolders unless a sweep is under way; its failure is logged (the next sweep tries again). */
  private sweepFolders(): void {
    if (this.sweepingFolders || this.stopped) return;
    this.sweepingFolders = this.removeLeftFolders()
      .then(() => undefined)
      .catch((error: unknown) =>
        this.options.logger.warn(
          { err: error },
          'packaging worker: could not remove the temporary folders of jobs this server no longer runs; will retry',
        ),
      )
      .finally(() => (this.sweepingFolders = undefined));
  }

  /**
   * Removes the temporary folders (`job-<name>-…`, about 2.3 times the model each) of jobs this server no longer
   * runs: a runner killed here whose job another replica resumed, or that finished or was deleted since, leaves
   * one that nothing else would remove until it is an hour old at a start. A folder of a job this server holds
   * (its build in hand, or its own interrupted job not yet released) stays. Returns the folders removed.
   */
  async removeLeftFolders(): Promise<string[]> {
    let entries: string[];
    try {
      entries = await readdir(this.options.workDir);
    } catch {
      return []; // no work dir: nothing was left
    }
    const folders = entries.flatMap((entry) => {
      const job = jobOfFolder(entry);
      return job === undefined || job === this.inHand ? [] : [{ entry, job }];
    });
    if (folders.length === 0) return [];
    const held = await this.options.jobs.heldHere([...new Set(folders.map((folder) => folder.job))]);
    const removed: string[] = [];
    for (const { entry, job } of folders) {
      // Claimed by this worker since the listing: its folder is new, or this one is its own to remove.
      if (held.has(job) || job === this.inHand) continue;
      await rm(path.join(this.options.workDir, entry), { recursive: true, force: true });
      removed.push(entry);
    }
    if (removed.length > 0)
      this.options.logger.info(
        { workDir: this.options.workDir, removed },
        'removed the temporary folders of packaging jobs this server no longer runs',
      );
    return removed;
  }

  /**
   * Releases the jobs of `seen` (this server identity's) that lost their runner (releaseUnrenewed), logs them,
   * and removes the temporary folders their runner left now (2.3 times the model each), not an hour later at a
   * start (temp-sweep.ts), so that a killed job does not leave the disk too full for the next ones. Their runner is gone (it renewed
   * nothing for two intervals), and the released job is built again in a new folder.
   */
  private async releaseAndResume(seen: SeenClaim[]): Promise<string[]> {
    if (seen.length === 0) return [];
    // Listed BEFORE the release: once released, a job can be claimed at once (this worker's loop, a replica
    // sharing the data dir) and built in a new folder of the same name pattern, which must not be removed. A
    // folder listed now is the lost runner's: the release only succeeds while the job is unclaimed since.
    let entries: string[];
    try {
      entries = await readdir(this.options.workDir);
    } catch {
      entries = []; // no work dir: nothing was left
    }
    const released = await this.options.jobs.releaseUnrenewed(seen);
    this.logReleased(released);
    for (const name of released) {
      // mkdtemp's six characters after `job-<name>-`: another job named `<name>-…` has more.
      const left = entries.filter(
        (entry) => entry.startsWith(`job-${name}-`) && entry.length === `job-${name}-`.length + 6,
      );
      for (const entry of left) {
        await rm(path.join(this.options.workDir, entry), { recursive: true, force: true }).catch(
          (error: unknown) =>
            this.options.logger.warn(
              { err: error, packagingJob: name },
              'could not remove the temporary folder of an interrupted packaging job; it is removed at a start once an hour old',
            ),
        );
      }
      if (left.length > 0)
        this.options.logger.info(
          { packagingJob: name, removed: left.length },
          'removed the temporary folder an interrupted packaging job left',
        );
    }
    return released;
  }

  private logReleased(released: string[]): void {
    if (released.length === 0) return;
    this.options.logger.info(
      { packagingJobs: released },
      'this server was interrupted while running packaging jobs; resuming them now, not after their lease',
    );
  }

  /**
   * Releases this server identity's jobs that were renewed shortly before this worker started, once two renewal
   * intervals passed without a renewal (a live runner renews every interval; two leave room for a slow round
   * trip): those were interrupted with this server's last run and are resumed now, while a live process sharing
   * the identity (a shared or copied data dir) keeps its jobs. Meanwhile the worker runs other jobs.
   */
  private async releaseOwnLater(seen: SeenClaim[], leaseMs: number): Promise<void> {
    try {
      await sleep(2 * leaseRenewalIntervalMs(leaseMs), undefined, { signal: this.stopping.signal });
      const released = await this.releaseAndResume(seen);
      if (released.length > 0) this.kick();
    } catch (error) {
      if (this.stopping.signal.aborted) return;
      this.options.logger.warn(
        { err: error },
        'packaging worker: could not release the jobs this server was running before it restarted; they are resumed once their lease expires',
      );
    }
  }

  /**
   * Builds, publishes and completes one claimed job. The claim is checked before each write that others see
   * (the artifact, the facade's S3 copy, the job's result): a runner that stalled past its lease while
   * another replica resumed the job writes none of them, and a package it stored before losing the claim
   * is removed. A lease renewal that finds the claim gone stops the build at its next step. Public so that a
   * test can play two replicas holding one job.
   */
  async run(job: PackagingJobRecord, claim: PackagingClaim, attempt = 1): Promise<void> {
    this.inHand = job.name;
    try {
      await this.runInHand(job, claim, attempt);
    } finally {
      this.inHand = undefined;
    }
  }

  private async runInHand(job: PackagingJobRecord, claim: PackagingClaim, attempt: number): Promise<void> {
    const { jobs } = this.options;
    const log = this.options.logger.child({ packagingJob: job.name });
    const delays = this.options.diskFullRetryDelaysMs ?? DISK_FULL_RETRY_DELAYS_MS;
    // What each lease renewal writes as the job's status message.
    const status =
      attempt > 1 ? `packaging (attempt ${attempt} of ${delays.length + 1}, after a full disk)` : 'packaging';
    const lease = renewLease(() => jobs.touch(claim, status), this.options.leaseMs ?? DEFAULT_LEASE_MS);
    const check: ClaimCheck = {
      signal: this.stopping.signal,
      stopIfLost: (step) => {
        if (this.stopping.signal.aborted) throw new WorkerStoppedError(`the server stopped before ${step}`);
        if (lease.lost) throw new ClaimLostError(`lost the claim on the job before ${step}`);
      },
      assertHeld: async (step) => {
        check.stopIfLost(step);
        if (!(await jobs.holds(claim))) throw new ClaimLostError(`lost the claim on the job before ${step}`);
      },
    };
    try {
      const error = await this.attempt(job, claim, check);
      if (error === undefined) return;
      if (this.stopping.signal.aborted && !(error instanceof ClaimLostError)) {
        await this.handBack(job, claim, attempt, lease, log);
        return;
      }
      const delay = delays[attempt - 1];
      if (
        delay !== undefined &&
        !this.stopped &&
        !(error instanceof ClaimLostError) &&
        diskFaultOf(error) === 'full'
      ) {
        // Waits unclaimed, so that any replica with room may take it once due (this one too: its poll).
        const cause = error instanceof Error ? error.message : String(error);
        const message = (retryAt: number) =>
          `waiting for disk space: the server's disk is full (${cause}); packaging again at ` +
          `${new Date(retryAt).toISOString()}, by any server (attempt ${attempt + 1} of ${delays.length + 1})`;
        lease.stop();
        const retryAt = await jobs
          .waitForSpace(claim, { attempt, delayMs: delay, message })
          .catch(() => undefined);
        if (retryAt !== undefined) {
          log.warn(
            { err: error, attempt, retryInMs: delay },
            `packaging job ${job.name}: ${message(retryAt)}`,
          );
          return;
        }
      }
      await this.recordFailure(job, claim, error, attempt, log);
    } finally {
      lease.stop();
    }
  }

  /**
   * Builds, publishes and completes the job once, in a temporary folder of its own (removed after, failed or
   * not); the error that stopped it, or undefined when the job completed.
   */
  private async attempt(job: PackagingJobRecord, claim: PackagingClaim, check: ClaimCheck): Promise<unknown> {
    const { jobs, blobs } = this.options;
    await mkdir(this.options.workDir, { recursive: true, mode: 0o700 });
    let dir: string | undefined;
    let stored: string | undefined;
    try {
      dir = await mkdtemp(path.join(this.options.workDir, `job-${job.name}-`));
      const artifact = await this.build(job, claim, dir, check, (key) => (stored = key));
      // Its line is the store's packaging_job_completed fleet event.
      if (!(await jobs.complete(claim, artifact))) throw new ClaimLostError('lost the claim on the job');
      stored = undefined;
      await this.removeOtherArtifacts(job, artifact.artifactKey);
      return undefined;
    } catch (error) {
      // A package stored under this claim is never the job's: remove it.
      if (stored !== undefined) await blobs.delete(stored).catch(() => undefined);
      return error;
    } finally {
      if (dir !== undefined) await rm(dir, { recursive: true, force: true });
    }
  }

  /**
   * Gives the claim of a job stopped by the server's stop back (its temporary folder is already removed): due at
   * once, so any replica, or this server restarted, resumes it without waiting out the lease. Through the same
   * hand-back as a wait for disk space (waitForSpace), with no wait and no attempt counted.
   */
  private async handBack(
    job: PackagingJobRecord,
    claim: PackagingClaim,
    attempt: number,
    lease: { stop(): void },
    log: Logger,
  ): Promise<void> {
    lease.stop();
    const handedBack = await this.options.jobs
      .waitForSpace(claim, {
        attempt: attempt - 1,
        delayMs: 0,
        message: () => 'handed back: the server packaging it stopped; any server resumes it',
      })
      .catch((error: unknown) => {
        log.warn(
          { err: error },
          'could not hand the packaging job back; it is resumed once its lease expires',
        );
        return undefined;
      });
    if (handedBack !== undefined)
      log.info(`packaging job ${job.name} stopped with the server and handed back; any server resumes it`);
  }

  /** Records the job FAILED with `error` (or, the claim lost, leaves it to the replica that resumed it). */
  private async recordFailure(
    job: PackagingJobRecord,
    claim: PackagingClaim,
    error: unknown,
    attempts: number,
    log: Logger,
  ): Promise<void> {
    const cause = error instanceof Error ? error.message : String(error);
    // A full disk is the server's fault, not the job's: said so, with what to do (a FAILED job stays so; a
    // new one is created once there is room).
    const message =
      diskFaultOf(error) === 'full'
        ? `the server's disk is full (${cause})${attempts > 1 ? `, at each of ${attempts} attempts` : ''}; free space on the file system of the server's data folder (its tmp/ holds each job's work, about 2.3 times the model) or blob store, then create the packaging job again under a new name`
        : cause;
    if (error instanceof ClaimLostError) {
      log.warn(`${message}: another replica resumed it; leaving the job to that replica`);
      return;
    }
    // Recorded, the failure's line is the store's packaging_job_failed fleet event (its reason); the stack
    // only at debug. Not recorded (the claim lost meanwhile, the database down), this is the only line.
    const recorded = await this.options.jobs
      .fail(claim, message.slice(0, 4000))
      .catch((failError: unknown) => {
        log.warn({ err: failError }, 'could not record the packaging job failure');
        return false;
      });
    if (recorded) log.debug({ err: error, packagingJob: job.name }, 'packaging job failed');
    else
      log.warn(
        { err: error },
        'packaging job failed; not recorded (another replica holds the job, or the database failed)',
      );
  }

  /**
   * Packages runners left under the job's prefix before they were killed (never the job's recorded one). A
   * runner killed after storing its package but after this listing leaves its package there (a live runner
   * that lost its claim removes its own).
   */
  private async removeOtherArtifacts(job: PackagingJobRecord, keep: string): Promise<void> {
    try {
      for (const blob of await this.options.blobs.list(`packages/${job.name}/`)) {
        if (blob.key !== keep) await this.options.blobs.delete(blob.key);
      }
    } catch (error) {
      this.options.logger.warn({ err: error, packagingJob: job.name }, 'could not remove stale packages');
    }
  }

  /**
   * After publishing under a lost claim: waits (at most a lease, less if the worker stops) for the job to
   * settle and, if it COMPLETED, publishes its recorded package again, over what this runner put.
   */
  private async republishRecorded(job: PackagingJobRecord, dir: string): Promise<void> {
    const { jobs, blobs, logger } = this.options;
    const deadline = Date.now() + (this.options.leaseMs ?? DEFAULT_LEASE_MS);
    try {
      let settled = await jobs.get(job.name);
      while (settled.status === 'STARTING' || settled.status === 'INPROGRESS') {
        if (this.stopped || Date.now() >= deadline) {
          logger.warn(
            { packagingJob: job.name },
            'published a package under a lost claim and the job did not settle in time: its output ' +
              'location holds this runner’s package until the job’s runner publishes its own',
          );
          return;
        }
        await sleep(Math.min(1_000, this.options.pollIntervalMs));
        settled = await jobs.get(job.name);
      }
      if (settled.status !== 'COMPLETED' || settled.artifactKey === null) return;
      const recorded = path.join(dir, 'recorded.tar.gz');
      await pipeline(await blobs.get(settled.artifactKey), createWriteStream(recorded, { mode: 0o600 }));
      await this.options.afterPackaged?.(
        settled,
        recorded,
        (await stat(recorded)).size,
        this.stopping.signal,
      );
    } catch (error) {
      logger.warn(
        { err: error, packagingJob: job.name },
        'could not publish the completed job’s recorded package again over this runner’s',
      );
    }
  }

  private async build(
    job: PackagingJobRecord,
    claim: PackagingClaim,
    dir: string,
    check: ClaimCheck,
    onStored: (key: string) => void,
  ) {
    check.stopIfLost('copying its model');
    const version = await this.options.models.getVersion(job.modelName, job.modelVersion);
    const source = path.join(dir, version.sourceKind === 'onnx' ? 'model.onnx' : 'upload.tar.gz');
    await pipeline(
      await this.options.models.openSource(version),
      createWriteStream(source, { mode: 0o600 }),
      {
        signal: check.signal,
      },
    );
    check.stopIfLost('building its package');

    const packageDir = path.join(dir, `${job.modelName}-${job.modelVersion.replace(/ /g, '_')}`);
    if (version.sourceKind === 'onnx') {
      await createModelPackage(
        {
          modelPath: source,
          name: job.modelName,
          version: job.modelVersion,
          outDir: packageDir,
        },
        { signal: check.signal },
      );
    } else {
      await extractPackageArchive(source, packageDir, {}, { signal: check.signal });
      // Whoever signed the upload, devices trust this server's signature: replace it.
      await rm(path.join(packageDir, SIGNATURE_FILE), { force: true });
      await openModelPackage(packageDir, { trust: null });
    }
    check.stopIfLost('signing its package');
    await signPackage(packageDir, this.options.signing.signer, {
      modelName: job.modelName,
      signal: check.signal,
    });
    check.stopIfLost('packing its package');
    const archive = path.join(dir, 'package.tar.gz');
    await packModelPackage(packageDir, archive, { signal: check.signal });
    check.stopIfLost('hashing its package');
    const { size } = await stat(archive);
    const sha256 = createHash('sha256');
    for await (const chunk of createReadStream(archive, { signal: check.signal }))
      sha256.update(chunk as Buffer);

    const artifactKey = artifactKeyOf(job, claim);
    await check.assertHeld('storing its package');
    onStored(artifactKey);
    await this.options.blobs.put(artifactKey, createReadStream(archive), {
      contentLength: size,
      contentType: 'application/gzip',
      signal: check.signal,
    });
    if (this.options.afterPackaged) {
      await check.assertHeld('publishing its package');
      await this.options.afterPackaged(job, archive, size, check.signal);
      // Held after the put landed: whoever takes the job later puts after it, so the last put is the job's.
      // Not held: the runner that took the job may have put before this runner did, so once that job is
      // COMPLETED this runner puts its recorded package back (only runners that lost can put after that).
      if (!(await this.options.jobs.holds(claim))) {
        await this.republishRecorded(job, dir);
        throw new ClaimLostError('lost the claim on the job while publishing its package');
      }
    }
    return {
      artifactKey,
      artifactLocation: this.options.blobs.locationOf(artifactKey),
      artifactSizeBytes: size,
      artifactSha256: sha256.digest('hex'),
      signature: await readFile(path.join(packageDir, SIGNATURE_FILE), 'utf8'),
      message: 'packaged and signed',
    };
  }
}
