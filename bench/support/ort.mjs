// ONNX Runtime as the benchmarks use it: loaded with its telemetry off (as the agent has it; the library reads the
// variable when it loads, so this module loads it), the agent's own session options, the native session as the
// agent's inline path calls it (and, from silero.mjs, the Silero VAD model and input every benchmark uses).
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

process.env.ORT_DISABLE_TELEMETRY ||= '1';
export const ort = await import('onnxruntime-node');
const { initOrt, binding } = await import('onnxruntime-node/dist/binding.js');

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');

/** Session options exactly as the agent's workers create them (the agent's own conversion, from its build). */
export async function agentSessionOptions() {
  const { DEFAULT_ORT_SESSION_CONFIG, toOrtSessionOptions } = await import(
    join(root, 'packages/agent/dist/inference/index.js')
  );
  return toOrtSessionOptions({ ...DEFAULT_ORT_SESSION_CONFIG, intraOpNumThreads: 1, interOpNumThreads: 1 });
}

/** The model's native session (onnxruntime-node's binding), run synchronously as the agent's inline runner does. */
export function nativeSession(modelPath, options) {
  initOrt();
  const session = new binding.InferenceSession();
  session.loadModel(modelPath, options);
  const fetches = Object.fromEntries(session.outputMetadata.map((output) => [output.name, null]));
  return { run: (feeds) => session.run(feeds, fetches, {}) };
}

export { SILERO_PATH, sileroSamples } from './silero.mjs';
