import { z } from 'zod';
import { accessKeyActor } from '../../audit/index.js';
import type { DeviceRecord, DeviceStore } from '../../devices/index.js';
import { MAX_DEVICES_PER_REGISTRATION } from '../../devices/index.js';
import {
  deviceDescriptionSchema,
  deviceNameSchema,
  fleetNameSchema,
  iotThingNameSchema,
} from '../../fields/index.js';
import type { FleetStore } from '../../fleets/index.js';
import { AwsError } from '../aws-errors.js';
import {
  defineOperation,
  epochSeconds,
  present,
  timestampInput,
  type OperationModule,
} from '../operation.js';
import { pageOf, pagingInput } from './paging.js';
import { awsTagList, fromAwsTags } from './aws-tags.js';

const awsDevice = z.object({
  DeviceName: deviceNameSchema,
  Description: deviceDescriptionSchema.optional(),
  IotThingName: iotThingNameSchema.optional(),
});

const deviceList = z
  .array(awsDevice)
  .min(1)
  .max(MAX_DEVICES_PER_REGISTRATION)
  .refine(
    (devices) => new Set(devices.map((d) => d.DeviceName)).size === devices.length,
    'device names must be unique',
  );

export interface DeviceOperationDeps {
  fleets: FleetStore;
  devices: DeviceStore;
}

/** A device of the named fleet, or ResourceNotFound (a device of another fleet is not found in this one). */
async function deviceInFleet(
  devices: DeviceStore,
  fleetName: string,
  deviceName: string,
): Promise<DeviceRecord> {
  const device = await devices.find(deviceName);
  if (device === undefined || device.fleetName !== fleetName) {
    throw new AwsError('ResourceNotFound', `device ${deviceName} is not registered in fleet ${fleetName}`);
  }
  return device;
}

/** Devices: RegisterDevices, UpdateDevices, DeregisterDevices, DescribeDevice, ListDevices. */
export function deviceOperations({ fleets, devices }: DeviceOperationDeps): OperationModule {
  return {
    RegisterDevices: defineOperation({
      mutating: true,
      input: z.object({ DeviceFleetName: fleetNameSchema, Devices: deviceList, Tags: awsTagList.optional() }),
      run: async (input, { key }) => {
        await devices.register(
          input.DeviceFleetName,
          input.Devices.map((d) =>
            present({ name: d.DeviceName, description: d.Description, iotThingName: d.IotThingName }),
          ) as { name: string; description?: string; iotThingName?: string }[],
          fromAwsTags(input.Tags ?? []),
          accessKeyActor(key),
        );
        return {};
      },
    }),

    UpdateDevices: defineOperation({
      mutating: true,
      input: z.object({ DeviceFleetName: fleetNameSchema, Devices: deviceList }),
      run: async (input, { key }) => {
        await fleets.get(input.DeviceFleetName);
        // Check all first, so an unknown device changes nothing.
        for (const d of input.Devices) await deviceInFleet(devices, input.DeviceFleetName, d.DeviceName);
        for (const d of input.Devices) {
          // Members left out keep their value.
          const patch = present({ description: d.Description, iotThingName: d.IotThingName });
          if (Object.keys(patch).length > 0) await devices.update(d.DeviceName, patch, accessKeyActor(key));
        }
        return {};
      },
    }),

    DeregisterDevices: defineOperation({
      mutating: true,
      input: z.object({
        DeviceFleetName: fleetNameSchema,
        DeviceNames: z.array(deviceNameSchema).min(1).max(MAX_DEVICES_PER_REGISTRATION),
      }),
      run: async (input, { key }) => {
        await fleets.get(input.DeviceFleetName);
        for (const name of input.DeviceNames) await deviceInFleet(devices, input.DeviceFleetName, name);
        for (const name of input.DeviceNames) await devices.deregister(name, accessKeyActor(key));
        return {};
      },
    }),

    DescribeDevice: defineOperation({
      mutating: false,
      input: z.object({
        DeviceName: deviceNameSchema,
        DeviceFleetName: fleetNameSchema,
        NextToken: z.string().max(8192).optional(),
      }),
      run: async (input, { arns }) => {
        const device = await deviceInFleet(devices, input.DeviceFleetName, input.DeviceName);
        return present({
          DeviceArn: arns.device(device.fleetName, device.name),
          DeviceName: device.name,
          Description: device.description,
          DeviceFleetName: device.fleetName,
          IotThingName: device.iotThingName,
          RegistrationTime: epochSeconds(device.registeredAt),
          LatestHeartbeat: device.lastHeartbeatAt === null ? null : epochSeconds(device.lastHeartbeatAt),
          Models: device.models.map((m) =>
            present({
              ModelName: m.name,
              ModelVersion: m.version,
              LatestSampleTime: m.latestSampleTime === null ? null : epochSeconds(m.latestSampleTime),
              LatestInference: m.latestInferenceTime === null ? null : epochSeconds(m.latestInferenceTime),
            }),
          ),
          MaxModels: device.models.length,
          AgentVersion: device.agentVersion,
        });
      },
    }),

    ListDevices: defineOperation({
      mutating: false,
      input: pagingInput.extend({
        LatestHeartbeatAfter: timestampInput.optional(),
        ModelName: z.string().min(1).max(255).optional(),
        DeviceFleetName: fleetNameSchema.optional(),
      }),
      run: async (input, { arns }) => {
        const page = await pageOf(
          'ListDevices',
          input,
          (after, limit) =>
            devices.list({
              limit,
              ...present({
                after: after === undefined ? undefined : { key: after, name: after },
                fleet: input.DeviceFleetName,
                modelName: input.ModelName,
                latestHeartbeatAfter: input.LatestHeartbeatAfter,
              }),
            }),
          (device) => device.name,
        );
        return present({
          DeviceSummaries: page.items.map((device) =>
            present({
              DeviceName: device.name,
              DeviceArn: arns.device(device.fleetName, device.name),
              Description: device.description,
              DeviceFleetName: device.fleetName,
              IotThingName: device.iotThingName,
              RegistrationTime: epochSeconds(device.registeredAt),
              LatestHeartbeat: device.lastHeartbeatAt === null ? null : epochSeconds(device.lastHeartbeatAt),
              Models: device.models.map((m) => ({ ModelName: m.name, ModelVersion: m.version })),
              AgentVersion: device.agentVersion,
            }),
          ),
          NextToken: page.nextToken,
        });
      },
    }),
  };
}
