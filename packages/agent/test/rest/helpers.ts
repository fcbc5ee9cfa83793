import { Agent, request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { TEST_MODELS, type TestModelName, type TestModelTensor } from '@edgefleet/core';
import { pino } from 'pino';
import {
  DEFAULT_ORT_SESSION_CONFIG,
  InferencePool,
  type InferencePoolOptions,
} from '../../src/inference/index.js';
import { AgentMetrics } from '../../src/metrics/index.js';
import { ModelRegistry } from '../../src/models/index.js';
import { startRestServer, type RestServer, type RestServerOptions } from '../../src/rest/index.js';

export { scratch } from '../support/model-packages.js';

/** Where a client connects: a Unix socket path, or a TCP base URL. */
export type Target = { kind: 'unix'; socketPath: string } | { kind: 'tcp'; host: string; port: number };

export function targetOf(address: string): Target {
  if (address.startsWith('unix:')) return { kind: 'unix', socketPath: address.slice('unix:'.length) };
  const url = new URL(address);
  return { kind: 'tcp', host: url.hostname, port: Number(url.port) };
}

export interface HttpResult {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
  /** Whether the request went over a kept-alive connection of an earlier one. */
  reusedSocket: boolean;
  text(): string;
  json(): unknown;
}

export interface RequestSpec {
  method?: string;
  path: string;
  headers?: Record<string, string | number>;
  body?: string | Uint8Array | readonly Uint8Array[];
}

/** A real HTTP/1.1 client over node:http, with keep-alive connections. */
export class HttpClient {
  readonly agent = new Agent({ keepAlive: true, maxSockets: 4 });
  constructor(readonly target: Target) {}

  request(spec: RequestSpec): Promise<HttpResult> {
    const parts =
      spec.body === undefined
        ? []
        : typeof spec.body === 'string'
          ? [Buffer.from(spec.body)]
          : spec.body instanceof Uint8Array
            ? [spec.body]
            : spec.body;
    const length = parts.reduce((n, part) => n + part.byteLength, 0);
    const headers: Record<string, string | number> = { ...spec.headers };
    if (
      spec.body !== undefined &&
      !Object.keys(headers).some((h) => h.toLowerCase() === 'transfer-encoding')
    ) {
      headers['content-length'] ??= length;
    }
    const where =
      this.target.kind === 'unix'
        ? { socketPath: this.target.socketPath }
        : { host: this.target.host, port: this.target.port };
    return new Promise((resolve, reject) => {
      const req = httpRequest(
        { ...where, agent: this.agent, method: spec.method ?? 'GET', path: spec.path, headers },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (chunk: Buffer) => chunks.push(chunk));
          res.on('error', reject);
          res.on('end', () => {
            const body = Buffer.concat(chunks);
            resolve({
              status: res.statusCode ?? 0,
              headers: res.headers,
              body,
              reusedSocket: req.reusedSocket,
              text: () => body.toString('utf8'),
              json: () => JSON.parse(body.toString('utf8')) as unknown,
            });
          });
        },
      );
      req.on('error', reject);
      for (const part of parts) req.write(part);
      req.end();
    });
  }

  get(path: string) {
    return this.request({ path });
  }

  /** POST a JSON document. */
  postJson(path: string, value: unknown, headers: Record<string, string> = {}) {
    return this.request({
      method: 'POST',
      path,
      headers: { 'content-type': 'application/json', ...headers },
      body: JSON.stringify(value),
    });
  }

  close(): void {
    this.agent.destroy();
  }
}

/** Registers System V segment `shmid` as system shared memory region `name`: `byteSize` bytes from `offset`. */
export function registerRegion(
  client: HttpClient,
  name: string,
  shmid: number,
  byteSize: number,
  offset = 0,
): Promise<HttpResult> {
  return client.postJson(`/v2/systemsharedmemory/region/${name}/register`, {
    key: String(shmid),
    offset,
    byte_size: byteSize,
  });
}

/** Unregisters each system shared memory region the status lists (a test's clean-up). */
export async function unregisterListedRegions(client: HttpClient): Promise<void> {
  const listed = (await client.get('/v2/systemsharedmemory/status')).json() as Array<{ name: string }>;
  for (const { name } of listed)
    await client.postJson(`/v2/systemsharedmemory/region/${name}/unregister`, {});
}

/** A JSON part followed by binary parts, with the header of the binary tensor data extension. */
export function binaryBody(json: unknown, parts: readonly Uint8Array[]) {
  const header = Buffer.from(JSON.stringify(json));
  return {
    headers: {
      'content-type': 'application/octet-stream',
      'inference-header-content-length': header.length,
    },
    body: [header, ...parts],
  };
}

/** Splits a binary-extension response into its JSON part and the bytes after it. */
export function splitBinaryResponse(result: HttpResult): { json: InferResponseJson; tail: Buffer } {
  const length = Number(result.headers['inference-header-content-length']);
  return {
    json: JSON.parse(result.body.subarray(0, length).toString('utf8')) as InferResponseJson,
    tail: result.body.subarray(length),
  };
}

export interface InferResponseJson {
  model_name: string;
  model_version?: string;
  id?: string;
  outputs: Array<{
    name: string;
    datatype: string;
    shape: number[];
    data?: unknown[];
    parameters?: { binary_data_size?: number };
  }>;
}

export function bytesOf(data: ArrayBufferView): Uint8Array {
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

/** A reference tensor's values as JSON numbers would carry them (INT64 as exact BigInt). */
export function valuesOf(tensor: TestModelTensor): Array<number | bigint> {
  return Array.from(tensor.data as ArrayLike<number | bigint>);
}

/** The typed values of binary bytes, as the reference tensor's array type. */
export function typedLike(bytes: Uint8Array, like: TestModelTensor): TestModelTensor['data'] {
  const copy = new Uint8Array(bytes); // a copy (Buffer#slice would be a view), aligned at offset 0
  const Typed = like.data.constructor as new (buffer: ArrayBuffer) => TestModelTensor['data'];
  return new Typed(copy.buffer);
}

/** The catalogue model's sample inputs as KServe JSON request inputs (flat data). */
export function jsonInputs(model: TestModelName) {
  const inputs = TEST_MODELS[model].sampleInputs();
  return TEST_MODELS[model].inputs.map((declared) => {
    const tensor = inputs[declared.name]!;
    return {
      name: declared.name,
      shape: tensor.shape,
      datatype: kserveName(tensor.dataType),
      data: Array.from(tensor.data as ArrayLike<number | bigint>, (v) =>
        typeof v === 'bigint' ? Number(v) : v,
      ),
    };
  });
}

export function kserveName(dataType: string): string {
  return {
    FLOAT32: 'FP32',
    FLOAT64: 'FP64',
    FLOAT16: 'FP16',
    INT64: 'INT64',
    INT32: 'INT32',
    INT16: 'INT16',
    UINT8: 'UINT8',
  }[dataType]!;
}

/** A real agent: an inference pool with ONNX Runtime workers, a registry, metrics, and the REST server. */
export async function startAgent(
  options: {
    socketPath?: string;
    tcp?: boolean;
    workers?: number;
    inline?: InferencePoolOptions['inline'];
    /** How inline runs are judged (the daemon's is the event loop's own CPU clock: threadCpuClock). */
    threadCpuMs?: InferencePoolOptions['threadCpuMs'];
  } & Partial<Omit<RestServerOptions, 'tcp'>> = {},
) {
  const { socketPath, tcp, workers, inline, threadCpuMs, ...rest } = options;
  const pool = await InferencePool.start({
    workers: workers ?? 1,
    session: DEFAULT_ORT_SESSION_CONFIG,
    ...(inline && { inline }),
    ...(threadCpuMs && { threadCpuMs }),
  });
  const metrics = new AgentMetrics({ defaultMetrics: false });
  metrics.watchPool(() => pool.stats());
  const registry = new ModelRegistry({ pool, trust: null, cwd: process.cwd(), metrics });
  const logger = pino({ level: 'silent' });
  let server: RestServer;
  try {
    server = await startRestServer({
      registry,
      metrics,
      logger,
      ...rest,
      ...(socketPath !== undefined ? { unixSocketPath: socketPath } : {}),
      ...(tcp ? { tcp: { host: '127.0.0.1', port: 0 } } : {}),
    });
  } catch (error) {
    await pool.close();
    throw error;
  }
  return {
    pool,
    registry,
    metrics,
    server,
    async stop() {
      await server.close();
      await registry.close();
      await pool.close();
    },
  };
}

/** JSON text in which BigInt values are written as exact integer literals. */
export function jsonText(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => (typeof v === 'bigint' ? `__bigint__${v}` : v)).replace(
    /"__bigint__(-?\d+)"/g,
    '$1',
  );
}
