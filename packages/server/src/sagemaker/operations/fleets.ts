import type { Kysely } from 'kysely';
import { z } from 'zod';
import {
  fleetDescriptionSchema,
  fleetNameSchema,
  kmsKeyIdSchema,
  roleArnSchema,
  s3UriSchema,
} from '../../fields/index.js';
import { accessKeyActor } from '../../audit/index.js';
import type { FleetRecord, FleetStore } from '../../fleets/index.js';
import { fleetReport } from '../../heartbeats/index.js';
import type { DatabaseSchema } from '../../storage/index.js';
import { AwsError } from '../aws-errors.js';
import { defineOperation, epochSeconds, present, type OperationModule } from '../operation.js';
import { awsTagList, fromAwsTags } from './aws-tags.js';
import { pageOf, pagingInput, requireNameOrder, timeFilterInput, withinTimeFilters } from './paging.js';

const edgeOutputConfig = z.object({
  S3OutputLocation: s3UriSchema,
  KmsKeyId: kmsKeyIdSchema.optional(),
  PresetDeploymentType: z.literal('GreengrassV2Component').optional(),
  PresetDeploymentConfig: z.string().optional(),
});

function rejectGreengrass(config: z.infer<typeof edgeOutputConfig>): void {
  if (config.PresetDeploymentType !== undefined || config.PresetDeploymentConfig !== undefined) {
    throw new AwsError(
      'ValidationException',
      "1 validation error detected: Value at 'OutputConfig.PresetDeploymentType' failed to satisfy constraint: Greengrass V2 components are not supported by EdgeFleet; leave it out",
    );
  }
}

function outputConfigOf(fleet: FleetRecord) {
  return present({
    S3OutputLocation: fleet.outputConfig.s3OutputLocation,
    KmsKeyId: fleet.outputConfig.kmsKeyId,
  });
}

export interface FleetOperationDeps {
  db: Kysely<DatabaseSchema>;
  fleets: FleetStore;
  offlineAfterMs: number;
}

/** Device fleets: CreateDeviceFleet … DeleteDeviceFleet, ListDeviceFleets, GetDeviceFleetReport. */
export function fleetOperations({ db, fleets, offlineAfterMs }: FleetOperationDeps): OperationModule {
  return {
    CreateDeviceFleet: defineOperation({
      mutating: true,
      input: z.object({
        DeviceFleetName: fleetNameSchema,
        RoleArn: roleArnSchema.optional(),
        Description: fleetDescriptionSchema.optional(),
        OutputConfig: edgeOutputConfig,
        Tags: awsTagList.optional(),
        EnableIotRoleAlias: z.boolean().optional(),
      }),
      run: async (input, { key }) => {
        rejectGreengrass(input.OutputConfig);
        await fleets.create(
          {
            name: input.DeviceFleetName,
            ...present({ description: input.Description, roleArn: input.RoleArn }),
            outputConfig: {
              s3OutputLocation: input.OutputConfig.S3OutputLocation,
              ...present({ kmsKeyId: input.OutputConfig.KmsKeyId }),
            },
            tags: fromAwsTags(input.Tags ?? []),
          },
          accessKeyActor(key),
        );
        return {};
      },
    }),

    DescribeDeviceFleet: defineOperation({
      mutating: false,
      input: z.object({ DeviceFleetName: fleetNameSchema }),
      run: async (input, { arns }) => {
        const fleet = await fleets.get(input.DeviceFleetName);
        return present({
          DeviceFleetName: fleet.name,
          DeviceFleetArn: arns.fleet(fleet.name),
          OutputConfig: outputConfigOf(fleet),
          Description: fleet.description,
          CreationTime: epochSeconds(fleet.createdAt),
          LastModifiedTime: epochSeconds(fleet.updatedAt),
          RoleArn: fleet.roleArn,
        });
      },
    }),

    UpdateDeviceFleet: defineOperation({
      mutating: true,
      input: z.object({
        DeviceFleetName: fleetNameSchema,
        RoleArn: roleArnSchema.optional(),
        Description: fleetDescriptionSchema.optional(),
        OutputConfig: edgeOutputConfig,
        EnableIotRoleAlias: z.boolean().optional(),
      }),
      run: async (input, { key }) => {
        rejectGreengrass(input.OutputConfig);
        await fleets.update(
          input.DeviceFleetName,
          {
            ...present({ description: input.Description, roleArn: input.RoleArn }),
            outputConfig: {
              s3OutputLocation: input.OutputConfig.S3OutputLocation,
              ...present({ kmsKeyId: input.OutputConfig.KmsKeyId }),
            },
          },
          accessKeyActor(key),
        );
        return {};
      },
    }),

    DeleteDeviceFleet: defineOperation({
      mutating: true,
      input: z.object({ DeviceFleetName: fleetNameSchema }),
      run: async (input, { key }) => {
        await fleets.delete(input.DeviceFleetName, accessKeyActor(key));
        return {};
      },
    }),

    ListDeviceFleets: defineOperation({
      mutating: false,
      input: pagingInput.extend(timeFilterInput.shape).extend({
        NameContains: z
          .string()
          .max(63)
          .regex(/^[a-zA-Z0-9-]+$/, 'expected letters, digits and -')
          .optional(),
        SortBy: z.enum(['NAME', 'CREATION_TIME', 'LAST_MODIFIED_TIME']).optional(),
        SortOrder: z.enum(['Ascending', 'Descending']).optional(),
      }),
      run: async (input, { arns }) => {
        requireNameOrder('device fleets', 'NAME', input);
        // Time filters apply within each page of names, so a page may hold fewer than MaxResults fleets
        // while NextToken is still set; paginators handle that.
        const page = await pageOf(
          'ListDeviceFleets',
          input,
          (after, limit) => fleets.list({ limit, ...present({ after, nameContains: input.NameContains }) }),
          (fleet) => fleet.name,
        );
        return present({
          DeviceFleetSummaries: page.items
            .filter((f) => withinTimeFilters(f, input))
            .map((fleet) => ({
              DeviceFleetArn: arns.fleet(fleet.name),
              DeviceFleetName: fleet.name,
              CreationTime: epochSeconds(fleet.createdAt),
              LastModifiedTime: epochSeconds(fleet.updatedAt),
            })),
          NextToken: page.nextToken,
        });
      },
    }),

    GetDeviceFleetReport: defineOperation({
      mutating: false,
      input: z.object({ DeviceFleetName: fleetNameSchema }),
      run: async (input, { arns }) => {
        const report = await fleetReport(db, fleets, input.DeviceFleetName, { offlineAfterMs });
        return present({
          DeviceFleetArn: arns.fleet(report.fleetName),
          DeviceFleetName: report.fleetName,
          OutputConfig: present({
            S3OutputLocation: report.outputConfig.s3OutputLocation,
            KmsKeyId: report.outputConfig.kmsKeyId,
          }),
          Description: report.description,
          ReportGenerated: epochSeconds(report.reportGenerated),
          DeviceStats: {
            ConnectedDeviceCount: report.deviceStats.connectedDeviceCount,
            RegisteredDeviceCount: report.deviceStats.registeredDeviceCount,
          },
          AgentVersions: report.agentVersions.map((v) => ({ Version: v.version, AgentCount: v.agentCount })),
          ModelStats: report.modelStats.map((m) => ({
            ModelName: m.modelName,
            ModelVersion: m.modelVersion,
            OfflineDeviceCount: m.offlineDeviceCount,
            ConnectedDeviceCount: m.connectedDeviceCount,
            ActiveDeviceCount: m.activeDeviceCount,
            SamplingDeviceCount: m.samplingDeviceCount,
          })),
        });
      },
    }),
  };
}
