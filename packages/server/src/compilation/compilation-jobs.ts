import { PassThrough, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import type { Kysely } from 'kysely';
import type { Logger } from 'pino';
import { extract } from 'tar-stream';
import { DomainError, conflict, invalid, notFound } from '../errors/index.js';
import { tagListSchema, type Tag } from '../fields/index.js';
import type { ModelStore } from '../models/index.js';
import { isUniqueViolation, type CompilationJobsTable, type DatabaseSchema } from '../storage/index.js';

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
  /** The model registry entry the import created (`compilation-<job>`, version 1). */
  modelName: string;
  modelVersion: string;
  modelSha256: string | null;
  modelSizeBytes: number | null;
  tags: Tag[];
  createdAt: number;
  updatedAt: number;
}

export interface CreateCompilationJobInput {
  name: string;
  framework: string;
  frameworkVersion?: string | undefined;
  inputS3Uri: string;
  roleArn: string;
  outputS3Location: string;
  targetDevice?: string | undefined;
  tags: Tag[];
}

export interface CompilationJobsOptions {
  models: ModelStore;
  /** Opens an `s3://bucket/key` object on the S3-compatible store the server is configured for. */
  openS3Object: (uri: string) => Promise<Readable>;
  logger: Logger;
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
 * validated, and completes without compiling. Imports run in this process; one a restart interrupted is
 * marked FAILED at start-up (call `failInterrupted`).
 */
export class CompilationJobStore {
  private readonly now: () => number;
  private readonly running = new Map<string, Promise<void>>();

  constructor(
    private readonly db: Kysely<DatabaseSchema>,
    private readonly options: CompilationJobsOptions,
  ) {
    this.now = options.now ?? Date.now;
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
    const run = this.runImport(toRecord(row)).finally(() => this.running.delete(input.name));
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
    const rows = (await query.execute()).map(toRecord);
    const contains = options.nameContains?.toLowerCase();
    return contains === undefined ? rows : rows.filter((r) => r.name.toLowerCase().includes(contains));
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

  /** Marks imports a previous process left unfinished as FAILED. */
  async failInterrupted(): Promise<void> {
    await this.db
      .updateTable('compilation_jobs')
      .set({
        status: 'FAILED',
        failure_reason: 'the server restarted during the import; create the job again',
        updated_at: this.now(),
      })
      .where('status', '=', 'INPROGRESS')
      .execute();
  }

  /** Waits for imports in flight (server shutdown, tests). */
  async settle(): Promise<void> {
    await Promise.allSettled([...this.running.values()]);
  }

  private async runImport(job: CompilationJobRecord): Promise<void> {
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
      const stopped = await this.finish(job.name, {
        status: 'COMPLETED',
        model_sha256: version.sha256,
        model_size_bytes: version.sizeBytes,
      });
      if (stopped) await this.options.models.deleteVersion(job.modelName, job.modelVersion);
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      this.options.logger.warn({ err: error, job: job.name }, 'compilation job import failed');
      await this.finish(job.name, { status: 'FAILED', failure_reason: message.slice(0, 1024) }).catch(
        () => undefined,
      );
    }
  }

  /** Records the outcome unless the job was stopped meanwhile; true if it was. */
  private async finish(name: string, changes: Partial<CompilationJobsTable>): Promise<boolean> {
    const result = await this.db
      .updateTable('compilation_jobs')
      .set({ ...changes, updated_at: this.now() })
      .where('name', '=', name)
      .where('status', '=', 'INPROGRESS')
      .executeTakeFirst();
    return Number(result.numUpdatedRows) === 0;
  }
}
