// What one ONNX Runtime run costs depending on what the thread did just before it: the same session and inputs
// (the agent's session options), timed around the native session's synchronous run only (as the agent's inline
// path and the benchmark's serving floors call it), in a hot loop and after each of
//   - a 200 µs or 1 ms block (the thread sleeps, as a server's does between a lone client's requests),
//   - a sweep over 16 MiB of other memory (the caches filled with something else, as by a request's trip through
//     the kernel, Node's HTTP or HTTP/2 stack and V8),
//   - both.
// This is why the agent's runs take longer than the in-process baseline's hot loop whatever the front door does,
// and why the benchmark's goal table measures each goal against a serving floor (agent-inference.bench.mjs).
//
//   npm run build && node bench/run-in-context.mjs [--runs 1500]
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { argValue } from './support/args.mjs';
// ONNX Runtime with its telemetry off, as the agent has it.
import { SILERO_PATH, agentSessionOptions, nativeSession, ort, sileroSamples } from './support/ort.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const core = await import(join(root, 'packages/core/dist/index.js'));
const RUNS = Number(argValue('--runs', '1500'));
const options = await agentSessionOptions();

const otherMemory = new Uint8Array(16 << 20);
const sleepCell = new Int32Array(new SharedArrayBuffer(4));
const sweep = () => {
  for (let i = 0; i < otherMemory.length; i += 64) otherMemory[i]++;
};
const sleep = (ms) => Atomics.wait(sleepCell, 0, 0, ms);
const before = {
  'hot loop': () => {},
  'after a 200 µs sleep': () => sleep(0.2),
  'after a 1 ms sleep': () => sleep(1),
  'after 16 MiB of other memory': sweep,
  'after both': () => {
    sweep();
    sleep(0.2);
  },
};

/** The median of `RUNS` runs, each timed alone after `prepare()`; µs. */
function median(session, feeds, prepare) {
  const micros = [];
  for (let i = 0; i < RUNS; i++) {
    prepare();
    const t0 = process.hrtime.bigint();
    session.run(feeds);
    micros.push(Number(process.hrtime.bigint() - t0) / 1000);
  }
  micros.sort((a, b) => a - b);
  return micros[Math.floor(micros.length / 2)];
}

const dir = await mkdtemp(join(tmpdir(), 'edgefleet-run-in-context-'));
try {
  const models = [
    {
      name: 'tiny [1,16]',
      session: nativeSession(await core.writeTestModel('tiny', dir), options),
      feeds: { x: new ort.Tensor('float32', new Float32Array(16), [1, 16]) },
    },
    {
      name: 'Silero VAD',
      session: nativeSession(SILERO_PATH, options),
      feeds: {
        input: new ort.Tensor('float32', sileroSamples(), [1, 512]),
        sr: new ort.Tensor('int64', BigInt64Array.from([16000n]), []),
        h: new ort.Tensor('float32', new Float32Array(128), [2, 1, 64]),
        c: new ort.Tensor('float32', new Float32Array(128), [2, 1, 64]),
      },
    },
  ];
  console.log(`| model | ${Object.keys(before).join(' | ')} |`);
  console.log(
    `|---|${Object.keys(before)
      .map(() => '---|')
      .join('')}`,
  );
  for (const { name, session, feeds } of models) {
    median(session, feeds, () => {}); // warm-up
    const cells = Object.values(before).map((prepare) => `${median(session, feeds, prepare).toFixed(1)} µs`);
    console.log(`| ${name} | ${cells.join(' | ')} |`);
  }
} finally {
  await rm(dir, { recursive: true, force: true });
}
