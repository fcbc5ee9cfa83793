import { z } from 'zod';
import type { InferenceSession } from 'onnxruntime-node';

/** Execution providers the onnxruntime-node binding can be asked for (which ones work depends on the build). */
export const EXECUTION_PROVIDER_NAMES = [
  'cpu',
  'cuda',
  'tensorrt',
  'dml',
  'coreml',
  'webgpu',
  'qnn',
] as const;
export type ExecutionProviderName = (typeof EXECUTION_PROVIDER_NAMES)[number];

export const TensorRtOptionsSchema = z.object({
  engineCacheEnable: z.boolean().optional(),
  engineCachePath: z.string().min(1).optional(),
  maxWorkspaceSize: z.number().int().positive().optional(),
  fp16Enable: z.boolean().optional(),
  int8Enable: z.boolean().optional(),
});
export type TensorRtOptions = z.infer<typeof TensorRtOptionsSchema>;

export const ExecutionProviderConfigSchema = z.object({
  name: z.enum(EXECUTION_PROVIDER_NAMES),
  deviceId: z.number().int().min(0).optional(),
  /** TensorRT only. See docs/config.md: onnxruntime-node 1.30 passes only `deviceId` to TensorRT. */
  tensorrt: TensorRtOptionsSchema.optional(),
});
export type ExecutionProviderConfig = z.infer<typeof ExecutionProviderConfigSchema>;

/** How every ONNX Runtime session the agent creates is set up. */
export const OrtSessionConfigSchema = z.object({
  /** Threads one inference may use inside an operator; 0 = ONNX Runtime's default (one per core). */
  intraOpNumThreads: z.number().int().min(0).max(1024),
  /** Threads for running independent operators in parallel; 0 = ONNX Runtime's default. */
  interOpNumThreads: z.number().int().min(0).max(1024),
  graphOptimizationLevel: z.enum(['disabled', 'basic', 'extended', 'layout', 'all']),
  /** In order of preference; ONNX Runtime falls back along the list, node by node. */
  executionProviders: z.array(ExecutionProviderConfigSchema).min(1),
  /**
   * The least severe of ONNX Runtime's own log lines it writes (to stderr, not through the agent's logger):
   * 0 verbose, 1 info, 2 warning (ONNX Runtime's default), 3 error, 4 fatal.
   */
  logSeverityLevel: z.number().int().min(0).max(4).optional(),
});
export type OrtSessionConfig = z.infer<typeof OrtSessionConfigSchema>;

export const DEFAULT_ORT_SESSION_CONFIG: OrtSessionConfig = {
  intraOpNumThreads: 1,
  interOpNumThreads: 1,
  graphOptimizationLevel: 'all',
  executionProviders: [{ name: 'cpu' }],
};

/** Our session config as onnxruntime-node's SessionOptions (a plain, structured-cloneable object). */
export function toOrtSessionOptions(config: OrtSessionConfig): InferenceSession.SessionOptions {
  return {
    ...(config.intraOpNumThreads > 0 && { intraOpNumThreads: config.intraOpNumThreads }),
    ...(config.interOpNumThreads > 0 && { interOpNumThreads: config.interOpNumThreads }),
    graphOptimizationLevel: config.graphOptimizationLevel,
    ...(config.logSeverityLevel !== undefined && {
      logSeverityLevel: config.logSeverityLevel as 0 | 1 | 2 | 3 | 4,
    }),
    executionProviders: config.executionProviders.map((ep) =>
      ep.name === 'cpu'
        ? 'cpu'
        : { name: ep.name, ...(ep.deviceId !== undefined && { deviceId: ep.deviceId }), ...ep.tensorrt },
    ),
  };
}
