import { z } from 'zod';
import { MAX_TAGS, tagSchema, type Tag } from '../../fields/index.js';

/** AWS's Tag shape over the native tag rules (fields/). */
export const awsTag = z
  .object({ Key: tagSchema.shape.key, Value: tagSchema.shape.value })
  .transform((tag): Tag => ({ key: tag.Key, value: tag.Value }));
export const awsTagList = z.array(awsTag).max(MAX_TAGS);

/** Tags as the native stores take them: keys unique, a repeated key keeping its last value (as AWS does). */
export function fromAwsTags(tags: Tag[]): Tag[] {
  return [...new Map(tags.map((tag) => [tag.key, tag])).values()];
}
