import { defineConfig } from 'vitest/config';

// Tests that load ONNX Runtime in their own process leave no telemetry behind either (the agent turns it off for
// itself: packages/agent/src/inference/ort-telemetry.ts). Set here, before any test process starts.
process.env.ORT_DISABLE_TELEMETRY ||= '1';

export default defineConfig({
  test: {
    include: ['packages/*/test/**/*.test.ts', 'deploy/test/**/*.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // Two cores: real processes, sockets and ONNX sessions; keep parallelism modest.
    maxWorkers: 2,
  },
});
