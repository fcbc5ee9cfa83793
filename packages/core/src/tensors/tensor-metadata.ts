import { z } from 'zod';
import { MAX_TENSOR_RANK } from '../contract/field-rules.js';
import { DataTypeNameSchema, elementSize } from './data-type.js';

/** One model input or output as a package manifest records it. `-1` marks a dimension fixed only at run time. */
export const TensorMetadataSchema = z.object({
  name: z.string().min(1).max(1024),
  dataType: DataTypeNameSchema,
  shape: z.array(z.number().int().min(-1)).max(MAX_TENSOR_RANK),
});
export type TensorMetadata = z.infer<typeof TensorMetadataSchema>;

/** Number of elements of a fully known shape (every dimension ≥ 0). */
export function elementCount(shape: readonly number[]): number {
  let count = 1;
  for (const dim of shape) count *= dim;
  return count;
}

/** Byte length of a tensor of this type and fully known shape. */
export function byteLength(dataType: TensorMetadata['dataType'], shape: readonly number[]): number {
  return elementCount(shape) * elementSize(dataType);
}

/**
 * Whether a concrete shape fits a declared one: same rank, and every declared dimension other than -1 equal.
 * Returns a sentence saying what differs, or undefined when it fits.
 */
export function shapeMismatch(declared: readonly number[], actual: readonly number[]): string | undefined {
  if (declared.length !== actual.length) {
    return `rank ${actual.length} (shape [${actual.join(', ')}]) where the model expects rank ${declared.length} ([${declared.join(', ')}])`;
  }
  for (let i = 0; i < declared.length; i++) {
    const want = declared[i]!;
    const got = actual[i]!;
    if (got < 0) return `dimension ${i} is ${got}; dimensions must be ≥ 0`;
    if (want !== -1 && want !== got) {
      return `dimension ${i} is ${got} where the model expects ${want} (shape [${declared.join(', ')}], -1 = any)`;
    }
  }
  return undefined;
}
