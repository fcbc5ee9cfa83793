// Splits a V8 CPU profile of the agent's main thread (bench/agent-profile.mjs --cpu-prof) into the parts of a
// request: each sample counts for the innermost frame, leaf to root, that belongs to a known part (so grpc-js
// calling our encoder counts as protobuf, our handler calling grpc-js's respond as grpc-js). Samples under
// start-up (module loading, model loading) are left out. Prints each part's share of the busy time, and with a
// CPU time per request (agent-profile's unprofiled number) its µs: the profiler inflates JavaScript more than
// native code, so shares are approximate.
//
//   node bench/cpu-profile-parts.mjs <file.cpuprofile> [cpu µs per request]
import { readFileSync } from 'node:fs';

if (!process.argv[2]) {
  console.error('usage: node bench/cpu-profile-parts.mjs <file.cpuprofile> [cpu µs per request]');
  process.exit(2);
}
const profile = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const cpuPerRequest = Number(process.argv[3] ?? 0);
const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const parent = new Map();
for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
const rules = [
  [
    'startup',
    (u, f) => /cjs\/loader|esm\/|startAgentDaemon|preloadModels|loadModel|buildRestApp/.test(u + ' ' + f),
  ],
  ['ORT run (native, inline)', (u) => /onnxruntime-(node|common)/.test(u)],
  [
    'inline runner: feeds, outputs',
    (u) => /inference\/(inline-runner|ort-tensors|tensor-transfer|tensor-bytes)\.js/.test(u),
  ],
  ['pool: scheduling, budget', (u) => /inference\/(pool|scheduling|inline-budget)\.js/.test(u)],
  ['metrics (prom-client)', (u) => /prom-client|metrics\/agent-metrics/.test(u)],
  ['protobuf decode/encode', (u) => /protobufjs|proto\/agent-codec|proto\/agent-service/.test(u)],
  ['registry: checks, outputs', (u) => /models\//.test(u)],
  [
    'gRPC handler, wire tensors',
    (u) => /grpc\/(agent-service|wire-tensors|socket-peers|grpc-errors)\.js/.test(u),
  ],
  ['REST door: decode, answer', (u) => /agent\/dist\/rest\//.test(u)],
  ['pino', (u) => /pino/.test(u)],
  ['grpc-js', (u) => /@grpc\/grpc-js/.test(u)],
  ['node http2/streams/net', (u) => /^node:|internal\//.test(u) && !/timers/.test(u)],
  [
    'timers/immediates/microtasks',
    (u, f) => /timers/.test(u) || /runMicrotasks|processTicksAndRejections/.test(f),
  ],
];
const totals = new Map();
let busy = 0,
  startup = 0;
profile.samples.forEach((id, i) => {
  const us = profile.timeDeltas[i + 1] ?? 0;
  const leaf = byId.get(id);
  if (leaf.callFrame.functionName === '(idle)') return;
  // start-up first: any frame of it anywhere in the stack
  let isStartup = false;
  for (let cur = id; cur !== undefined; cur = parent.get(cur)) {
    const f = byId.get(cur).callFrame;
    if (rules[0][1](f.url, f.functionName)) {
      isStartup = true;
      break;
    }
  }
  if (isStartup) {
    startup += us;
    return;
  }
  busy += us;
  let cat;
  if (['(garbage collector)', '(program)'].includes(leaf.callFrame.functionName))
    cat = leaf.callFrame.functionName;
  // The inline runner calls the native session itself (the call shows as the calling frame's self time): that
  // time is ONNX Runtime's.
  else if (
    ['run', '#runCopying'].includes(leaf.callFrame.functionName) &&
    /inference\/inline-runner\.js/.test(leaf.callFrame.url)
  )
    cat = 'ORT run (native, inline)';
  for (let cur = id; cur !== undefined && !cat; cur = parent.get(cur)) {
    const f = byId.get(cur).callFrame;
    for (const [name, test] of rules.slice(1))
      if (test(f.url, f.functionName)) {
        cat = name;
        break;
      }
  }
  cat ??= 'other';
  totals.set(cat, (totals.get(cat) ?? 0) + us);
});
console.log(`busy outside start-up ${(busy / 1e6).toFixed(2)} s (start-up ${(startup / 1e6).toFixed(2)} s)`);
for (const [k, v] of [...totals].sort((a, b) => b[1] - a[1])) {
  const share = v / busy;
  console.log(
    `| ${k} | ${(100 * share).toFixed(1)} % |${cpuPerRequest ? ` ${(share * cpuPerRequest).toFixed(0)} µs |` : ''}`,
  );
}
