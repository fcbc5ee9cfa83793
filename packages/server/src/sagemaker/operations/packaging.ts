import { createReadStream } from 'node:fs';
import { accessKeyActor } from '../../audit/index.js';
import type { Kysely } from 'kysely';
import { z } from 'zod';
import type { S3Objects } from '../../blobs/index.js';
import type { CompilationJobStore } from '../../compilation/index.js';
import { DomainError } from '../../errors/index.js';
import {
  entityNameSchema,
  kmsKeyIdSchema,
  modelVersionSchema,
  roleArnSchema,
  s3UriSchema,
  tagListSchema,
  type Tag,
} from '../../fields/index.js';
import type { ModelStore } from '../../models/index.js';
import type { PackagingJobRecord, PackagingJobStore } from '../../packaging/index.js';
import type { DatabaseSchema } from '../../storage/index.js';
import { AwsError } from '../aws-errors.js';
import type { ArnBuilder } from '../arns.js';
import { defineOperation, epochSeconds, present, type OperationModule } from '../operation.js';
import { pageOf, pagingInput, requireNameOrder, timeFilterInput, withinTimeFilters } from './paging.js';
import { awsTagList, fromAwsTags } from './aws-tags.js';
import { claimPackageObject } from './package-object-claim.js';

/**
 * Edge Manager's package object: `<S3OutputLocation>/<ModelName>-<ModelVersion>.tar.gz`, spaces in the version
 * written as `_`. Two jobs naming one object (two versions that differ only so, or one version twice) would
 * overwrite each other's package: CreateEdgePackagingJob refuses the second (a unique index, race-free).
 */
export function packageObjectUri(
  job: Pick<PackagingJobRecord, 'outputS3Location' | 'modelName' | 'modelVersion'>,
) {
  return `${(job.outputS3Location ?? '').replace(/\/+$/, '')}/${job.modelName}-${job.modelVersion.replace(/ /g, '_')}.tar.gz`;
}

export interface PackagingOperationDeps {
  db: Kysely<DatabaseSchema>;
  jobs: PackagingJobStore;
  models: ModelStore;
  compilationJobs: CompilationJobStore;
  /** Wakes the packaging worker after a job is created. */
  kick: () => void;
}

async function sourceOf(db: Kysely<DatabaseSchema>, jobName: string) {
  return db
    .selectFrom('edge_packaging_job_sources')
    .selectAll()
    .where('job_name', '=', jobName)
    .executeTakeFirst();
}

/**
 * The worker hook that gives facade-created packaging jobs Edge Manager's output: the package copied to the
 * job's S3 output location (native jobs keep theirs in the blob store only).
 */
export function exportFacadePackages(db: Kysely<DatabaseSchema>, s3: S3Objects) {
  return async (
    job: PackagingJobRecord,
    archiveFile: string,
    sizeBytes: number,
    signal?: AbortSignal,
  ): Promise<void> => {
    if (job.outputS3Location === null || (await sourceOf(db, job.name)) === undefined) return;
    await s3.put(packageObjectUri(job), createReadStream(archiveFile), {
      contentLength: sizeBytes,
      contentType: 'application/gzip',
      ...(signal && { signal }),
    });
  };
}

/**
 * Where Edge Manager's agents found a packaging job's package: its S3 object, for a job created through the
 * facade (only those are copied to S3); undefined for any other job.
 */
export function facadePackageS3Url(db: Kysely<DatabaseSchema>, jobs: Pick<PackagingJobStore, 'get'>) {
  return async (jobName: string): Promise<string | undefined> => {
    if ((await sourceOf(db, jobName)) === undefined) return undefined;
    const job = await jobs.get(jobName);
    return job.outputS3Location === null ? undefined : packageObjectUri(job);
  };
}

/** Tags of a packaging job created through the facade (native jobs have none). */
export async function packagingJobTags(
  db: Kysely<DatabaseSchema>,
  jobName: string,
): Promise<{ tags: Tag[]; write: (tags: Tag[]) => Promise<void> }> {
  const source = await sourceOf(db, jobName);
  if (source === undefined) {
    const exists = await db
      .selectFrom('packaging_jobs')
      .select('name')
      .where('name', '=', jobName)
      .executeTakeFirst();
    if (exists === undefined)
      throw new AwsError('ResourceNotFound', `edge packaging job ${jobName} does not exist`);
    throw new AwsError(
      'ResourceNotFound',
      `edge packaging job ${jobName} was not created through the SageMaker API; only those carry tags`,
    );
  }
  return {
    tags: tagListSchema.parse(JSON.parse(source.tags)),
    write: async (tags) => {
      await db
        .updateTable('edge_packaging_job_sources')
        .set({ tags: JSON.stringify(tags) })
        .where('job_name', '=', jobName)
        .execute();
    },
  };
}

function summary(job: PackagingJobRecord, compilationJobName: string | undefined, arns: ArnBuilder) {
  return present({
    EdgePackagingJobArn: arns.edgePackagingJob(job.name),
    EdgePackagingJobName: job.name,
    EdgePackagingJobStatus: job.status,
    CompilationJobName: compilationJobName,
    ModelName: job.modelName,
    ModelVersion: job.modelVersion,
    CreationTime: epochSeconds(job.createdAt),
    LastModifiedTime: epochSeconds(job.updatedAt),
  });
}

/** CreateEdgePackagingJob (from a completed compilation job), Describe/ListEdgePackagingJobs. */
export function packagingOperations(deps: PackagingOperationDeps): OperationModule {
  const { db, jobs, models, compilationJobs } = deps;
  return {
    CreateEdgePackagingJob: defineOperation({
      mutating: true,
      input: z.object({
        EdgePackagingJobName: entityNameSchema,
        CompilationJobName: entityNameSchema,
        ModelName: entityNameSchema,
        ModelVersion: modelVersionSchema,
        RoleArn: roleArnSchema,
        OutputConfig: z.object({
          S3OutputLocation: s3UriSchema,
          KmsKeyId: kmsKeyIdSchema.optional(),
          PresetDeploymentType: z.literal('GreengrassV2Component').optional(),
        }),
        ResourceKey: kmsKeyIdSchema.optional(),
        Tags: awsTagList.optional(),
      }),
      run: async (input, { key }) => {
        if (input.OutputConfig.PresetDeploymentType !== undefined) {
          throw new AwsError(
            'ValidationException',
            "1 validation error detected: Value at 'OutputConfig.PresetDeploymentType' failed to satisfy constraint: Greengrass V2 components are not supported by EdgeFleet; leave it out",
          );
        }
        if (!input.OutputConfig.S3OutputLocation.startsWith('s3://')) {
          throw new AwsError(
            'ValidationException',
            "1 validation error detected: Value at 'OutputConfig.S3OutputLocation' failed to satisfy constraint: EdgeFleet writes packages to s3:// locations only",
          );
        }
        const compilation = await compilationJobs.get(input.CompilationJobName);
        if (compilation.status !== 'COMPLETED') {
          throw new AwsError(
            'ValidationException',
            `compilation job ${compilation.name} is ${compilation.status}; package a COMPLETED one`,
          );
        }
        const target = {
          modelName: input.ModelName,
          modelVersion: input.ModelVersion,
          outputS3Location: input.OutputConfig.S3OutputLocation,
        };
        const packageUri = packageObjectUri(target);
        // First, so that the job's name and its package object are taken before anything is written.
        await claimPackageObject(
          db,
          {
            job_name: input.EdgePackagingJobName,
            compilation_job_name: compilation.name,
            role_arn: input.RoleArn,
            tags: JSON.stringify(fromAwsTags(input.Tags ?? [])),
            package_object_uri: packageUri,
          },
          input.ModelVersion,
        );
        try {
          // The compiled model becomes the model version the package is named after.
          const existing = await models.findVersion(input.ModelName, input.ModelVersion);
          if (existing === undefined) {
            const source = await models.getVersion(compilation.modelName, compilation.modelVersion);
            await models.upload(
              {
                name: input.ModelName,
                version: input.ModelVersion,
                kind: 'onnx',
                body: await models.openSource(source),
                description: `from compilation job ${compilation.name}`,
              },
              accessKeyActor(key),
            );
          } else if (existing.sha256 !== compilation.modelSha256) {
            throw new DomainError(
              'Conflict',
              `model ${input.ModelName} version ${input.ModelVersion} already exists with other content than compilation job ${compilation.name}'s; choose another ModelVersion`,
            );
          }
          await jobs.create(
            {
              name: input.EdgePackagingJobName,
              modelName: input.ModelName,
              modelVersion: input.ModelVersion,
              outputS3Location: input.OutputConfig.S3OutputLocation,
            },
            accessKeyActor(key),
          );
        } catch (error) {
          await db
            .deleteFrom('edge_packaging_job_sources')
            .where('job_name', '=', input.EdgePackagingJobName)
            .execute();
          throw error;
        }
        deps.kick();
        return {};
      },
    }),

    DescribeEdgePackagingJob: defineOperation({
      mutating: false,
      input: z.object({ EdgePackagingJobName: entityNameSchema }),
      run: async (input, { arns }) => {
        const job = await jobs.get(input.EdgePackagingJobName);
        const source = await sourceOf(db, job.name);
        return present({
          ...summary(job, source?.compilation_job_name, arns),
          RoleArn: source?.role_arn,
          OutputConfig: job.outputS3Location === null ? null : { S3OutputLocation: job.outputS3Location },
          EdgePackagingJobStatusMessage: job.statusMessage,
          ModelArtifact:
            job.status !== 'COMPLETED'
              ? null
              : source !== undefined
                ? packageObjectUri(job)
                : job.artifactLocation,
          ModelSignature: job.signature,
        });
      },
    }),

    ListEdgePackagingJobs: defineOperation({
      mutating: false,
      input: pagingInput.extend(timeFilterInput.shape).extend({
        NameContains: z.string().max(63).optional(),
        ModelNameContains: z.string().max(63).optional(),
        StatusEquals: z
          .enum(['STARTING', 'INPROGRESS', 'COMPLETED', 'FAILED', 'STOPPING', 'STOPPED'])
          .optional(),
        SortBy: z.enum(['NAME', 'MODEL_NAME', 'CREATION_TIME', 'LAST_MODIFIED_TIME', 'STATUS']).optional(),
        SortOrder: z.enum(['Ascending', 'Descending']).optional(),
      }),
      run: async (input, { arns }) => {
        requireNameOrder('edge packaging jobs', 'NAME', input);
        const status = input.StatusEquals;
        const page = await pageOf(
          'ListEdgePackagingJobs',
          input,
          (after, limit) =>
            status === 'STOPPING' || status === 'STOPPED'
              ? Promise.resolve([])
              : jobs.list({ limit, ...present({ after, status }) }),
          (job) => job.name,
        );
        const contains = (text: string, part?: string) =>
          part === undefined || text.toLowerCase().includes(part.toLowerCase());
        const kept = page.items.filter(
          (j) =>
            contains(j.name, input.NameContains) &&
            contains(j.modelName, input.ModelNameContains) &&
            withinTimeFilters(j, input),
        );
        const sources = new Map<string, string>();
        for (const job of kept) {
          const source = await sourceOf(db, job.name);
          if (source !== undefined) sources.set(job.name, source.compilation_job_name);
        }
        return present({
          EdgePackagingJobSummaries: kept.map((job) => summary(job, sources.get(job.name), arns)),
          NextToken: page.nextToken,
        });
      },
    }),
  };
}
