/**
 * ONNX Runtime's own telemetry, off by default.
 *
 * onnxruntime-node 1.30's native library (its Linux and macOS builds) carries Microsoft's 1DS telemetry client. Left
 * on, every process that loads it records each session's creation (the model's producer name and opsets), its run
 * counts and run times, and the process's CPU time, memory and executable path, in a SQLite queue meant for upload
 * (`$XDG_CACHE_HOME/Microsoft/DeveloperTools/.onnxruntime/onnxruntime.db`, next to a device ID it keeps there),
 * and writes `$HOME/.ses` and an empty `$TMPDIR/mat-debug-<pid>.log` per process. An agent on a customer's
 * device must not keep a record of its models for a third party, nor litter its disk. The library reads
 * `ORT_DISABLE_TELEMETRY` when it loads, so this runs before the first import of onnxruntime-node in the process:
 * first thing in the agent's entry point, and again in InferencePool.start for in-process users of the pool (before
 * any worker starts or the inline path loads ONNX Runtime); worker threads read the same process environment. An
 * operator who sets the variable to a value (e.g. `0`) keeps their choice; an empty one counts as unset.
 */
export const ORT_TELEMETRY_VARIABLE = 'ORT_DISABLE_TELEMETRY';

/** Turns ONNX Runtime's telemetry off in `env` (the process's by default) unless it was set to a value. */
export function disableOnnxRuntimeTelemetry(env: NodeJS.ProcessEnv = process.env): void {
  if (!env[ORT_TELEMETRY_VARIABLE]) env[ORT_TELEMETRY_VARIABLE] = '1';
}
