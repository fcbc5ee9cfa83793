import { PassThrough, type Readable } from 'node:stream';
import { LOCAL_ACTOR, type Actor, type FleetEventLog } from '../audit/index.js';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import type { Kysely } from 'kysely';
import type { Logger } from 'pino';
import { extract } from 'tar-stream';
import { z } from 'zod';
import {
  armDeadline,
  DEFAULT_LEASE_MS,
  leaseExpiredBefore,
  newClaimToken,
  renewLease,
} from '../background/index.js';
import { DomainError, conflict, invalid, notFound } from '../errors/index.js';
import { tagListSchema, type Tag } from '../fields/index.js';
import type { ModelStore } from '../models/index.js';
import {
  containsIgnoringCase,
  isUniqueViolation,
  type CompilationJobsTable,
  leaseClock,
  type DatabaseClock,
  type DatabaseSchema,
} from '../storage/index.js';

/** Who a compilation import's model version is uploaded and removed by, in the fleet event log. */
const COMPILATION_ACTOR: Actor = { kind: 'server', worker: 'compilation import' };

/** Edge Manager packaged the output of a SageMaker Neo compilation job; EdgeFleet imports ONNX as is. */
export type CompilationJobStatus = 'INPROGRESS' | 'COMPLETED' | 'FAILED' | 'STOPPED';

export interface CompilationJobRecord {
  name: string;
  status: CompilationJobStatus;
  failureReason: string | null;
  framework: string;
  frameworkVersion: string | null;
  inputS3Uri: string;
  roleArn: string;
  outputS3Location: string;
  targetDevice: string | null;
  /** CreateCompilationJob's StoppingCondition as sent; MaxRuntimeInSeconds is the import's deadline. */
  stoppingCondition: StoppingCondition;
  /** CreateCompilationJob's InputConfig.DataInputConfig as sent (unused: ONNX carries its input shapes). */
  dataInputConfig: string | null;
  /** The model registry entry the import created (`compilation-<job>`, version 1). */
  modelName: string;
  modelVersion: string;
  modelSha256: string | null;
  modelSizeBytes: number | null;
  tags: Tag[];
  createdAt: number;
  updatedAt: number;
}

export const stoppingConditionSchema = z.object({
  MaxRuntimeInSeconds: z.int().min(1).max(31_536_000).optional(),
  MaxWaitTimeInSeconds: z.int().min(1).max(31_536_000).optional(),
  MaxPendingTimeInSeconds: z.int().min(7200).max(2_419_200).optional(),
});
export type StoppingCondition = z.infer<typeof stoppingConditionSchema>;

export interface CreateCompilationJobInput {
  name: string;
  framework: string;
  frameworkVersion?: string | undefined;
  inputS3Uri: string;
  roleArn: string;
  outputS3Location: string;
  targetDevice?: string | undefined;
  stoppingCondition?: StoppingCondition | undefined;
  dataInputConfig?: string | undefined;
  tags: Tag[];
}

/** The FailureReason of a job whose importing server stopped renewing its lease. */
export const INTERRUPTED_IMPORT_REASON =
  'the server importing this job stopped (it crashed, was killed or restarted) before the import finished; ' +
  'create a new compilation job with another name (a job name stays taken, as in SageMaker)';

/** The FailureReason of an import its server ended as it shut down (imports are not resumed). */
export const SHUTDOWN_IMPORT_REASON =
  'the server importing this job shut down before the import finished; ' +
  'create a new compilation job with another name (a job name stays taken, as in SageMaker)';

/** The FailureReason of an import that ran past its StoppingCondition.MaxRuntimeInSeconds. */
export function deadlineReason(maxRuntimeSeconds: number): string {
  return `the import ran longer than StoppingCondition.MaxRuntimeInSeconds (${maxRuntimeSeconds} s) and was ended`;
}

export interface CompilationJobsOptions {
  /** Where an import stores its model; the clean-up of an interrupted import removes what it stored. */
  models: Pick<ModelStore, 'upload' | 'findVersion' | 'deleteVersion'>;
  /**
   * Opens an `s3://bucket/key` object on the S3-compatible store the server is configured for. Aborting `signal`
   * must end the read, waiting or mid-body (StopCompilationJob, a lost lease, the deadline, shutdown).
   */
  openS3Object: (uri: string, signal: AbortSignal) => Promise<Readable>;
  logger: Logger;
  /** Where a job's creation and tag changes are logged (fleet events); absent: nowhere (tests). */
  events?: FleetEventLog;
  /** An INPROGRESS import whose server stopped renewing it this long is failed (see failExpired). */
  leaseMs?: number;
  /**
   * This server's persisted identity (server/instance-id.ts): it prefixes the claim tokens this store writes,
   * so that the same server, restarted, fails its own interrupted imports at once (failOwnInterrupted).
   */
  instanceId?: string;
  now?: () => number;
  /**
   * The database's clock (databaseClock): leases are written and judged by it, so that a replica whose clock is
   * off never fails another's live import; absent: `now` (one process, tests).
   */
  databaseNow?: DatabaseClock;
}

/**
 * A stored JSON value read leniently: a value a later, stricter schema rejects (or that is not JSON) is shown
 * as `fallback` and reported, so that one bad row cannot fail every Describe and List.
 */
function storedValue<T>(schema: z.ZodType<T>, text: string, fallback: T, onBad: (issue: string) => void): T {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    onBad(error instanceof Error ? error.message : String(error));
    return fallback;
  }
  const parsed = schema.safeParse(value);
  if (parsed.success) return parsed.data;
  onBad(z.prettifyError(parsed.error));
  return fallback;
}

function toRecord(
  row: CompilationJobsTable,
  onBad: (column: string, issue: string) => void = () => undefined,
): CompilationJobRecord {
  return {
    name: row.name,
    status: row.status as CompilationJobStatus,
    failureReason: row.failure_reason,
    framework: row.framework,
    frameworkVersion: row.framework_version,
    inputS3Uri: row.input_s3_uri,
    roleArn: row.role_arn,
    outputS3Location: row.output_s3_location,
    targetDevice: row.target_device,
    stoppingCondition:
      row.stopping_condition === null
        ? {}
        : storedValue(stoppingConditionSchema, row.stopping_condition, {}, (issue) =>
            onBad('stopping_condition', issue),
          ),
    dataInputConfig: row.data_input_config,
    modelName: row.model_name,
    modelVersion: row.model_version,
    modelSha256: row.model_sha256,
    modelSizeBytes: row.model_size_bytes === null ? null : Number(row.model_size_bytes),
    tags: storedValue(tagListSchema, row.tags, [], (issue) => onBad('tags', issue)),
    createdAt: Number(row.created_at),
    updatedAt: Number(row.updated_at),
  };
}

/** The one `.onnx` file of a `.tar.gz` (Neo's model archive form), as a stream. */
async function onnxFromTarGz(archive: Readable): Promise<Readable> {
  const entries = extract();
  const found = new PassThrough();
  let seen = 0;
  entries.on('entry', (header, stream, next) => {
    if (header.type === 'file' && header.name.toLowerCase().endsWith('.onnx') && seen++ === 0) {
      stream.pipe(found);
      stream.on('end', next);
    } else {
      stream.on('end', next);
      stream.resume();
    }
  });
  const done = pipeline(archive, createGunzip(), entries).then(() => {
    if (seen === 0) throw invalid('the .tar.gz holds no .onnx file');
    if (seen > 1) throw invalid(`the .tar.gz holds ${seen} .onnx files; expected exactly one`);
  });
  done.catch((error: unknown) => found.destroy(error as Error));
  // Consumers read `found`; the archive check's outcome reaches them as a stream error.
  return found;
}

/**
 * SageMaker compilation jobs, mapped onto the model registry: CreateCompilationJob with Framework ONNX
 * imports `InputConfig.S3Uri` (a `.onnx`, or a `.tar.gz` holding one), validates it as every upload is
 * validated, and completes without compiling. An import runs in the process that created the job, which
 * holds the job's claim and renews its lease; any replica fails an import whose lease ran out (its server
 * crashed or was killed: call `failExpired` at start-up and periodically), never a live replica's. An import
 * is aborted, wherever its S3 read is, when the job is stopped, its lease is lost, it runs past
 * MaxRuntimeInSeconds, or the server shuts down (`close`).
 */
export class CompilationJobStore {
  private readonly now: () => number;
  private readonly leaseNow: DatabaseClock;
  private readonly leaseMs: number;
  private readonly running = new Map<string, { done: Promise<void>; abort: AbortController }>();

  constructor(
    private readonly db: Kysely<DatabaseSchema>,
    private readonly options: CompilationJobsOptions,
  ) {
    this.now = options.now ?? Date.now;
    this.leaseNow = leaseClock(options.databaseNow, () => this.now());
    this.leaseMs = options.leaseMs ?? DEFAULT_LEASE_MS;
  }

  async create(input: CreateCompilationJobInput, by: Actor = LOCAL_ACTOR): Promise<CompilationJobRecord> {
    if (input.framework !== 'ONNX') {
      throw invalid(
        `Framework ${input.framework} is not supported: EdgeFleet imports ONNX models only (Framework: ONNX)`,
        { member: 'InputConfig.Framework' },
      );
    }
    if (!/\.(onnx|tar\.gz)$/i.test(input.inputS3Uri)) {
      throw invalid(
        `InputConfig.S3Uri must name an .onnx file or a .tar.gz holding one; got ${input.inputS3Uri}`,
      );
    }
    const at = this.now();
    const row: CompilationJobsTable = {
      name: input.name,
      status: 'INPROGRESS',
      failure_reason: null,
      framework: input.framework,
      framework_version: input.frameworkVersion ?? null,
      input_s3_uri: input.inputS3Uri,
      role_arn: input.roleArn,
      output_s3_location: input.outputS3Location,
      target_device: input.targetDevice ?? null,
      stopping_condition:
        input.stoppingCondition === undefined ? null : JSON.stringify(input.stoppingCondition),
      data_input_config: input.dataInputConfig ?? null,
      claim_token: newClaimToken(this.options.instanceId),
      model_name: `compilation-${input.name}`,
      model_version: '1',
      model_sha256: null,
      model_size_bytes: null,
      tags: JSON.stringify(input.tags),
      created_at: at,
      // The lease's start: another replica judges it by the database's clock.
      updated_at: await this.leaseNow(),
    };
    try {
      await this.db.insertInto('compilation_jobs').values(row).execute();
    } catch (error) {
      if (isUniqueViolation(error)) throw conflict(`compilation job ${input.name} already exists`);
      throw error;
    }
    // Before the import starts: its model_version_uploaded (or failure) follows this line.
    this.options.events?.info(by, {
      event: 'compilation_job_created',
      outcome: 'created',
      object: { compilationJob: input.name, input: input.inputS3Uri, model: row.model_name },
      message: `compilation job ${input.name} created: importing ${input.inputS3Uri} as model ${row.model_name}`,
    });
    const abort = new AbortController();
    const done = this.runImport(this.record(row), row.claim_token as string, abort).finally(() =>
      this.running.delete(input.name),
    );
    this.running.set(input.name, { done, abort });
    return this.record(row);
  }

  async get(name: string): Promise<CompilationJobRecord> {
    const row = await this.db
      .selectFrom('compilation_jobs')
      .selectAll()
      .where('name', '=', name)
      .executeTakeFirst();
    if (row === undefined) throw notFound(`compilation job ${name}`, { job: name });
    return this.record(row);
  }

  async list(options: {
    limit: number;
    after?: string;
    nameContains?: string;
    status?: CompilationJobStatus;
  }): Promise<CompilationJobRecord[]> {
    let query = this.db.selectFrom('compilation_jobs').selectAll().orderBy('name').limit(options.limit);
    if (options.after !== undefined) query = query.where('name', '>', options.after);
    if (options.status !== undefined) query = query.where('status', '=', options.status);
    // In SQL, before the limit: a page filtered after it could come back short or empty and end the listing.
    if (options.nameContains !== undefined)
      query = query.where(containsIgnoringCase('name', options.nameContains));
    return (await query.execute()).map((row) => this.record(row));
  }

  /** Replaces the job's tags; logged with their keys only (values are not logged). */
  async setTags(name: string, tags: Tag[], by: Actor = LOCAL_ACTOR): Promise<void> {
    const result = await this.db
      .updateTable('compilation_jobs')
      // Not updated_at: it is also the import's lease, which only the importing server may renew.
      .set({ tags: JSON.stringify(tags) })
      .where('name', '=', name)
      .executeTakeFirst();
    if (Number(result.numUpdatedRows) === 0) throw notFound(`compilation job ${name}`, { job: name });
    const tagKeys = tags.map((tag) => tag.key).join(',');
    this.options.events?.info(by, {
      event: 'compilation_job_updated',
      outcome: 'updated',
      object: { compilationJob: name, changed: 'tags', tagKeys },
      message: `compilation job ${name} updated (tags); its tags now: ${tagKeys === '' ? 'none' : tagKeys.split(',').join(', ')}`,
    });
  }

  /**
   * Stops a job still importing (its result is discarded); a finished one cannot be stopped. An import on this
   * server is aborted now; one on another replica when its next lease renewal finds the job stopped.
   */
  async stop(name: string): Promise<void> {
    const result = await this.db
      .updateTable('compilation_jobs')
      .set({ status: 'STOPPED', updated_at: this.now() })
      .where('name', '=', name)
      .where('status', '=', 'INPROGRESS')
      .executeTakeFirst();
    if (Number(result.numUpdatedRows) === 0) {
      const job = await this.get(name);
      throw new DomainError(
        'ResourceInUse',
        `compilation job ${name} is ${job.status}; only INPROGRESS jobs stop`,
      );
    }
    this.running.get(name)?.abort.abort(new Error(`compilation job ${name} was stopped`));
  }

  /**
   * Called once at start-up, before this store creates anything: the INPROGRESS imports whose claim this same
   * server (its instance identity) wrote were interrupted with it — imports are not resumed — so they are failed
   * now rather than after their lease. Returns the names of the jobs failed.
   */
  async failOwnInterrupted(): Promise<string[]> {
    const { instanceId } = this.options;
    if (instanceId === undefined) return [];
    const own = await this.db
      .selectFrom('compilation_jobs')
      .select(['name', 'model_name', 'model_version', 'created_at'])
      .where('status', '=', 'INPROGRESS')
      .where('claim_token', 'like', `${instanceId}.%`)
      .execute();
    const failed: string[] = [];
    for (const job of own) {
      if (this.running.has(job.name)) continue;
      const result = await this.db
        .updateTable('compilation_jobs')
        .set({ status: 'FAILED', failure_reason: INTERRUPTED_IMPORT_REASON, updated_at: this.now() })
        .where('name', '=', job.name)
        .where('status', '=', 'INPROGRESS')
        .where('claim_token', 'like', `${instanceId}.%`)
        .executeTakeFirst();
      if (Number(result.numUpdatedRows) === 1) {
        failed.push(job.name);
        await this.removeInterruptedModel(job);
      }
    }
    return failed;
  }

  /**
   * Fails the imports whose lease ran out: their server stopped renewing them (crashed, killed, restarted).
   * A live server's imports, on this replica or another, are renewed well within the lease and left alone.
   * Returns the names of the jobs failed.
   */
  async failExpired(): Promise<string[]> {
    const expired = await this.db
      .selectFrom('compilation_jobs')
      .select(['name', 'updated_at', 'model_name', 'model_version', 'created_at'])
      .where('status', '=', 'INPROGRESS')
      .where('updated_at', '<', leaseExpiredBefore(await this.leaseNow(), this.leaseMs))
      .execute();
    const failed: string[] = [];
    for (const job of expired) {
      // Conditional on the time read: a renewal that came in meanwhile keeps the job.
      const result = await this.db
        .updateTable('compilation_jobs')
        .set({ status: 'FAILED', failure_reason: INTERRUPTED_IMPORT_REASON, updated_at: this.now() })
        .where('name', '=', job.name)
        .where('status', '=', 'INPROGRESS')
        .where('updated_at', '=', job.updated_at)
        .executeTakeFirst();
      if (Number(result.numUpdatedRows) === 1) {
        failed.push(job.name);
        await this.removeInterruptedModel(job);
      }
    }
    return failed;
  }

  /**
   * After failing an interrupted import: its server may have died after storing the model and before recording
   * the job COMPLETED, which would leave `compilation-<job>` version 1 with no job to show for it. A version
   * stored before the job was created is not the import's (the import's upload was refused as a duplicate) and
   * stays. An import still running somewhere (stalled past its lease) that stores the model later finds its job
   * failed and removes the model itself (runImport). A removal that fails is logged, not retried: the job is
   * already FAILED, and the operator can delete the version.
   */
  private async removeInterruptedModel(job: {
    name: string;
    model_name: string;
    model_version: string;
    created_at: number | bigint | string;
  }): Promise<void> {
    try {
      const version = await this.options.models.findVersion(job.model_name, job.model_version);
      if (version === undefined || version.createdAt < Number(job.created_at)) return;
      await this.removeModel(job.model_name, job.model_version);
      this.options.logger.warn(
        { job: job.name, model: job.model_name, version: job.model_version },
        'removed the model an interrupted compilation import stored before its server stopped',
      );
    } catch (error) {
      this.options.logger.error(
        { err: error, job: job.name, model: job.model_name, version: job.model_version },
        'could not remove the model an interrupted compilation import stored; delete that model version',
      );
    }
  }

  /** Deletes the import's model version; one already gone (another replica's clean-up) is not an error. */
  private async removeModel(name: string, version: string): Promise<void> {
    try {
      await this.options.models.deleteVersion(name, version, COMPILATION_ACTOR);
    } catch (error) {
      if (!(error instanceof DomainError && error.code === 'NotFound')) throw error;
    }
  }

  /** Waits for imports in flight (tests). */
  async settle(): Promise<void> {
    await Promise.allSettled([...this.running.values()].map((run) => run.done));
  }

  /** Server shutdown: aborts the imports in flight (each fails with SHUTDOWN_IMPORT_REASON) and waits for them. */
  async close(): Promise<void> {
    for (const run of this.running.values()) run.abort.abort(new Error(SHUTDOWN_IMPORT_REASON));
    await this.settle();
  }

  private record(row: CompilationJobsTable): CompilationJobRecord {
    return toRecord(row, (column, issue) =>
      this.options.logger.warn(
        { job: row.name, column, issue },
        'compilation job has a stored value this server does not accept; shown as empty',
      ),
    );
  }

  private async runImport(job: CompilationJobRecord, token: string, abort: AbortController): Promise<void> {
    const { signal } = abort;
    const lease = renewLease(
      () => this.renew(job.name, token),
      this.leaseMs,
      // Stopped, or failed by a replica: nothing this import writes would count any more.
      () => abort.abort(new Error(`compilation job ${job.name} is no longer this server's import`)),
    );
    const maxRuntime = job.stoppingCondition.MaxRuntimeInSeconds;
    const deadline =
      maxRuntime === undefined
        ? undefined
        : armDeadline(
            job.createdAt + maxRuntime * 1000,
            () => abort.abort(new Error(deadlineReason(maxRuntime))),
            this.now,
          );
    try {
      const object = await this.options.openS3Object(job.inputS3Uri, signal);
      const body = /\.tar\.gz$/i.test(job.inputS3Uri) ? await onnxFromTarGz(object) : object;
      const version = await this.options.models.upload(
        {
          name: job.modelName,
          version: job.modelVersion,
          kind: 'onnx',
          body,
          description: `imported by compilation job ${job.name} from ${job.inputS3Uri}`,
        },
        COMPILATION_ACTOR,
      );
      const ended = await this.finish(job.name, token, {
        status: 'COMPLETED',
        model_sha256: version.sha256,
        model_size_bytes: version.sizeBytes,
      });
      // Stopped, or failed by a replica once this import's lease ran out: the job has no model.
      if (ended) await this.removeModel(job.modelName, job.modelVersion);
    } catch (caught) {
      // Aborted: why it was aborted, not how the read broke off.
      const error: unknown = signal.aborted ? signal.reason : caught;
      const message = error instanceof Error ? error.message : String(error);
      this.options.logger.warn({ err: error, job: job.name }, 'compilation job import failed');
      await this.finish(job.name, token, {
        status: 'FAILED',
        failure_reason: message.slice(0, 1024),
      }).catch(() => undefined);
    } finally {
      lease.stop();
      deadline?.clear();
    }
  }

  /** Renews the import's lease; false once the job is no longer this import's (stopped or failed). */
  private async renew(name: string, token: string): Promise<boolean> {
    const result = await this.db
      .updateTable('compilation_jobs')
      .set({ updated_at: await this.leaseNow() })
      .where('name', '=', name)
      .where('status', '=', 'INPROGRESS')
      .where('claim_token', '=', token)
      .executeTakeFirst();
    return Number(result.numUpdatedRows) === 1;
  }

  /** Records the outcome unless the job ended meanwhile (stopped, or its lease ran out); true if it did. */
  private async finish(
    name: string,
    token: string,
    changes: Partial<CompilationJobsTable>,
  ): Promise<boolean> {
    const result = await this.db
      .updateTable('compilation_jobs')
      .set({ ...changes, updated_at: this.now() })
      .where('name', '=', name)
      .where('status', '=', 'INPROGRESS')
      .where('claim_token', '=', token)
      .executeTakeFirst();
    return Number(result.numUpdatedRows) === 0;
  }
}
