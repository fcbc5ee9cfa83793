import type { Kysely } from 'kysely';
import { z } from 'zod';
import { accessKeyActor, LOCAL_ACTOR, type Actor } from '../../audit/index.js';
import type { CompilationJobStore } from '../../compilation/index.js';
import type { DeploymentService } from '../../deployments/index.js';
import type { DeviceStore } from '../../devices/index.js';
import { MAX_TAGS, tagSchema, type Tag } from '../../fields/index.js';
import type { FleetStore } from '../../fleets/index.js';
import { parseResourceArn } from '../arns.js';
import { AwsError } from '../aws-errors.js';
import { defineOperation, type OperationModule } from '../operation.js';
import type { DatabaseSchema } from '../../storage/index.js';
import { packagingJobTags } from './packaging.js';
import { pageOfList } from './paging.js';
import { awsTagList, fromAwsTags } from './aws-tags.js';

const toAws = (tags: Tag[]) => tags.map((tag) => ({ Key: tag.key, Value: tag.value }));

export interface TagOperationDeps {
  db: Kysely<DatabaseSchema>;
  fleets: FleetStore;
  devices: DeviceStore;
  compilationJobs: CompilationJobStore;
  deployments: Pick<DeploymentService, 'describePlan' | 'setPlanTags'>;
}

/**
 * AddTags, ListTags, DeleteTags for device fleets, devices, compilation and edge packaging jobs and edge
 * deployment plans (by ARN).
 */
export function tagOperations({
  db,
  fleets,
  devices,
  compilationJobs,
  deployments,
}: TagOperationDeps): OperationModule {
  /** The resource's tags, and how to write them (changes logged as `by`'s; packaging jobs' are not logged). */
  const tagsOf = async (
    arn: string,
    by: Actor = LOCAL_ACTOR,
  ): Promise<{ tags: Tag[]; write: (tags: Tag[]) => Promise<void> }> => {
    const resource = parseResourceArn(arn);
    if (resource.kind === 'compilation-job') {
      const job = await compilationJobs.get(resource.name);
      return { tags: job.tags, write: (tags) => compilationJobs.setTags(job.name, tags, by) };
    }
    if (resource.kind === 'edge-packaging-job') return packagingJobTags(db, resource.name);
    if (resource.kind === 'edge-deployment') {
      const plan = await deployments.describePlan(resource.name);
      return {
        tags: plan.tags,
        write: async (tags) => void (await deployments.setPlanTags(plan.name, tags, by)),
      };
    }
    if (resource.kind === 'device-fleet') {
      const fleet = await fleets.get(resource.fleet);
      return {
        tags: fleet.tags,
        write: async (tags) => void (await fleets.update(fleet.name, { tags }, by)),
      };
    }
    const device = await devices.get(resource.device);
    if (device.fleetName !== resource.fleet) {
      throw new AwsError('ResourceNotFound', `device ${resource.device} is not in fleet ${resource.fleet}`);
    }
    return {
      tags: device.tags,
      write: async (tags) => void (await devices.update(device.name, { tags }, by)),
    };
  };
  const resourceArn = z.string().min(1).max(256);

  return {
    AddTags: defineOperation({
      mutating: true,
      input: z.object({ ResourceArn: resourceArn, Tags: awsTagList }),
      run: async (input, { key }) => {
        const { tags, write } = await tagsOf(input.ResourceArn, accessKeyActor(key));
        const merged = fromAwsTags([...tags, ...input.Tags]);
        if (merged.length > MAX_TAGS) {
          throw new AwsError('ResourceLimitExceeded', `a resource may have at most ${MAX_TAGS} tags`);
        }
        await write(merged);
        return { Tags: toAws(merged) };
      },
    }),

    ListTags: defineOperation({
      mutating: false,
      input: z.object({
        ResourceArn: resourceArn,
        NextToken: z.string().max(8192).optional(),
        MaxResults: z.int().min(50).max(100).optional(),
      }),
      run: async (input) => {
        const { tags } = await tagsOf(input.ResourceArn);
        const sorted = [...tags].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
        const page = pageOfList(
          'ListTags',
          { ...input, MaxResults: input.MaxResults ?? 50 },
          sorted,
          (t) => t.key,
        );
        return { Tags: toAws(page.items), ...(page.nextToken ? { NextToken: page.nextToken } : {}) };
      },
    }),

    DeleteTags: defineOperation({
      mutating: true,
      input: z.object({
        ResourceArn: resourceArn,
        TagKeys: z.array(tagSchema.shape.key).min(1).max(50),
      }),
      run: async (input, { key }) => {
        const { tags, write } = await tagsOf(input.ResourceArn, accessKeyActor(key));
        const remove = new Set(input.TagKeys);
        await write(tags.filter((tag) => !remove.has(tag.key)));
        return {};
      },
    }),
  };
}
