/**
 * ONNX Runtime's own telemetry, off by default.
 *
 * onnxruntime-node 1.30's Linux library carries Microsoft's 1DS telemetry client. Left on, every process that
 * loads it records each session's creation (the model's producer name and opsets), its run counts and run times,
 * and the process's CPU time, memory and executable path, in a SQLite queue meant for upload
 * (`$XDG_CACHE_HOME/Microsoft/DeveloperTools/.onnxruntime/onnxruntime.db`, next to a device ID it keeps there),
 * and writes `$HOME/.ses` and an empty `$TMPDIR/mat-debug-<pid>.log` per process. An agent on a customer's
 * device must not keep a record of its models for a third party, nor litter its disk. The library reads
 * `ORT_DISABLE_TELEMETRY` when it loads, so this runs before the first import of onnxruntime-node in the process
 * (InferencePool.start, before any worker starts or the inline path loads ONNX Runtime); worker threads read the
 * same process environment. An operator who sets the variable (e.g. `0`) keeps their choice.
 */
export const ORT_TELEMETRY_VARIABLE = 'ORT_DISABLE_TELEMETRY';

/** Turns ONNX Runtime's telemetry off in `env` (the process's by default) unless it was set explicitly. */
export function disableOnnxRuntimeTelemetry(env: NodeJS.ProcessEnv = process.env): void {
  env[ORT_TELEMETRY_VARIABLE] ??= '1';
}
