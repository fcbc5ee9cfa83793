import { z } from 'zod';

/**
 * A rule of automatic capture: Predict traffic of the matching models is captured without the application
 * calling CaptureData. A prediction is captured when any rule for its model selects it.
 */
export const AutoCaptureRuleSchema = z
  .object({
    /** A model name, or `*` for every model. */
    model: z.string().min(1).default('*'),
    /** Capture this fraction of predictions at random (0.01 = 1 %). */
    sampleRate: z.number().min(0).max(1).optional(),
    /** Capture when the largest value of the output is below this (a low top score: the model is unsure). */
    topScoreBelow: z.number().optional(),
    /** The output tensor topScoreBelow looks at; default the model's first output. */
    output: z.string().min(1).optional(),
  })
  .refine((rule) => rule.sampleRate !== undefined || rule.topScoreBelow !== undefined, {
    message: 'an automatic capture rule needs sampleRate, topScoreBelow, or both',
  });
export type AutoCaptureRule = z.infer<typeof AutoCaptureRuleSchema>;

/** Default spool quota: 1 GiB. */
export const DEFAULT_SPOOL_QUOTA_BYTES = 1024 ** 3;
/** Default edgefleet_capture_disk_quota_bytes: what the Disk destination's files may take. */
export const DEFAULT_CAPTURE_DISK_QUOTA_BYTES = 1024 ** 3;
/** Default edgefleet_capture_min_free_bytes: free space Disk captures leave on their file system. */
export const DEFAULT_CAPTURE_MIN_FREE_BYTES = 64 * 1024 ** 2;
