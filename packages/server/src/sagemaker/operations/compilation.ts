import { accessKeyActor } from '../../audit/index.js';
import { z } from 'zod';
import {
  stoppingConditionSchema,
  type CompilationJobRecord,
  type CompilationJobStore,
} from '../../compilation/index.js';
import { entityNameSchema, roleArnSchema, s3UriSchema } from '../../fields/index.js';
import type { ArnBuilder } from '../arns.js';
import { defineOperation, epochSeconds, present, type OperationModule } from '../operation.js';
import { pageOf, pagingInput, requireNameOrder, timeFilterInput, withinTimeFilters } from './paging.js';
import { awsTagList, fromAwsTags } from './aws-tags.js';

const STATUSES = ['INPROGRESS', 'COMPLETED', 'FAILED', 'STARTING', 'STOPPING', 'STOPPED'] as const;

function describe(job: CompilationJobRecord, arns: ArnBuilder) {
  const ended = job.status === 'INPROGRESS' ? null : epochSeconds(job.updatedAt);
  return present({
    CompilationJobName: job.name,
    CompilationJobArn: arns.compilationJob(job.name),
    CompilationJobStatus: job.status,
    CompilationStartTime: epochSeconds(job.createdAt),
    CompilationEndTime: ended,
    // As sent (EdgeFleet imports without a time limit); {} when none was.
    StoppingCondition: job.stoppingCondition,
    CreationTime: epochSeconds(job.createdAt),
    LastModifiedTime: epochSeconds(job.updatedAt),
    FailureReason: job.failureReason ?? '',
    // Nothing is compiled: the artifact is the imported model itself, once imported (none while importing,
    // nor for a failed or stopped import).
    ModelArtifacts: job.status === 'COMPLETED' ? { S3ModelArtifacts: job.inputS3Uri } : null,
    ModelDigests: job.modelSha256 === null ? null : { ArtifactDigest: `sha256:${job.modelSha256}` },
    RoleArn: job.roleArn,
    InputConfig: present({
      S3Uri: job.inputS3Uri,
      Framework: job.framework,
      FrameworkVersion: job.frameworkVersion,
      DataInputConfig: job.dataInputConfig,
    }),
    OutputConfig: present({ S3OutputLocation: job.outputS3Location, TargetDevice: job.targetDevice }),
  });
}

/** CreateCompilationJob (Framework ONNX: an import from S3), Describe/List/StopCompilationJob. */
export function compilationOperations({ jobs }: { jobs: CompilationJobStore }): OperationModule {
  return {
    CreateCompilationJob: defineOperation({
      mutating: true,
      input: z.object({
        CompilationJobName: entityNameSchema,
        RoleArn: roleArnSchema,
        InputConfig: z.object({
          S3Uri: s3UriSchema,
          Framework: z.string().min(1).max(64),
          FrameworkVersion: z.string().max(10).optional(),
          DataInputConfig: z.string().max(1024).optional(),
        }),
        OutputConfig: z.object({
          S3OutputLocation: s3UriSchema,
          TargetDevice: z.string().max(64).optional(),
        }),
        StoppingCondition: stoppingConditionSchema.optional(),
        Tags: awsTagList.optional(),
      }),
      run: async (input, { arns, key }) => {
        // The store refuses frameworks other than ONNX (ValidationException naming the framework).
        const job = await jobs.create(
          {
            name: input.CompilationJobName,
            framework: input.InputConfig.Framework,
            frameworkVersion: input.InputConfig.FrameworkVersion,
            inputS3Uri: input.InputConfig.S3Uri,
            roleArn: input.RoleArn,
            outputS3Location: input.OutputConfig.S3OutputLocation,
            targetDevice: input.OutputConfig.TargetDevice,
            stoppingCondition: input.StoppingCondition,
            dataInputConfig: input.InputConfig.DataInputConfig,
            tags: fromAwsTags(input.Tags ?? []),
          },
          accessKeyActor(key),
        );
        return { CompilationJobArn: arns.compilationJob(job.name) };
      },
    }),

    DescribeCompilationJob: defineOperation({
      mutating: false,
      input: z.object({ CompilationJobName: entityNameSchema }),
      run: async (input, { arns }) => describe(await jobs.get(input.CompilationJobName), arns),
    }),

    ListCompilationJobs: defineOperation({
      mutating: false,
      input: pagingInput.extend(timeFilterInput.shape).extend({
        NameContains: z.string().max(63).optional(),
        StatusEquals: z.enum(STATUSES).optional(),
        SortBy: z.enum(['Name', 'CreationTime', 'Status']).optional(),
        SortOrder: z.enum(['Ascending', 'Descending']).optional(),
      }),
      run: async (input, { arns }) => {
        requireNameOrder('compilation jobs', 'Name', input);
        const status = input.StatusEquals;
        const page = await pageOf(
          'ListCompilationJobs',
          input,
          (after, limit) =>
            status === 'STARTING' || status === 'STOPPING'
              ? Promise.resolve([])
              : jobs.list({ limit, ...present({ after, nameContains: input.NameContains, status }) }),
          (job) => job.name,
        );
        return present({
          CompilationJobSummaries: page.items
            .filter((j) => withinTimeFilters(j, input))
            .map((job) =>
              present({
                CompilationJobName: job.name,
                CompilationJobArn: arns.compilationJob(job.name),
                CreationTime: epochSeconds(job.createdAt),
                CompilationStartTime: epochSeconds(job.createdAt),
                CompilationEndTime: job.status === 'INPROGRESS' ? null : epochSeconds(job.updatedAt),
                CompilationTargetDevice: job.targetDevice,
                LastModifiedTime: epochSeconds(job.updatedAt),
                CompilationJobStatus: job.status,
              }),
            ),
          NextToken: page.nextToken,
        });
      },
    }),

    StopCompilationJob: defineOperation({
      mutating: true,
      input: z.object({ CompilationJobName: entityNameSchema }),
      run: async (input) => {
        await jobs.stop(input.CompilationJobName);
        return {};
      },
    }),
  };
}
