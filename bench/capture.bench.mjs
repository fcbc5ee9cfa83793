// Capture: (1) Predict throughput with every request captured (automatic capture, sampleRate 1) against the same
// Predict with no capture, in-process through the agent's ModelRegistry and inference workers, so the difference
// is what capture adds to the Predict path (copies on the request path; records rendered and written off it);
// (2) sustained CaptureData acknowledgements and deliveries per second to Disk (memory queue, and the local
// database's durable queue) and to S3 (s3rver on localhost, a real S3 wire protocol).
//
//   npx tsc -b packages/agent && node bench/capture.bench.mjs [--seconds 2] [--rounds 4]
//
// Imports the BUILT agent. Predict candidates run interleaved, round after round (the machine is shared: a
// burst of load hits neighbours alike); a candidate's rate is its best round, the ratio the median of
// per-round ratios.
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import S3rver from 's3rver';
import {
  AGENT_SERVICE_NAME,
  AgentDataType,
  AgentEncoding,
  TEST_MODELS,
  createAgentServiceDefinition,
  createModelPackage,
  writeTestModel,
} from '../packages/core/dist/index.js';
import {
  CaptureService,
  CaptureSettingsSchema,
  DiskDestination,
  MemoryCaptureQueue,
  ObjectStoreDestination,
  S3ObjectStore,
  SqliteCaptureQueue,
} from '../packages/agent/dist/capture/index.js';
import { DEFAULT_ORT_SESSION_CONFIG, InferencePool } from '../packages/agent/dist/inference/index.js';
import { ModelRegistry } from '../packages/agent/dist/models/index.js';
import { AgentDatabase, agentDatabasePath } from '../packages/agent/dist/state/index.js';

const arg = (name, fallback) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
};
const SECONDS = arg('--seconds', 2);
const ROUNDS = arg('--rounds', 4);
const CONCURRENCY = 8;
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const work = mkdtempSync(join(tmpdir(), 'edgefleet-capture-bench-'));
let caseNo = 0;

function settings(overrides = {}) {
  const dir = join(work, `case-${++caseNo}`);
  return CaptureSettingsSchema.parse({
    destination: 'Disk',
    diskPath: join(dir, 'capture'),
    folderPrefix: 'sme-capture',
    bufferSize: 1000,
    batchSize: 100,
    pushPeriodSeconds: 1,
    base64EmbedLimit: 3072,
    periodicUpload: false,
    periodicUploadPeriodSeconds: 8,
    fleetName: 'bench',
    deviceName: 'bench-1',
    spool: { dir: join(dir, 'spool'), quotaBytes: 4 * 1024 ** 3 },
    ...overrides,
  });
}

/** Runs `call` with CONCURRENCY in flight for `seconds`; returns completed calls per second. */
async function closedLoop(call, seconds = SECONDS) {
  let done = 0;
  const until = performance.now() + seconds * 1000;
  const lane = async () => {
    while (performance.now() < until) {
      await call();
      done++;
    }
  };
  const began = performance.now();
  await Promise.all(Array.from({ length: CONCURRENCY }, lane));
  return done / ((performance.now() - began) / 1000);
}

async function modelPackage(model) {
  const src = join(work, `src-${model}`);
  const modelPath = await writeTestModel(model, src);
  return (
    await createModelPackage({ modelPath, name: model, version: '1.0', outDir: join(work, `pkg-${model}`) })
  ).dir;
}

function predictTensors(model) {
  const inputs = TEST_MODELS[model].sampleInputs();
  return TEST_MODELS[model].inputs.map((d) => {
    const t = inputs[d.name];
    return {
      name: Buffer.from(d.name),
      dataType: t.dataType,
      shape: t.shape,
      data: new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength),
    };
  });
}

// ---- 1. Predict with and without capturing every request ----

const pool = await InferencePool.start({ workers: 2, session: DEFAULT_ORT_SESSION_CONFIG });
const registry = new ModelRegistry({ pool, trust: null, cwd: work });
const predictRows = [];
const packages = {};
for (const [model, label] of [
  ['tiny', 'tiny [1,16] f32'],
  ['image-identity', 'image [1,3,224,224] f32 (588 KiB in and out)'],
]) {
  packages[model] = await modelPackage(model);
  await registry.load({ url: packages[model], name: model });
  const tensors = predictTensors(model);
  const candidates = {};
  const services = {};
  for (const variant of ['memory queue', 'database queue']) {
    const s = settings({ autoCapture: [{ model, sampleRate: 1 }] });
    const database =
      variant === 'database queue'
        ? AgentDatabase.open({ path: agentDatabasePath(join(s.diskPath, '..', 'data')) })
        : undefined;
    const queue = database
      ? new SqliteCaptureQueue({ repository: database.captureQueue })
      : new MemoryCaptureQueue();
    const service = new CaptureService({
      settings: s,
      models: registry,
      queue,
      destination: new DiskDestination(s.diskPath),
    });
    await service.start();
    services[variant] = { service, database };
  }
  let active;
  const observer = { onPredict: (name) => active?.autoCapture.onPredict?.(name) };
  registry.observe(observer);
  candidates['no capture'] = async () => {
    active = undefined;
    return closedLoop(() => registry.predict(model, tensors));
  };
  for (const variant of Object.keys(services)) {
    candidates[`every request captured, ${variant}`] = async () => {
      active = services[variant].service;
      const rate = await closedLoop(() => registry.predict(model, tensors));
      active = undefined;
      // Writing what was captured is part of the cost: the round ends when it is on disk.
      const began = performance.now();
      await services[variant].service.flush();
      return rate * (SECONDS / (SECONDS + (performance.now() - began) / 1000));
    };
  }
  await closedLoop(() => registry.predict(model, tensors), 0.3); // warm-up
  const rates = Object.fromEntries(Object.keys(candidates).map((k) => [k, []]));
  for (let round = 0; round < ROUNDS; round++) {
    for (const [name, run] of Object.entries(candidates)) rates[name].push(await run());
  }
  for (const name of Object.keys(candidates)) {
    const best = Math.max(...rates[name]);
    const ratio = median(rates[name].map((r, i) => r / rates['no capture'][i]));
    predictRows.push({ model: label, candidate: name, rate: best, ratio });
  }
  for (const { service, database } of Object.values(services)) {
    await service.close();
    database?.close();
  }
}
await registry.close();
await pool.close();

// ---- 1b. The same over gRPC: a server process (the agent's registry, capture and gRPC front door, from dist)
//      per candidate, clients in this process, so the cost is seen where applications see it ----

const SERVER = `
  import { join } from 'node:path';
  import { pino } from '${import.meta.resolve('pino')}';
  import { CaptureService, CaptureSettingsSchema, DiskDestination, MemoryCaptureQueue } from '${new URL('../packages/agent/dist/capture/index.js', import.meta.url).href}';
  import { startGrpcServer } from '${new URL('../packages/agent/dist/grpc/index.js', import.meta.url).href}';
  import { DEFAULT_ORT_SESSION_CONFIG, InferencePool } from '${new URL('../packages/agent/dist/inference/index.js', import.meta.url).href}';
  import { ModelRegistry } from '${new URL('../packages/agent/dist/models/index.js', import.meta.url).href}';
  const [pkg, model, dir, mode] = process.argv.slice(2);
  const pool = await InferencePool.start({ workers: 2, session: DEFAULT_ORT_SESSION_CONFIG });
  const registry = new ModelRegistry({ pool, trust: null, cwd: dir });
  await registry.load({ url: pkg, name: model });
  const settings = CaptureSettingsSchema.parse({
    destination: 'Disk', diskPath: join(dir, 'capture'), folderPrefix: 'sme-capture', bufferSize: 1000, batchSize: 100,
    pushPeriodSeconds: 1, base64EmbedLimit: 3072, periodicUpload: false, periodicUploadPeriodSeconds: 8,
    fleetName: 'bench', deviceName: 'bench-1', spool: { dir: join(dir, 'spool'), quotaBytes: 1e10 },
    autoCapture: mode === 'on' ? [{ model, sampleRate: 1 }] : [],
  });
  const capture = new CaptureService({ settings, models: registry, queue: new MemoryCaptureQueue(), destination: new DiskDestination(settings.diskPath) });
  await capture.start();
  registry.observe(capture.autoCapture);
  await startGrpcServer({ registry, sharedMemory: null, logger: pino({ level: 'silent' }), socketPath: join(dir, 'agent.sock'), maxMessageBytes: 64 * 1024 * 1024, capture });
  process.stdout.write('ready\\n');
`;

async function startServer(pkg, model, mode) {
  const dir = join(work, `server-${++caseNo}`);
  mkdirSync(dir, { recursive: true });
  const script = join(work, 'bench-server.mjs');
  writeFileSync(script, SERVER);
  const child = spawn(process.execPath, [script, pkg, model, dir, mode], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  await new Promise((resolve, reject) => {
    child.stdout.on('data', (chunk) => chunk.toString().includes('ready') && resolve());
    child.on('exit', (code) => reject(new Error(`bench server exited ${code}`)));
  });
  const Client = grpc.makeGenericClientConstructor(createAgentServiceDefinition(), AGENT_SERVICE_NAME);
  const clients = Array.from(
    { length: CONCURRENCY },
    () =>
      new Client(`unix://${join(dir, 'agent.sock')}`, grpc.credentials.createInsecure(), {
        'grpc.max_receive_message_length': 64 * 1024 * 1024,
        'grpc.max_send_message_length': 64 * 1024 * 1024,
      }),
  );
  return { child, clients };
}

const grpcRows = [];
for (const [model, label] of [
  ['tiny', 'tiny [1,16] f32'],
  ['image-identity', 'image [1,3,224,224] f32 (588 KiB in and out)'],
]) {
  const pkg = packages[model];
  const request = {
    handle: model,
    tensors: predictTensors(model).map((t) => ({
      tensorMetadata: { name: t.name, dataType: AgentDataType[t.dataType], shape: t.shape },
      byteData: Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength),
    })),
  };
  const servers = {
    'no capture': await startServer(pkg, model, 'off'),
    'every request captured': await startServer(pkg, model, 'on'),
  };
  const run = async (server, seconds) => {
    let done = 0;
    const until = performance.now() + seconds * 1000;
    const began = performance.now();
    await Promise.all(
      server.clients.map(async (client) => {
        while (performance.now() < until) {
          await new Promise((resolve, reject) =>
            client.Predict(request, (error) => (error ? reject(error) : resolve())),
          );
          done++;
        }
      }),
    );
    return done / ((performance.now() - began) / 1000);
  };
  for (const server of Object.values(servers)) await run(server, 0.3);
  const rates = { 'no capture': [], 'every request captured': [] };
  for (let round = 0; round < ROUNDS; round++) {
    for (const [name, server] of Object.entries(servers)) rates[name].push(await run(server, SECONDS));
  }
  for (const name of Object.keys(rates)) {
    grpcRows.push({
      model: label,
      candidate: name,
      rate: Math.max(...rates[name]),
      ratio: median(rates[name].map((r, i) => r / rates['no capture'][i])),
    });
  }
  for (const server of Object.values(servers)) {
    for (const client of server.clients) client.close();
    server.child.kill('SIGTERM');
  }
}

// ---- 2. Sustained captures per second ----

const models = { describe: (name) => ({ name, version: '1.0' }) };
// CaptureDataRequests as the gRPC door hands them to CaptureService.capture (grpc/wire-tensors.ts decodes them):
// tensors with their data type's name and bytes, auxiliary data with its encoding.
const smallRequest = (id) => ({
  modelName: '',
  modelHandle: 'bench',
  captureId: id,
  inferenceTimestamp: null,
  inputTensors: [{ name: Buffer.from('x'), dataType: 'FLOAT32', shape: [1, 16], data: Buffer.alloc(64, 1) }],
  outputTensors: [{ name: Buffer.from('y'), dataType: 'FLOAT32', shape: [1, 16], data: Buffer.alloc(64, 2) }],
  inputs: [],
  outputs: [
    { name: 'json', encoding: AgentEncoding.JSON, data: Buffer.from('{"label":"cat","score":0.93}') },
  ],
});
const image = Buffer.alloc(3 * 224 * 224 * 4, 7);
const imageRequest = (id) => ({
  ...smallRequest(id),
  inputTensors: [{ name: Buffer.from('image'), dataType: 'FLOAT32', shape: [1, 3, 224, 224], data: image }],
});

const s3dir = join(work, 's3');
const s3 = new S3rver({
  address: '127.0.0.1',
  port: 0,
  silent: true,
  directory: s3dir,
  configureBuckets: [{ name: 'bench' }],
});
const { port } = await s3.run();
const store = () =>
  new S3ObjectStore({
    bucket: 'bench',
    region: 'us-east-1',
    endpoint: `http://127.0.0.1:${port}`,
    credentials: { source: 'static', accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
  });

const captureRows = [];
for (const [payload, makeRequest] of [
  ['small (2 × 64 B tensors + 28 B JSON)', smallRequest],
  ['image (588 KiB tensor → side file)', imageRequest],
]) {
  for (const destination of ['Disk, memory queue', 'Disk, database queue', 'S3 (s3rver), memory queue']) {
    const cloud = destination.startsWith('S3');
    const objects = cloud ? store() : undefined;
    const s = settings(
      cloud
        ? {
            destination: 'Cloud',
            cloud: {
              bucket: 'bench',
              region: 'us-east-1',
              endpoint: `http://127.0.0.1:${port}`,
              credentials: { source: 'static', accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
            },
          }
        : {},
    );
    const database = destination.includes('database')
      ? AgentDatabase.open({ path: agentDatabasePath(join(s.diskPath, '..', 'data')) })
      : undefined;
    const service = new CaptureService({
      settings: s,
      models,
      queue: database
        ? new SqliteCaptureQueue({ repository: database.captureQueue })
        : new MemoryCaptureQueue(),
      destination: cloud ? new ObjectStoreDestination(objects) : new DiskDestination(s.diskPath),
      ...(objects && { store: objects }),
    });
    await service.start();
    let next = 0;
    let refused = 0;
    const began = performance.now();
    const acked = await closedLoop(async () => {
      for (;;) {
        try {
          await service.capture(makeRequest(`c-${next++}`));
          return;
        } catch (error) {
          if (error.code !== 'RESOURCE_EXHAUSTED') throw error;
          refused++;
          await new Promise((resolve) => setTimeout(resolve, 1));
        }
      }
    }, SECONDS * 2);
    const ackSeconds = (performance.now() - began) / 1000;
    await service.flush();
    const total = acked * ackSeconds;
    const delivered = total / ((performance.now() - began) / 1000);
    if (service.spoolState()?.batches)
      throw new Error(`${destination}: batches were spooled; the store was not keeping up`);
    captureRows.push({ payload, destination, acked, delivered, refused });
    await service.close();
    objects?.close();
    database?.close();
  }
}
await s3.close();
rmSync(work, { recursive: true, force: true });

const fmt = (n) => (n >= 100 ? Math.round(n).toString() : n.toFixed(1));
console.log(
  `\nPredict, ${CONCURRENCY} in flight, ${ROUNDS} rounds of ${SECONDS} s (best round; ratio = median per-round ratio to "no capture")\n`,
);
console.log('| model | candidate | predictions/s | vs no capture |');
console.log('|---|---|---|---|');
for (const r of predictRows)
  console.log(
    `| ${r.model} | ${r.candidate} | ${fmt(r.rate)} | ${r.candidate === 'no capture' ? '—' : `${((r.ratio - 1) * 100).toFixed(1)} %`} |`,
  );
console.log(
  `\nPredict over gRPC (server process: 2 inference workers; ${CONCURRENCY} clients in the benchmark process), ${ROUNDS} rounds of ${SECONDS} s\n`,
);
console.log('| model | candidate | predictions/s | vs no capture |');
console.log('|---|---|---|---|');
for (const r of grpcRows)
  console.log(
    `| ${r.model} | ${r.candidate} | ${fmt(r.rate)} | ${r.candidate === 'no capture' ? '—' : `${((r.ratio - 1) * 100).toFixed(1)} %`} |`,
  );
console.log(
  `\nCaptureData, ${CONCURRENCY} in flight for ${SECONDS * 2} s, buffer 1000, batch 100 (acknowledged/s while sending; delivered/s including the final flush)\n`,
);
console.log('| capture | destination | acknowledged/s | delivered/s | RESOURCE_EXHAUSTED retries |');
console.log('|---|---|---|---|---|');
for (const r of captureRows)
  console.log(`| ${r.payload} | ${r.destination} | ${fmt(r.acked)} | ${fmt(r.delivered)} | ${r.refused} |`);
