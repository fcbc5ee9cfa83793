import { PassThrough, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import type { Kysely } from 'kysely';
import type { Logger } from 'pino';
import { extract } from 'tar-stream';
import { z } from 'zod';
import { DEFAULT_LEASE_MS, leaseExpiredBefore, newClaimToken, renewLease } from '../background/index.js';
import { DomainError, conflict, invalid, notFound } from '../errors/index.js';
import { tagListSchema, type Tag } from '../fields/index.js';
import type { ModelStore } from '../models/index.js';
import {
  containsIgnoringCase,
  isUniqueViolation,
  type CompilationJobsTable,
  type DatabaseSchema,
} from '../storage/index.js';

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
  /** CreateCompilationJob's StoppingCondition as sent (EdgeFleet imports without a time limit). */
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

export interface CompilationJobsOptions {
  models: ModelStore;
  /** Opens an `s3://bucket/key` object on the S3-compatible store the server is configured for. */
  openS3Object: (uri: string) => Promise<Readable>;
  logger: Logger;
  /** An INPROGRESS import whose server stopped renewing it this long is failed (see failExpired). */
  leaseMs?: number;
  now?: () => number;
}

function toRecord(row: CompilationJobsTable): CompilationJobRecord {
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
        : stoppingConditionSchema.parse(JSON.parse(row.stopping_condition)),
    dataInputConfig: row.data_input_config,
    modelName: row.model_name,
    modelVersion: row.model_version,
    modelSha256: row.model_sha256,
    modelSizeBytes: row.model_size_bytes === null ? null : Number(row.model_size_bytes),
    tags: tagListSchema.parse(JSON.parse(row.tags)),
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
 * crashed or was killed: call `failExpired` at start-up and periodically), never a live replica's.
 */
export class CompilationJobStore {
  private readonly now: () => number;
  private readonly leaseMs: number;
  private readonly running = new Map<string, Promise<void>>();

  constructor(
    private readonly db: Kysely<DatabaseSchema>,
    private readonly options: CompilationJobsOptions,
  ) {
    this.now = options.now ?? Date.now;
    this.leaseMs = options.leaseMs ?? DEFAULT_LEASE_MS;
  }

  async create(input: CreateCompilationJobInput): Promise<CompilationJobRecord> {
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
      claim_token: newClaimToken(),
      model_name: `compilation-${input.name}`,
      model_version: '1',
      model_sha256: null,
      model_size_bytes: null,
      tags: JSON.stringify(input.tags),
      created_at: at,
      updated_at: at,
    };
    try {
      await this.db.insertInto('compilation_jobs').values(row).execute();
    } catch (error) {
      if (isUniqueViolation(error)) throw conflict(`compilation job ${input.name} already exists`);
      throw error;
    }
    const run = this.runImport(toRecord(row), row.claim_token as string).finally(() =>
      this.running.delete(input.name),
    );
    this.running.set(input.name, run);
    return toRecord(row);
  }

  async get(name: string): Promise<CompilationJobRecord> {
    const row = await this.db
      .selectFrom('compilation_jobs')
      .selectAll()
      .where('name', '=', name)
      .executeTakeFirst();
    if (row === undefined) throw notFound(`compilation job ${name}`, { job: name });
    return toRecord(row);
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
    return (await query.execute()).map(toRecord);
  }

  /** Replaces the job's tags. */
  async setTags(name: string, tags: Tag[]): Promise<void> {
    const result = await this.db
      .updateTable('compilation_jobs')
      .set({ tags: JSON.stringify(tags), updated_at: this.now() })
      .where('name', '=', name)
      .executeTakeFirst();
    if (Number(result.numUpdatedRows) === 0) throw notFound(`compilation job ${name}`, { job: name });
  }

  /** Stops a job still importing (its result is discarded); a finished one cannot be stopped. */
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
  }

  /**
   * Fails the imports whose lease ran out: their server stopped renewing them (crashed, killed, restarted).
   * A live server's imports, on this replica or another, are renewed well within the lease and left alone.
   * Returns the names of the jobs failed.
   */
  async failExpired(): Promise<string[]> {
    const expired = await this.db
      .selectFrom('compilation_jobs')
      .select(['name', 'updated_at'])
      .where('status', '=', 'INPROGRESS')
      .where('updated_at', '<', leaseExpiredBefore(this.now(), this.leaseMs))
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
      if (Number(result.numUpdatedRows) === 1) failed.push(job.name);
    }
    return failed;
  }

  /** Waits for imports in flight (server shutdown, tests). */
  async settle(): Promise<void> {
    await Promise.allSettled([...this.running.values()]);
  }

  private async runImport(job: CompilationJobRecord, token: string): Promise<void> {
    const lease = renewLease(() => this.renew(job.name, token), this.leaseMs);
    try {
      const object = await this.options.openS3Object(job.inputS3Uri);
      const body = /\.tar\.gz$/i.test(job.inputS3Uri) ? await onnxFromTarGz(object) : object;
      const version = await this.options.models.upload({
        name: job.modelName,
        version: job.modelVersion,
        kind: 'onnx',
        body,
        description: `imported by compilation job ${job.name} from ${job.inputS3Uri}`,
      });
      const ended = await this.finish(job.name, token, {
        status: 'COMPLETED',
        model_sha256: version.sha256,
        model_size_bytes: version.sizeBytes,
      });
      // Stopped, or failed by a replica once this import's lease ran out: the job has no model.
      if (ended) await this.options.models.deleteVersion(job.modelName, job.modelVersion);
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      this.options.logger.warn({ err: error, job: job.name }, 'compilation job import failed');
      await this.finish(job.name, token, {
        status: 'FAILED',
        failure_reason: message.slice(0, 1024),
      }).catch(() => undefined);
    } finally {
      lease.stop();
    }
  }

  /** Renews the import's lease; false once the job is no longer this import's (stopped or failed). */
  private async renew(name: string, token: string): Promise<boolean> {
    const result = await this.db
      .updateTable('compilation_jobs')
      .set({ updated_at: this.now() })
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
