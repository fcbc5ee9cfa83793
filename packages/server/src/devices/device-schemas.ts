import { MAX_DEVICES_PER_REGISTRATION } from '@edgefleet/core';
import { z } from 'zod';
import {
  deviceDescriptionSchema,
  deviceNameSchema,
  fleetNameSchema,
  iotThingNameSchema,
  tagListSchema,
  tagSchema,
} from '../fields/index.js';

export { MAX_DEVICES_PER_REGISTRATION };

export const deviceInputSchema = z.strictObject({
  name: deviceNameSchema,
  description: deviceDescriptionSchema.optional(),
  iotThingName: iotThingNameSchema.optional(),
});
export type DeviceInput = z.infer<typeof deviceInputSchema>;

export const registerDevicesSchema = z.strictObject({
  devices: z
    .array(deviceInputSchema)
    .min(1)
    .max(MAX_DEVICES_PER_REGISTRATION)
    .refine(
      (devices) => new Set(devices.map((d) => d.name)).size === devices.length,
      'device names must be unique',
    ),
  tags: tagListSchema.default([]).describe('Applied to every device registered by this call'),
});
export type RegisterDevicesInput = z.input<typeof registerDevicesSchema>;

export const updateDeviceSchema = z
  .strictObject({
    description: deviceDescriptionSchema.nullable().optional(),
    iotThingName: iotThingNameSchema.nullable().optional(),
    tags: tagListSchema.optional().describe('Replaces all tags'),
  })
  .refine((patch) => Object.keys(patch).length > 0, 'expected at least one field to change');
export type UpdateDeviceInput = z.infer<typeof updateDeviceSchema>;

/** `key` or `key=value`; repeat the parameter to require several tags. */
const tagFilterSchema = z
  .string()
  .min(1)
  .max(385)
  .transform((text) => {
    const eq = text.indexOf('=');
    return eq < 0 ? { key: text } : { key: text.slice(0, eq), value: text.slice(eq + 1) };
  });

export const deviceSortKeySchema = z.enum(['name', 'lastSeen', 'registered']);
export type DeviceSortKey = z.infer<typeof deviceSortKeySchema>;

export const deviceListQuerySchema = z.object({
  fleet: fleetNameSchema.optional(),
  tag: z
    .union([tagFilterSchema, z.array(tagFilterSchema).max(10)], {
      // The union's own message ("Invalid input") names neither the value nor what was expected.
      error: (issue) =>
        `expected key or key=value (1 to 385 characters), at most 10 of them (repeat the parameter), not ${JSON.stringify(issue.input)}`,
    })
    .optional()
    .transform((value) => (value === undefined ? [] : Array.isArray(value) ? value : [value]))
    .describe('key or key=value; repeatable'),
  nameContains: z
    .string()
    .min(1)
    .max(63)
    .optional()
    .describe('Case-insensitive substring of the device name'),
  status: z
    .enum(['online', 'offline', 'never-seen'])
    .optional()
    .describe('online; offline (not online, never-seen devices included); never-seen (no heartbeat yet)'),
  modelName: z.string().min(1).max(255).optional().describe('Devices that reported this model'),
  latestHeartbeatAfter: z.iso.datetime().optional(),
  sortBy: deviceSortKeySchema
    .default('name')
    .describe('name, lastSeen (latest heartbeat; never-seen devices sort as oldest) or registered'),
  sortOrder: z.enum(['asc', 'desc']).default('asc'),
});
export type DeviceListQuery = z.output<typeof deviceListQuerySchema>;

export const deviceModelSchema = z.object({
  name: z.string(),
  version: z.string(),
  latestSampleTime: z.iso.datetime().optional(),
  latestInference: z.iso.datetime().optional(),
});

export const deviceCertificateSchema = z.object({
  serial: z.string(),
  fingerprintSha256: z.string(),
  subject: z.string(),
  notBefore: z.iso.datetime(),
  notAfter: z.iso.datetime(),
  issuedAt: z.iso.datetime(),
  revokedAt: z.iso.datetime().optional(),
});

export const identityStatusSchema = z.enum(['NOT_ENROLLED', 'ENROLLED', 'EXPIRED', 'REVOKED']);
export type IdentityStatus = z.infer<typeof identityStatusSchema>;

export const deployedModelNotLoadedSchema = z.object({
  modelHandle: z.string(),
  deploymentName: z.string().describe('The deployment that put the model on the device'),
  modelName: z.string().optional(),
  modelVersion: z.string().optional(),
  unloadedByApplication: z
    .boolean()
    .describe(
      'true: an application on the device unloaded it (UnLoadModel, REST unload); false: not loaded since the agent started (still loading, or its load failed)',
    ),
  since: z.iso.datetime().optional().describe('When the application unloaded it (by the device clock)'),
  reason: z.string().describe("The agent's words"),
});

export const deviceSummarySchema = z.object({
  name: z.string(),
  fleetName: z.string(),
  description: z.string().optional(),
  iotThingName: z.string().optional(),
  tags: z.array(tagSchema),
  registeredAt: z.iso.datetime(),
  latestHeartbeat: z.iso.datetime().optional(),
  agentVersion: z.string().optional(),
  status: z
    .enum(['online', 'offline'])
    .describe(`offline once the configured number of heartbeats is missed`),
  models: z.array(z.object({ name: z.string(), version: z.string() })),
  deployedModelsNotLoadedCount: z
    .int()
    .optional()
    .describe(
      'How many deployed model handles the last heartbeat said are not loaded (the device serves nothing under them); absent: its agent does not report it',
    ),
});

export const deviceSchema = deviceSummarySchema.extend({
  updatedAt: z.iso.datetime(),
  registrationStatus: z.literal('REGISTERED'),
  models: z.array(deviceModelSchema),
  identity: z.object({
    status: identityStatusSchema,
    certificate: deviceCertificateSchema.optional().describe('The newest certificate issued to the device'),
  }),
  deploymentResult: z.unknown().optional().describe('The last DeploymentResult the device reported'),
  deployedModelsNotLoaded: z
    .array(deployedModelNotLoadedSchema)
    .optional()
    .describe(
      'Deployed model handles the last heartbeat said are not loaded, and why (empty: all serve). Absent: its agent does not report it (older than schema 7, deployments off, an Edge Manager agent)',
    ),
});
export type DeviceView = z.input<typeof deviceSchema>;
export type DeviceSummaryView = z.input<typeof deviceSummarySchema>;
