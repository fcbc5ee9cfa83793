/**
 * Field rules from the SageMaker Edge Manager API (see shared/spec/sagemaker-cloud-api.md), shared by every
 * resource so the native API and the compatibility facade accept exactly the same values.
 */
import { z } from 'zod';

const ENTITY_NAME_MESSAGE = 'expected 1-63 letters, digits and inner hyphens (e.g. fleet-1)';

/** EntityName: fleets, devices (control plane), models, packaging jobs, deployment plans. */
export const entityNameSchema = z
  .string()
  // The pattern alone would let any number of hyphens through; a name too long says so once (abort), not
  // once more for the pattern.
  .max(63, {
    error: (issue) =>
      `${ENTITY_NAME_MESSAGE}; this one is ${typeof issue.input === 'string' ? issue.input.length : 'over 63'} characters long`,
    abort: true,
  })
  .regex(/^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$/, ENTITY_NAME_MESSAGE);

export const fleetNameSchema = entityNameSchema.describe('Fleet name');
export const deviceNameSchema = entityNameSchema.describe('Device name, unique across fleets');

/** DeviceFleetDescription (800) and DeviceDescription (40) share a character set. */
const DESCRIPTION_PATTERN = /^[-a-zA-Z0-9_.,;:! ]*$/;
const DESCRIPTION_MESSAGE = 'expected letters, digits, spaces and - _ . , ; : !';
export const fleetDescriptionSchema = z.string().max(800).regex(DESCRIPTION_PATTERN, DESCRIPTION_MESSAGE);
export const deviceDescriptionSchema = z.string().max(40).regex(DESCRIPTION_PATTERN, DESCRIPTION_MESSAGE);

export const iotThingNameSchema = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[a-zA-Z0-9:_-]+$/, 'expected letters, digits and : _ -');

export const s3UriSchema = z
  .string()
  .max(1024)
  .regex(/^(https|s3):\/\/([^/]+)\/?(.*)$/, 'expected s3://bucket/prefix (or an https:// URL)');

export const kmsKeyIdSchema = z
  .string()
  .max(2048)
  .regex(/^[a-zA-Z0-9:/_-]*$/, 'expected a KMS key id or ARN');

export const roleArnSchema = z
  .string()
  .max(2048)
  .regex(/^arn:aws[a-z-]*:iam::\d{12}:role\/?[a-zA-Z_0-9+=,.@\-_/]+$/, 'expected an IAM role ARN');

/** Version: what agents and models report (`[a-zA-Z0-9 _.]+`, 64), the device contract's rule. */
export { versionSchema } from '@edgefleet/core';

/** EdgeVersion: model versions the control plane stores and packages (30, not "." or ".."): core's rule. */
export { ModelVersionSchema as modelVersionSchema } from '@edgefleet/core';

const TAG_PATTERN = /^[\p{L}\p{Z}\p{N}_.:/=+\-@]*$/u;
export const MAX_TAGS = 50;

export const tagSchema = z.strictObject({
  key: z.string().min(1).max(128).regex(TAG_PATTERN, 'expected letters, digits, spaces and _ . : / = + - @'),
  value: z.string().max(256).regex(TAG_PATTERN, 'expected letters, digits, spaces and _ . : / = + - @'),
});
export type Tag = z.infer<typeof tagSchema>;

export const tagListSchema = z
  .array(tagSchema)
  .max(MAX_TAGS)
  .refine((tags) => new Set(tags.map((t) => t.key)).size === tags.length, 'tag keys must be unique');

/** Splits `s3://bucket/prefix` (or https://host/bucket/prefix) into bucket and prefix. */
export function splitS3Uri(uri: string): { bucket: string; prefix: string } {
  const match = /^(?:s3|https):\/\/([^/]+)\/?(.*)$/.exec(uri);
  if (!match) throw new Error(`"${uri}" is not an s3:// URI`);
  return { bucket: match[1] ?? '', prefix: (match[2] ?? '').replace(/\/+$/, '') };
}
