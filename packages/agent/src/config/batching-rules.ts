import { z } from 'zod';
import { MAX_MODEL_NAME_LENGTH, MODEL_NAME_PATTERN } from '@edgefleet/core';
import { MAX_BATCH_SIZE } from '../inference/batching.js';

const BATCH_SIZE_EXPECTED = `expected a whole number from 2 to ${MAX_BATCH_SIZE} (the most requests, counted along the batch dimension, one run may join)`;
/** The most sessions of one model: a rule's `instances`, and edgefleet_instances_per_model. */
export const MAX_INSTANCES = 64;
const INSTANCES_EXPECTED = `expected a whole number of sessions from 1 to ${MAX_INSTANCES}`;

/**
 * A rule of dynamic batching (`edgefleet_dynamic_batching`): requests for the model that wait for a worker are
 * joined along its batch dimension into one run. One exact model name per rule, never `*`: a joined run may differ
 * from a lone one in the last bits, so batching is asked for model by model (as Triton's max_batch_size is).
 */
export const DynamicBatchingRuleSchema = z.strictObject({
  /** The name the model is loaded under (LoadModel's handle, REST's model name). */
  model: z
    .string({ error: 'expected a model name (letters and digits joined by hyphens)' })
    .max(MAX_MODEL_NAME_LENGTH, `expected a model name of at most ${MAX_MODEL_NAME_LENGTH} characters`)
    .refine((model) => model !== '*', {
      message:
        'expected one model name: "*" is not accepted, since batching may change results in the last bits and is asked for model by model',
    })
    .refine((model) => model === '*' || MODEL_NAME_PATTERN.test(model), {
      // (not for "*": the refinement above said what is wrong with it)
      message: 'expected a model name (letters and digits joined by hyphens)',
    }),
  maxBatchSize: z
    .number({ error: BATCH_SIZE_EXPECTED })
    .int(BATCH_SIZE_EXPECTED)
    .min(2, BATCH_SIZE_EXPECTED)
    .max(MAX_BATCH_SIZE, BATCH_SIZE_EXPECTED),
  /** The model's symbolic dimension to join along, e.g. "batch"; absent: the one that fits (the pool finds it). */
  dimension: z
    .string({ error: 'expected the name of a symbolic dimension of the model, e.g. "batch"' })
    .min(1, 'expected the name of a symbolic dimension of the model, e.g. "batch"')
    .max(256, 'expected a dimension name of at most 256 characters')
    .optional(),
  /** Sessions of this model, on distinct workers (each a copy of its weights); absent: edgefleet_instances_per_model. */
  instances: z
    .number({ error: INSTANCES_EXPECTED })
    .int(INSTANCES_EXPECTED)
    .min(1, INSTANCES_EXPECTED)
    .max(MAX_INSTANCES, INSTANCES_EXPECTED)
    .optional(),
});
export type DynamicBatchingRule = z.infer<typeof DynamicBatchingRuleSchema>;
