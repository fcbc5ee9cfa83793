import { defineConfig } from 'vitest/config';

// Tests that load ONNX Runtime in their own process leave no telemetry behind either (the agent turns it off for
// itself: packages/agent/src/inference/ort-telemetry.ts). Set here, before any test process starts.
process.env.ORT_DISABLE_TELEMETRY ||= '1';

export default defineConfig({
  test: {
    include: ['packages/*/test/**/*.test.ts', 'deploy/test/**/*.test.ts'],
    testTimeout: 30_000,
    // expect.poll without a timeout waits on a state that must come (a socket seen closed, a page that shows a
    // fetched value): vitest's default bound, 1 s, is one event-loop stall of a loaded 2-core runner. A bound
    // below testTimeout, so that a poll that fails says what it waited for. (vi.waitFor has no such setting:
    // each call names its bound.)
    expect: { poll: { timeout: 20_000 } },
    hookTimeout: 60_000,
    // Two cores: real processes, sockets and ONNX sessions; keep parallelism modest.
    maxWorkers: 2,
  },
});
