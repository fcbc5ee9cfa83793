// Capture stalls: how responsive the agent's event loop stays while large captures (16 and 64 MiB) go through it.
// The real agent (dist/main.js: gRPC and REST doors, the local database's durable queue with payload files, a
// Disk destination) serves a tiny REST request (GET /v2/health/live), one at a time from this process, while a
// second process sends CaptureData back to back (one in flight) with one tensor of 16 or 64 MiB; the same probe
// with no capture in the same run is the baseline. Reported: the probe's p50, p99 and max latency and their
// ratio to the baseline, and the agent's own event-loop delay (prom-client's nodejs_eventloop_lag_p99/max_seconds
// on /metrics, reset by each scrape, so read at each phase's start and end). Phases run round after round,
// interleaved (the machine is shared: a burst of load hits neighbours alike); a phase's figures pool its rounds.
//
//   npm run build --silent && node bench/capture-stalls.bench.mjs [--seconds 3] [--rounds 3]
//   npm run bench -- capture-stalls
//
// Imports the BUILT packages. Writes up to a few GiB of captures under the system's temporary folder (removed
// after each phase).
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createModelPackage, writeTestModel } from '../packages/core/dist/index.js';

const arg = (name, fallback) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
};
const SECONDS = arg('--seconds', 3);
const ROUNDS = arg('--rounds', 3);
const MiB = 1024 * 1024;
// -m: room for a 64 MiB tensor and the message around it; the capture cap is then max(-m, 64 MiB).
const MAX_MESSAGE_BYTES = 80 * MiB;

const work = mkdtempSync(join(tmpdir(), 'edgefleet-capture-stalls-'));
const agentMain = new URL('../packages/agent/dist/main.js', import.meta.url).pathname;
const grpcSocket = join(work, 'agent.sock');
const restSocket = join(work, 'agent.rest.sock');
const captureFolder = join(work, 'capture');

const httpAgent = new Agent({ keepAlive: true, maxSockets: 1 });
/** The agent and the running sender, if any: killed in the finally below, however the run ends. */
let agent;
let liveSender;
let results;
try {
  const modelPath = await writeTestModel('tiny', join(work, 'src-tiny'));
  const pkg = (
    await createModelPackage({ modelPath, name: 'tiny', version: '1.0', outDir: join(work, 'pkg-tiny') })
  ).dir;
  const config = join(work, 'agent.json');
  writeFileSync(
    config,
    JSON.stringify({
      sagemaker_edge_core_device_name: 'bench-1',
      sagemaker_edge_core_device_fleet_name: 'bench',
      edgefleet_inference_workers: 1,
      edgefleet_preload_models: [{ url: pkg, name: 'tiny' }],
      edgefleet_rest_socket_path: restSocket,
      // Its presence enables the local database: captures are durable, large ones kept as payload files.
      sagemaker_edge_db_module_path: '/opt/sagemaker/lib/libdb.so',
      sagemaker_edge_local_data_root_path: join(work, 'data'),
      sagemaker_edge_core_capture_data_destination: 'Disk',
      sagemaker_edge_core_capture_data_disk_path: captureFolder,
      sagemaker_edge_core_capture_data_batch_size: '1',
      edgefleet_capture_disk_quota_bytes: '1TiB',
    }),
  );

  agent = spawn(
    process.execPath,
    [agentMain, '-a', grpcSocket, '-c', config, '-m', String(MAX_MESSAGE_BYTES)],
    {
      cwd: work,
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  await new Promise((resolve, reject) => {
    let text = '';
    agent.stdout.on('data', (chunk) => {
      text += chunk;
      if (text.includes('"event":"listening"')) resolve();
    });
    agent.once('exit', (code) => reject(new Error(`the agent exited (${code}) before listening`)));
  });

  /** GET `path` on the agent's REST socket: resolves with the body once it is all in. */
  function get(path) {
    return new Promise((resolve, reject) => {
      const req = request({ socketPath: restSocket, path, agent: httpAgent }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (chunk) => (body += chunk));
        res.on('end', () =>
          res.statusCode === 200 ? resolve(body) : reject(new Error(`${path}: ${res.statusCode}`)),
        );
      });
      req.on('error', reject);
      req.end();
    });
  }

  /** The agent's event-loop delay since the last scrape (prom-client resets its histogram on each). */
  async function loopLag() {
    const text = await get('/metrics');
    const value = (name) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1] ?? NaN) * 1000;
    return { p99: value('nodejs_eventloop_lag_p99_seconds'), max: value('nodejs_eventloop_lag_max_seconds') };
  }

  /** Probes GET /v2/health/live, one at a time, until `done()`; returns the latencies in ms. */
  async function probe(done) {
    const latencies = [];
    while (!done()) {
      const began = performance.now();
      await get('/v2/health/live');
      latencies.push(performance.now() - began);
    }
    return latencies;
  }

  // The sender: CaptureData back to back, one in flight, for `seconds`; then waits for its last capture to be
  // written, so that no write spills into the next phase. Its own event loop (encoding 64 MiB messages) is not
  // this process's, which would delay the probe by itself.
  const SENDER = `
    import * as grpc from '${import.meta.resolve('@grpc/grpc-js')}';
    import { AGENT_SERVICE_NAME, AgentCaptureDataStatus, AgentDataType, createAgentServiceDefinition } from '${new URL('../packages/core/dist/index.js', import.meta.url).href}';
    const [socket, bytes, seconds] = process.argv.slice(2);
    const Client = grpc.makeGenericClientConstructor(createAgentServiceDefinition(), AGENT_SERVICE_NAME);
    const client = new Client('unix://' + socket, grpc.credentials.createInsecure(), {
      'grpc.max_send_message_length': ${MAX_MESSAGE_BYTES},
    });
    const call = (method, request) =>
      new Promise((resolve, reject) => client[method](request, (error, response) => (error ? reject(error) : resolve(response))));
    const data = Buffer.alloc(Number(bytes), 7);
    const tensor = { tensorMetadata: { name: Buffer.from('image'), dataType: AgentDataType.FLOAT32, shape: [1, Number(bytes) / 4] }, byteData: data };
    const until = performance.now() + Number(seconds) * 1000;
    let sent = 0, refused = 0, last;
    process.stdout.write('ready\\n');
    while (performance.now() < until) {
      const captureId = 'c-' + process.pid + '-' + sent;
      try {
        await call('CaptureData', { modelHandle: 'tiny', captureId, inputTensors: [tensor] });
        sent++;
        last = captureId;
      } catch (error) {
        if (error.code !== grpc.status.RESOURCE_EXHAUSTED) throw error;
        refused++;
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
    }
    while (last !== undefined && (await call('GetCaptureDataStatus', { captureId: last })).status === AgentCaptureDataStatus.IN_PROGRESS)
      await new Promise((resolve) => setTimeout(resolve, 20));
    process.stdout.write(JSON.stringify({ sent, refused }) + '\\n');
    client.close();
  `;
  const senderScript = join(work, 'sender.mjs');
  writeFileSync(senderScript, SENDER);

  async function capturePhase(bytes) {
    const sender = spawn(process.execPath, [senderScript, grpcSocket, String(bytes), String(SECONDS)], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    liveSender = sender;
    sender.once('exit', () => {
      if (liveSender === sender) liveSender = undefined;
    });
    let out = '';
    await new Promise((resolve, reject) => {
      sender.stdout.on('data', (chunk) => {
        out += chunk;
        if (out.includes('ready')) resolve();
      });
      sender.once('exit', (code) => reject(new Error(`the sender exited (${code}) before sending`)));
    });
    let running = true;
    const exited = new Promise((resolve) => sender.once('exit', resolve)).then((code) => {
      running = false;
      if (code !== 0) throw new Error(`the sender exited with ${code}`);
    });
    // Awaited below, after the probes: handled now, so that a failing sender ends the run through the finally
    // (an unhandled rejection would end the process without it).
    exited.catch(() => {});
    const latencies = await probe(() => !running);
    await exited;
    const { sent, refused } = JSON.parse(out.trim().split('\n').pop());
    // What was written is not needed: remove it, so a long run does not fill the disk.
    rmSync(join(captureFolder, 'sme-capture'), { recursive: true, force: true });
    return { latencies, sent, refused };
  }

  async function idlePhase() {
    const until = performance.now() + SECONDS * 1000;
    return { latencies: await probe(() => performance.now() >= until), sent: 0, refused: 0 };
  }

  const phases = {
    'no capture': idlePhase,
    '16 MiB captures': () => capturePhase(16 * MiB),
    '64 MiB captures': () => capturePhase(64 * MiB),
  };
  results = Object.fromEntries(
    Object.keys(phases).map((name) => [name, { latencies: [], sent: 0, refused: 0, lagP99: 0, lagMax: 0 }]),
  );
  await probe(
    (
      (n) => () =>
        n-- <= 0
    )(200),
  ); // warm-up
  for (let round = 0; round < ROUNDS; round++) {
    for (const [name, run] of Object.entries(phases)) {
      await loopLag(); // resets the agent's histogram
      const { latencies, sent, refused } = await run();
      const lag = await loopLag();
      const into = results[name];
      into.latencies.push(...latencies);
      into.sent += sent;
      into.refused += refused;
      into.lagP99 = Math.max(into.lagP99, lag.p99);
      into.lagMax = Math.max(into.lagMax, lag.max);
    }
  }
} finally {
  // A failed phase (a sender exit, a refused probe) must not leave the agent running or GiB of captures behind.
  liveSender?.kill('SIGKILL');
  if (agent !== undefined && agent.exitCode === null && agent.signalCode === null) {
    const exited = new Promise((resolve) => agent.once('exit', resolve));
    agent.kill('SIGTERM');
    const stubborn = setTimeout(() => agent.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(stubborn);
  }
  httpAgent.destroy();
  rmSync(work, { recursive: true, force: true });
}

const quantile = (sorted, q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
const fmt = (ms) => (ms >= 10 ? ms.toFixed(0) : ms.toFixed(2));
const summary = Object.fromEntries(
  Object.entries(results).map(([name, r]) => {
    const sorted = [...r.latencies].sort((a, b) => a - b);
    return [name, { ...r, p50: quantile(sorted, 0.5), p99: quantile(sorted, 0.99), max: sorted.at(-1) }];
  }),
);
const base = summary['no capture'];
console.log(
  `\nGET /v2/health/live over the REST Unix socket, one at a time, while CaptureData sends one tensor back to back (one in flight; database queue, payload files, Disk, batch 1), ${ROUNDS} rounds of ${SECONDS} s per phase\n`,
);
console.log(
  '| phase | captures (buffer-full retries) | probes | p50 ms | p99 ms | max ms | p50 / p99 / max vs no capture | agent event-loop delay p99 / max ms |',
);
console.log('|---|---|---|---|---|---|---|---|');
for (const [name, s] of Object.entries(summary)) {
  const ratios =
    name === 'no capture'
      ? '—'
      : `${(s.p50 / base.p50).toFixed(1)}× / ${(s.p99 / base.p99).toFixed(1)}× / ${(s.max / base.max).toFixed(1)}×`;
  console.log(
    `| ${name} | ${name === 'no capture' ? '—' : `${s.sent} (${s.refused})`} | ${s.latencies.length} | ${fmt(s.p50)} | ${fmt(s.p99)} | ${fmt(s.max)} | ${ratios} | ${fmt(s.lagP99)} / ${fmt(s.lagMax)} |`,
  );
}
