import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { createServer, request as httpRequest, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { GetObjectCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import {
  AgentDataType,
  AgentEncoding,
  createModelPackage,
  writeTestModel,
  type AgentMethodName,
  type AgentRequest,
  type CaptureDataRequest,
  type MessageInit,
  type Tensor,
  type TestModelName,
} from '@edgefleet/core';
import { afterAll, beforeAll } from 'vitest';
import type { Registry } from 'prom-client';
import {
  CAPTURE_FOLDER_LOCK_FILE,
  CaptureMetrics,
  CaptureSettingsSchema,
  type CaptureItem,
  type CaptureRequest,
  type CaptureSettings,
  type CaptureSettingsInput,
  type RenderContext,
} from '../../src/capture/index.js';
import { fromWireCaptureRequest } from '../../src/grpc/index.js';
import { DEFAULT_ORT_SESSION_CONFIG, InferencePool } from '../../src/inference/index.js';
import { ModelRegistry } from '../../src/models/index.js';
import {
  buildAgent,
  listening,
  spawnAgent,
  writeAgentConfig,
  type AgentProcess,
  type SpawnAgentOptions,
} from '../daemon/process-helpers.js';
import { callMethod, newClient } from '../grpc/helpers.js';

/** A capture as the queue holds it: one FLOAT32 input tensor holding `data`, received at 1. */
export function captureItem(captureId: string, data: Buffer, model = 'tiny'): CaptureItem {
  return {
    captureId,
    model,
    modelVersion: '1',
    inferenceTime: 1,
    receivedAt: 1,
    source: 'api',
    inputTensors: [{ name: 'x', dataType: 'FLOAT32', shape: [1, data.byteLength / 4], data }],
    outputTensors: [],
    inputs: [],
    outputs: [],
  };
}

/** `item` as taken (inferred, and received) at `time`. */
export function takenAt(item: CaptureItem, time: number): CaptureItem {
  return { ...item, inferenceTime: time, receivedAt: time };
}

/**
 * How the capture service renders device cam-1's batches in fleet plant (folder prefix edge, a 64-byte embed
 * limit, no Model Monitor copy), data-refs naming `store`'s URLs; `overrides` change any of it.
 */
export function plantRendering(
  store: { urlFor(key: string): string },
  overrides: Partial<RenderContext> = {},
): RenderContext {
  return {
    folderPrefix: 'edge',
    fleetName: 'plant',
    deviceName: 'cam-1',
    base64EmbedLimit: 64,
    modelMonitorFormat: false,
    urlFor: (key) => store.urlFor(key),
    ...overrides,
  };
}

/** Capture metrics on `registry` whose gauges read 0: what the tests read are its counters. */
export function captureCounters(registry: Registry): CaptureMetrics {
  return new CaptureMetrics(registry, { queueDepth: () => 0, spoolBytes: () => 0, spoolBatches: () => 0 });
}

/** Settings for tests: a Disk destination under `root`, small numbers, overridable. */
export function testSettings(root: string, overrides: Partial<CaptureSettingsInput> = {}): CaptureSettings {
  return CaptureSettingsSchema.parse({
    destination: 'Disk',
    diskPath: join(root, 'capture'),
    folderPrefix: 'sme-capture',
    bufferSize: 30,
    batchSize: 10,
    pushPeriodSeconds: 4,
    base64EmbedLimit: 3072,
    periodicUpload: false,
    periodicUploadPeriodSeconds: 8,
    fleetName: 'fleet-a',
    deviceName: 'device-1',
    spool: { dir: join(root, 'spool'), quotaBytes: 64 * 1024 * 1024, retryInitialMs: 50, retryMaxMs: 400 },
    ...overrides,
  } satisfies CaptureSettingsInput);
}

export function floatTensor(name: string, shape: number[], fill = 0.5): Tensor {
  const count = shape.reduce((n, d) => n * d, 1);
  return {
    tensorMetadata: { name: Buffer.from(name), dataType: AgentDataType.FLOAT32, shape },
    byteData: Buffer.from(new Float32Array(count).fill(fill).buffer),
    data: 'byteData',
  };
}

/**
 * A capture as the capture service takes it: captureRequest's wire message through the gRPC door's decoder (no
 * shared memory reader). Throws what the decoder throws for a request it refuses.
 */
export function captureInput(captureId: string, overrides: Partial<CaptureDataRequest> = {}): CaptureRequest {
  return fromWireCaptureRequest(captureRequest(captureId, overrides), {
    reader: null,
    caller: null,
    leases: [],
  });
}

/** A CaptureDataRequest as the gRPC codec decodes one: every field present, proto3 defaults. */
export function captureRequest(
  captureId: string,
  overrides: Partial<CaptureDataRequest> = {},
): CaptureDataRequest {
  return {
    modelName: '',
    modelHandle: 'tiny',
    captureId,
    inferenceTimestamp: null,
    inputTensors: [floatTensor('x', [1, 16], 1)],
    outputTensors: [floatTensor('y', [1, 16], 3)],
    inputs: [],
    outputs: [
      { name: 'json', encoding: AgentEncoding.JSON, byteData: Buffer.from('{"ok":true}'), data: 'byteData' },
    ],
    ...overrides,
  };
}

export interface FoundRecord {
  file: string;
  record: Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any -- records are checked field by field
}

/**
 * Every file under a folder, relative paths with '/' separators; not the Disk capture folder's lock file (and its
 * SQLite journal), which the agent holds there while it runs.
 */
export async function listFiles(root: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (dir: string): Promise<void> => {
    let entries;
    try {
      entries = await readdir(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const path = join(dir, e.name);
      if (e.isDirectory()) await walk(path);
      else if (!e.name.startsWith(CAPTURE_FOLDER_LOCK_FILE))
        out.push(relative(root, path).split(sep).join('/'));
    }
  };
  await walk(root);
  return out.sort();
}

/** Every record in every .jsonl manifest under a folder (excluding Model Monitor ones). */
export async function diskRecords(root: string): Promise<FoundRecord[]> {
  const records: FoundRecord[] = [];
  for (const file of await listFiles(root)) {
    if (!file.endsWith('.jsonl') || file.includes('_model-monitor')) continue;
    const text = await readFile(join(root, file), 'utf8');
    for (const line of text.split('\n')) if (line !== '') records.push({ file, record: JSON.parse(line) });
  }
  return records;
}

export async function readDataRef(ref: string): Promise<Buffer> {
  return readFile(fileURLToPath(ref));
}

/** A catalogue model as an extracted package folder under `root`. */
export async function modelPackage(
  root: string,
  model: TestModelName,
  name: string = model,
): Promise<string> {
  const modelPath = await writeTestModel(model, join(root, `src-${name}`));
  const { dir } = await createModelPackage({
    modelPath,
    name,
    version: '1.0',
    outDir: join(root, `pkg-${name}`),
  });
  return dir;
}

/** A test file's real inference pool (one worker) and registry, with catalogue models loaded under `root`. */
export interface ModelRegistryFixture {
  root: string;
  pool: InferencePool;
  registry: ModelRegistry;
}

/**
 * Starts a pool and a registry before the file's tests and loads `models` (catalogue model → registry name) into
 * it; closes them and removes the folder after.
 */
export function useModelRegistry(
  prefix: string,
  models: Partial<Record<TestModelName, string>>,
): ModelRegistryFixture {
  const fixture = {} as ModelRegistryFixture;
  beforeAll(async () => {
    fixture.root = await mkdtemp(join(tmpdir(), prefix));
    fixture.pool = await InferencePool.start({ workers: 1, session: DEFAULT_ORT_SESSION_CONFIG });
    fixture.registry = new ModelRegistry({ pool: fixture.pool, trust: null, cwd: fixture.root });
    for (const [model, name] of Object.entries(models) as [TestModelName, string][])
      await fixture.registry.load({ url: await modelPackage(fixture.root, model), name });
  });
  afterAll(async () => {
    await fixture.registry?.close();
    await fixture.pool?.close();
    if (fixture.root) await rm(fixture.root, { recursive: true, force: true });
  });
  return fixture;
}

/** A real S3 wire protocol: s3rver on 127.0.0.1, stoppable and restartable on the same port and folder. */
export async function startS3(directory: string, bucket = 'capture-bucket') {
  const { default: S3rver } = await import('s3rver');
  let server: InstanceType<typeof S3rver> | undefined;
  let port = 0;
  const run = async () => {
    server = new S3rver({
      address: '127.0.0.1',
      port,
      silent: true,
      directory,
      configureBuckets: [{ name: bucket }],
    });
    port = (await server.run()).port;
  };
  await run();
  const client = new S3Client({
    region: 'us-east-1',
    endpoint: `http://127.0.0.1:${port}`,
    forcePathStyle: true,
    credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
  });
  return {
    bucket,
    endpoint: `http://127.0.0.1:${port}`,
    credentials: { source: 'static' as const, accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
    async stop() {
      await server?.close();
      server = undefined;
    },
    restart: run,
    async keys(prefix = ''): Promise<string[]> {
      const keys: string[] = [];
      let token: string | undefined;
      do {
        const page = await client.send(
          new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }),
        );
        keys.push(...(page.Contents ?? []).map((o) => o.Key!));
        token = page.NextContinuationToken;
      } while (token);
      return keys.sort();
    },
    async get(key: string): Promise<Buffer> {
      const object = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
      return Buffer.from(await object.Body!.transformToByteArray());
    },
    /** Every record of every Edge manifest in the bucket. */
    async records(): Promise<FoundRecord[]> {
      const found: FoundRecord[] = [];
      for (const key of await this.keys()) {
        if (!key.endsWith('.jsonl') || key.includes('_model-monitor')) continue;
        for (const line of (await this.get(key)).toString('utf8').split('\n'))
          if (line !== '') found.push({ file: key, record: JSON.parse(line) });
      }
      return found;
    },
    async close() {
      client.destroy();
      await server?.close();
    },
  };
}
export type TestS3 = Awaited<ReturnType<typeof startS3>>;

/** A gRPC client of the SageMaker Edge agent service; `call` resolves with the response or rejects with the ServiceError. */
export function agentClient(target: string) {
  const client = newClient(target);
  return {
    call: <M extends AgentMethodName>(method: M, request: MessageInit<AgentRequest<M>>) =>
      callMethod(client, method, request),
    close: () => client.close(),
  };
}

/** A scratch folder with the tiny model's package, for tests of real agent processes; `spawn` tracks each one. */
export interface AgentProcessFixture {
  readonly root: string;
  readonly tiny: string;
  /** Starts the built agent in `root`; the processes still running at the end are SIGKILLed. */
  spawn(args: string[], options?: SpawnAgentOptions): AgentProcess;
  /**
   * Writes `<root>/agent.json` for device-1 of fleet-a with the local database on and Disk captures, plus
   * `captureKeys` (buffer, batch, push period…), for tests that kill the agent and start it again.
   */
  databaseAgent(captureKeys: Record<string, string>): Promise<DatabaseAgent>;
}

/** An agent config written by `databaseAgent`, and where its agent keeps things. */
export interface DatabaseAgent {
  socket: string;
  /** The Disk destination's folder. */
  diskPath: string;
  /** sagemaker_edge_local_data_root_path: agent.db lives here. */
  dataRoot: string;
  /** Spawns the agent on this config (`-f`: in the foreground) and resolves once it listens. */
  start(): Promise<AgentProcess>;
}

/** Builds the agent and prepares the fixture before the file's tests; kills the agents and removes it after. */
export function useAgentProcesses(prefix: string): AgentProcessFixture {
  const running: AgentProcess[] = [];
  const fixture = {
    root: '',
    tiny: '',
    spawn(args: string[], options?: SpawnAgentOptions): AgentProcess {
      const agent = spawnAgent(args, fixture.root, options);
      running.push(agent);
      return agent;
    },
    async databaseAgent(captureKeys: Record<string, string>): Promise<DatabaseAgent> {
      const socket = join(fixture.root, 'agent.sock');
      const diskPath = join(fixture.root, 'capture');
      const dataRoot = join(fixture.root, 'data');
      const config = join(fixture.root, 'agent.json');
      await writeAgentConfig(config, {
        sagemaker_edge_core_capture_data_destination: 'Disk',
        sagemaker_edge_core_capture_data_disk_path: diskPath,
        ...captureKeys,
        // Its presence enables the database, as it did for the original agent.
        sagemaker_edge_db_module_path: '/opt/sagemaker/lib/libdb.so',
        sagemaker_edge_local_data_root_path: dataRoot,
        edgefleet_inference_workers: 1,
        edgefleet_rest_socket_path: 'none',
      });
      const start = async (): Promise<AgentProcess> => {
        const agent = fixture.spawn(['-a', socket, '-c', config, '-f']);
        await agent.waitFor(listening, 'listening');
        return agent;
      };
      return { socket, diskPath, dataRoot, start };
    },
  };
  beforeAll(async () => {
    buildAgent();
    fixture.root = await mkdtemp(join(tmpdir(), prefix));
    fixture.tiny = await modelPackage(fixture.root, 'tiny');
  }, 180_000);
  afterAll(async () => {
    for (const agent of running) agent.child.kill('SIGKILL');
    if (fixture.root) await rm(fixture.root, { recursive: true, force: true });
  });
  return fixture;
}

/** An S3 error answer a fault proxy sends in s3rver's stead. */
export interface S3Fault {
  status: number;
  code: string;
  message: string;
  headers?: Record<string, string>;
}

/**
 * A fault-injecting HTTP proxy in front of the real s3rver, for answers s3rver never sends (throttling, a body
 * read too slowly): a request `fault` answers (with the request's path-style key) gets that S3 error once its
 * body is read; every other request is forwarded to s3rver unchanged (the SDK's signature covers the Host it
 * sent, which is kept).
 */
export async function s3FaultProxy(
  target: string,
  fault: (request: IncomingMessage, key: string) => S3Fault | undefined,
): Promise<{ endpoint: string; close(): Promise<void> }> {
  const upstream = new URL(target);
  const server = createServer((request, response) => {
    // Path style: /<bucket>/<key>.
    const key = decodeURIComponent(new URL(request.url ?? '/', 'http://s3').pathname)
      .split('/')
      .slice(2)
      .join('/');
    const answer = fault(request, key);
    if (answer !== undefined) {
      request.resume();
      request.on('end', () => {
        response.writeHead(answer.status, { 'content-type': 'application/xml', ...answer.headers });
        response.end(
          `<?xml version="1.0" encoding="UTF-8"?><Error><Code>${answer.code}</Code><Message>${answer.message}</Message></Error>`,
        );
      });
      return;
    }
    const forwarded = httpRequest(
      {
        host: upstream.hostname,
        port: upstream.port,
        method: request.method,
        path: request.url,
        headers: request.headers,
      },
      (reply) => {
        response.writeHead(reply.statusCode ?? 502, reply.headers);
        reply.pipe(response);
      },
    );
    forwarded.on('error', () => response.destroy());
    request.pipe(forwarded);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
