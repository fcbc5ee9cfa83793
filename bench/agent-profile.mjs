// One request path of the agent, alone, for profiling: a real `edgefleet-agent` serving one model, one client (or
// --clients N, each on a connection of its own) in a closed loop over one door, and what the agent's event loop
// spent per request. Where agent-inference.bench.mjs compares many paths in one run, this isolates one, so that a V8 CPU profile of the agent shows that path only
// (the "before and after" profiles in docs/benchmarks.md).
//
//   npm run build && node bench/agent-profile.mjs --door rest|rest-shm|grpc|http-echo --model tiny|image-identity|silero
//     [--seconds 4] [--cpu-prof <dir>] [--agent path/to/dist/main.js] [--settings '{"edgefleet_…": …}']
//     [--metrics <regex>] [--agent-env "NAME=value …"] [--clients N] [--threads]
//
// Prints the p50 and p90 latency (over all clients' requests), requests per second, and the CPU time of the
// agent's main thread per request (Linux /proc schedstat). With --cpu-prof the agent writes its profiles into <dir> when it exits; read one with
// `node bench/cpu-profile-top.mjs <file>`. --agent runs another build (an absolute path to its main.js).
// --door http-echo runs the REST client against a bare node:http server in its own process that answers each
// POST with its body (the REST floor of agent-inference.bench.mjs), so that the agent's cost over it can be read
// in the same window. --door rest-shm sends KServe REST requests whose inputs and outputs lie in System V shared
// memory regions registered with the agent (the "REST shared memory in and out" path of agent-inference.bench.mjs;
// catalogue models only): only JSON crosses the socket, and the first call's outputs are checked against the
// model's reference. --metrics prints the agent's /metrics lines that match the regex once the run is over (e.g.
// 'runs_total|compute_duration_seconds_(sum|count)': which path the runs took, and their mean time). --threads
// also prints the CPU time per request of each of the agent's threads, by name and thread id ("main" is the event
// loop; Node names every other thread "node": the inference workers are the busy ones on a worker path, and V8's
// collector and compiler threads, libuv's pool and ONNX Runtime's threads the rest).
import { spawn } from 'node:child_process';
import { copyFile, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { Agent as HttpAgent, request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { argValue } from './support/args.mjs';
import { serveHttpEcho } from './support/http-echo.mjs';
import { restPost, restSharedMemoryCaller } from './support/kserve-rest.mjs';
import { SILERO_PATH, sileroSamples } from './support/silero.mjs';

// ONNX Runtime's telemetry off in the agents this starts, an older build (--agent) too, as the agent now does itself
// (packages/agent/src/inference/ort-telemetry.ts).
process.env.ORT_DISABLE_TELEMETRY ||= '1';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const door = argValue('--door', 'rest');
const modelName = argValue('--model', 'tiny');
const seconds = Number(argValue('--seconds', '4'));
const profileDir = argValue('--cpu-prof', undefined);
const agentMain = argValue('--agent', join(root, 'packages/agent/dist/main.js'));
const settings = JSON.parse(argValue('--settings', '{}'));
const metricsPattern = argValue('--metrics', undefined);
// Closed-loop clients, each with a connection of its own (the 8-client rows of agent-inference.bench.mjs).
const clients = Number(argValue('--clients', '1'));
const perThread = process.argv.includes('--threads');
// Environment variables for the agent alone, e.g. --agent-env GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4194304
const agentEnv = Object.fromEntries(
  (argValue('--agent-env', '') || '')
    .split(' ')
    .filter(Boolean)
    .map((pair) => [pair.slice(0, pair.indexOf('=')), pair.slice(pair.indexOf('=') + 1)]),
);
const WARMUP_REQUESTS = 1500;

const echoServerSocket = argValue('--http-echo-server', undefined);
if (echoServerSocket !== undefined) {
  // The child process of --door http-echo.
  serveHttpEcho(echoServerSocket, '{"event":"listening"}');
  await new Promise(() => {}); // serves until SIGTERM
}

if (
  !['rest', 'rest-shm', 'grpc', 'http-echo'].includes(door) ||
  !['tiny', 'image-identity', 'silero'].includes(modelName) ||
  (door === 'rest-shm' && modelName === 'silero') ||
  !(Number.isInteger(clients) && clients >= 1) ||
  // Each rest-shm client registers two regions; the agent holds at most 64 per user.
  (door === 'rest-shm' && clients > 32)
) {
  console.error(
    'usage: node bench/agent-profile.mjs --door rest|rest-shm|grpc|http-echo --model tiny|image-identity|silero ' +
      '[--clients N] (rest-shm: tiny or image-identity, N ≤ 32; N a whole number ≥ 1)',
  );
  process.exit(2);
}

const core = await import(join(root, 'packages/core/dist/index.js'));
const dir = await mkdtemp(join(tmpdir(), 'ef-profile-'));

/** The model's package and one request's tensors. */
async function prepare() {
  if (modelName === 'silero') {
    const modelPath = join(dir, 'silero_vad.onnx');
    await copyFile(SILERO_PATH, modelPath);
    const samples = sileroSamples();
    const tensors = [
      { name: 'input', dataType: 'FLOAT32', shape: [1, 512], data: samples },
      { name: 'sr', dataType: 'INT64', shape: [], data: BigInt64Array.from([16000n]) },
      { name: 'h', dataType: 'FLOAT32', shape: [2, 1, 64], data: new Float32Array(128) },
      { name: 'c', dataType: 'FLOAT32', shape: [2, 1, 64], data: new Float32Array(128) },
    ];
    return { modelPath, tensors };
  }
  const modelPath = await core.writeTestModel(modelName, join(dir, 'models'));
  const model = core.TEST_MODELS[modelName];
  const inputs = model.sampleInputs();
  const tensors = model.inputs.map((i) => ({ name: i.name, dataType: i.dataType, ...inputs[i.name] }));
  const reference = model.reference(inputs);
  // What restSharedMemoryCaller needs: the tensors' bytes, the outputs' sizes, and a check of the first answer.
  const shmModel = {
    key: 'm',
    tensors: tensors.map((t) => ({
      ...t,
      kserve: core.DATA_TYPES[t.dataType].kserve,
      bytes: bytesOf(t.data),
    })),
    outputs: Object.entries(reference).map(([name, t]) => ({ name, byteLength: t.data.byteLength })),
    check: (outputs) => {
      Object.values(reference).forEach((t, i) => {
        if (Buffer.compare(bytesOf(t.data), outputs[i]) !== 0)
          throw new Error(`output ${i} in shared memory differs from the model's reference`);
      });
    },
  };
  return { modelPath, tensors, shmModel };
}

function startAgent(packageDir) {
  const socketPath = join(dir, 'agent.sock');
  const restSocketPath = join(dir, 'rest.sock');
  const configPath = join(dir, 'agent.json');
  return writeFile(
    configPath,
    JSON.stringify({
      edgefleet_inference_workers: 2,
      edgefleet_instances_per_model: 2,
      edgefleet_ort_intra_op_threads: 1,
      edgefleet_ort_inter_op_threads: 1,
      edgefleet_rest_socket_path: restSocketPath,
      edgefleet_preload_models: [{ url: packageDir, name: 'm' }],
      ...settings,
    }),
  ).then(() => {
    const profile = profileDir
      ? ['--cpu-prof', '--cpu-prof-interval', '100', '--cpu-prof-dir', profileDir]
      : [];
    const command =
      door === 'http-echo'
        ? [fileURLToPath(import.meta.url), '--http-echo-server', restSocketPath]
        : [agentMain, '-a', socketPath, '-c', configPath];
    const child = spawn(process.execPath, [...profile, ...command], {
      cwd: dir,
      env: { ...process.env, ...agentEnv },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    return new Promise((resolve, reject) => {
      let log = '';
      child.stdout.setEncoding('utf8').on('data', (chunk) => {
        log += chunk;
        if (log.includes('"event":"listening"')) {
          child.stdout.resume();
          resolve({ child, socketPath, restSocketPath });
        }
      });
      child.once('exit', (code) => reject(new Error(`the agent exited (${code}) before listening`)));
    });
  });
}

function restCall(socketPath, tensors) {
  const agent = new HttpAgent({ keepAlive: true, maxSockets: 1 });
  const header = Buffer.from(
    JSON.stringify({
      inputs: tensors.map((t) => ({
        name: t.name,
        shape: t.shape,
        datatype: core.DATA_TYPES[t.dataType].kserve,
        parameters: { binary_data_size: t.data.byteLength },
      })),
      parameters: { binary_data_output: true },
    }),
  );
  const body = Buffer.concat([header, ...tensors.map((t) => bytesOf(t.data))]);
  const headers = {
    'content-type': 'application/octet-stream',
    'inference-header-content-length': header.length,
  };
  return () => restPost(agent, socketPath, '/v2/models/m/infer', body, headers);
}

function grpcCall(socketPath, tensors) {
  const Client = grpc.makeGenericClientConstructor(
    core.createAgentServiceDefinition(),
    core.AGENT_SERVICE_NAME,
  );
  const client = new Client(`unix://${socketPath}`, grpc.credentials.createInsecure(), {
    'grpc.use_local_subchannel_pool': 1,
    'grpc.max_receive_message_length': 64 << 20,
    'grpc-node.flow_control_window': 16 << 20,
  });
  const request = {
    handle: 'm',
    tensors: tensors.map((t) => ({
      tensorMetadata: {
        name: Buffer.from(t.name),
        dataType: core.DATA_TYPES[t.dataType].wire,
        shape: t.shape,
      },
      byteData: bytesOf(t.data),
    })),
  };
  return () =>
    new Promise((resolve, reject) => client.Predict(request, (error) => (error ? reject(error) : resolve())));
}

/** The rest-shm door's call: its segments are removed by `cleanups` (after the agent has exited). */
async function restShmCall(socketPath, model, cleanups) {
  const { loadSysvShmAddon } = await import(join(root, 'packages/agent/dist/shm/index.js'));
  const { call } = await restSharedMemoryCaller(loadSysvShmAddon(), socketPath, model, cleanups, true);
  return call;
}

/** The agent's /metrics lines that match `pattern` (comments left out), read over its REST socket. */
function metricsLines(restSocketPath, pattern) {
  return new Promise((resolve, reject) => {
    httpRequest({ socketPath: restSocketPath, path: '/metrics' }, (res) => {
      let text = '';
      res.setEncoding('utf8').on('data', (chunk) => (text += chunk));
      res.on('end', () =>
        resolve(text.split('\n').filter((line) => !line.startsWith('#') && new RegExp(pattern).test(line))),
      );
    })
      .on('error', reject)
      .end();
  });
}

const bytesOf = (typed) => Buffer.from(typed.buffer, typed.byteOffset, typed.byteLength);

/** The agent's minor page faults so far, all threads (field 10 of /proc/<pid>/stat). */
async function minorFaults(pid) {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[7]);
}

/** The agent's main thread's CPU time so far, in microseconds. */
async function mainThreadMicros(pid) {
  const schedstat = await readFile(`/proc/${pid}/task/${pid}/schedstat`, 'utf8');
  return Number(schedstat.split(' ')[0]) / 1000;
}

/** Every thread of the process: its name ("main" for the main thread, else its name and id) and CPU time so far, in µs. */
async function threadMicros(pid) {
  const threads = new Map();
  for (const tid of await readdir(`/proc/${pid}/task`)) {
    try {
      const [comm, schedstat] = await Promise.all([
        readFile(`/proc/${pid}/task/${tid}/comm`, 'utf8'),
        readFile(`/proc/${pid}/task/${tid}/schedstat`, 'utf8'),
      ]);
      const name = tid === String(pid) ? 'main' : `${comm.trim()} ${tid}`;
      threads.set(tid, { name, micros: Number(schedstat.split(' ')[0]) / 1000 });
    } catch {
      // the thread ended between the listing and the reads
    }
  }
  return threads;
}

const { modelPath, tensors, shmModel } = await prepare();
const { dir: packageDir } = await core.createModelPackage({
  modelPath,
  name: 'm',
  version: '1.0',
  outDir: join(dir, 'package'),
});
const { child, socketPath, restSocketPath } = await startAgent(packageDir);
const cleanups = [];
try {
  // One call per client: restCall and restShmCall make an HTTP agent of their own (one socket), and grpcCall a
  // client with its own subchannel (one connection).
  const calls = [];
  for (let i = 0; i < clients; i++)
    calls.push(
      door === 'grpc'
        ? grpcCall(socketPath, tensors)
        : door === 'rest-shm'
          ? await restShmCall(restSocketPath, shmModel, cleanups)
          : restCall(restSocketPath, tensors),
    );
  await Promise.all(
    calls.map(async (call) => {
      for (let i = 0; i < Math.ceil(WARMUP_REQUESTS / clients); i++) await call();
    }),
  );
  const latencies = [];
  const cpuBefore = await mainThreadMicros(child.pid);
  const faultsBefore = await minorFaults(child.pid);
  const threadsBefore = perThread ? await threadMicros(child.pid) : undefined;
  const began = performance.now();
  const end = began + seconds * 1000;
  await Promise.all(
    calls.map(async (call) => {
      while (performance.now() < end) {
        const sent = performance.now();
        await call();
        latencies.push(performance.now() - sent);
      }
    }),
  );
  const elapsedSeconds = (performance.now() - began) / 1000;
  const cpu = (await mainThreadMicros(child.pid)) - cpuBefore;
  const faults = (await minorFaults(child.pid)) - faultsBefore;
  const threadsAfter = perThread ? await threadMicros(child.pid) : undefined;
  latencies.sort((a, b) => a - b);
  const at = (q) => `${(latencies[Math.floor(q * latencies.length)] * 1000).toFixed(0)} µs`;
  console.log(
    `${door} ${modelName}, ${clients} client${clients === 1 ? '' : 's'}: ${latencies.length} requests, ` +
      `p50 ${at(0.5)}, p90 ${at(0.9)}, ${(latencies.length / elapsedSeconds).toFixed(0)} req/s, ` +
      `${door === 'http-echo' ? 'echo server' : 'agent'} main thread ${(cpu / latencies.length).toFixed(0)} µs CPU per request, ${(faults / latencies.length).toFixed(1)} page faults per request`,
  );
  if (threadsAfter !== undefined) {
    const byThread = new Map();
    for (const [tid, { name, micros }] of threadsAfter) {
      const spent = micros - (threadsBefore.get(tid)?.micros ?? 0);
      byThread.set(name, (byThread.get(name) ?? 0) + spent);
    }
    for (const [name, micros] of [...byThread].sort((a, b) => b[1] - a[1]))
      if (micros / latencies.length >= 0.5)
        console.log(`  thread ${name}: ${(micros / latencies.length).toFixed(1)} µs CPU per request`);
  }
  if (metricsPattern !== undefined && door !== 'http-echo')
    for (const line of await metricsLines(restSocketPath, metricsPattern)) console.log(`  ${line}`);
} finally {
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  await exited;
  for (const cleanup of cleanups) cleanup();
  await rm(dir, { recursive: true, force: true });
}
process.exit(0);
