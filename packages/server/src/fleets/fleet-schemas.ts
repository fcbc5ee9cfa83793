import { z } from 'zod';
import {
  fleetDescriptionSchema,
  fleetNameSchema,
  kmsKeyIdSchema,
  roleArnSchema,
  s3UriSchema,
  tagListSchema,
  tagSchema,
} from '../fields/index.js';

/** Where devices of the fleet upload captured data (EdgeOutputConfig). */
export const outputConfigInputSchema = z.strictObject({
  s3OutputLocation: s3UriSchema,
  kmsKeyId: kmsKeyIdSchema.optional(),
});
export type OutputConfigInput = z.infer<typeof outputConfigInputSchema>;

export const createFleetSchema = z.strictObject({
  name: fleetNameSchema,
  description: fleetDescriptionSchema.optional(),
  outputConfig: outputConfigInputSchema,
  roleArn: roleArnSchema.optional(),
  tags: tagListSchema.default([]),
});
export type CreateFleetInput = z.input<typeof createFleetSchema>;

export const updateFleetSchema = z
  .strictObject({
    description: fleetDescriptionSchema.nullable().optional(),
    outputConfig: outputConfigInputSchema.optional(),
    roleArn: roleArnSchema.nullable().optional(),
    tags: tagListSchema.optional().describe('Replaces all tags'),
  })
  .refine((patch) => Object.keys(patch).length > 0, 'expected at least one field to change');
export type UpdateFleetInput = z.infer<typeof updateFleetSchema>;

export const fleetSchema = z.object({
  name: z.string(),
  description: z.string().optional(),
  outputConfig: z.object({
    s3OutputLocation: z.string(),
    kmsKeyId: z.string().optional(),
    bucket: z.string().describe('Bucket part of s3OutputLocation'),
    prefix: z.string().describe('Key prefix part of s3OutputLocation (no trailing slash)'),
  }),
  roleArn: z.string().optional(),
  tags: z.array(tagSchema),
  deviceCount: z.int(),
  createdAt: z.iso.datetime(),
  updatedAt: z.iso.datetime(),
  warnings: z
    .array(z.string())
    .optional()
    .describe('Only in a create or update answer: what the server could not check (e.g. the output bucket)'),
});
export type FleetView = z.input<typeof fleetSchema>;

export const fleetListQuerySchema = z.object({
  nameContains: z.string().min(1).max(63).optional(),
});
