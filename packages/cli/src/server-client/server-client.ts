import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { rename, rm, stat } from 'node:fs/promises';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import type { z } from 'zod';
import type { ServerConnection } from './connection.js';
import {
  accessKeyListSchema,
  apiTokenListSchema,
  createdAccessKeySchema,
  certificateListSchema,
  createdApiTokenSchema,
  deploymentEventListSchema,
  deploymentPlanListSchema,
  createdDeploymentPlanSchema,
  deploymentPlanSchema,
  deviceCaSchema,
  stageDeviceListSchema,
  stageDeviceSchema,
  deviceListSchema,
  deviceMetricsSchema,
  deviceSchema,
  enrollmentTokenSchema,
  errorBodySchema,
  fleetListSchema,
  fleetReportSchema,
  fleetSchema,
  issuedCertificateSchema,
  modelListSchema,
  modelSchema,
  modelVersionListSchema,
  modelVersionSchema,
  packagingJobListSchema,
  packagingJobSchema,
  registeredDevicesSchema,
  revokedSchema,
  signingRootSchema,
  whoamiSchema,
  type AccessKey,
  type ApiToken,
  type DeploymentEventView,
  type DeploymentPlan,
  type StageDevice,
  type DeviceSummary,
  type Fleet,
  type Model,
  type ModelVersion,
  type PackagingJob,
  type Tag,
} from './schemas.js';
import { looksLikeTlsPort, probeTlsPort } from './device-port-probe.js';

/** The server answered with an error body (4xx/5xx): its status, stable code and message. */
export class ServerApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details?: Record<string, unknown>,
  ) {
    super(message);
    this.name = 'ServerApiError';
  }
}

/** No answer: connection refused, DNS failure, TLS failure, timeout. */
export class ServerUnreachableError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ServerUnreachableError';
  }
}

/** An answer that is not what this CLI understands (another service on that port, an incompatible server). */
export class ServerResponseError extends Error {
  constructor(
    message: string,
    /** The HTTP status of the answer, when there was one (a proxy's HTML error page, for one). */
    readonly status?: number,
  ) {
    super(message);
    this.name = 'ServerResponseError';
  }
}

export interface CreateFleetInput {
  name: string;
  description?: string;
  outputConfig: { s3OutputLocation: string; kmsKeyId?: string };
  roleArn?: string;
  tags?: Tag[];
}

export interface UpdateFleetInput {
  description?: string | null;
  outputConfig?: { s3OutputLocation: string; kmsKeyId?: string };
  roleArn?: string | null;
  tags?: Tag[];
}

export interface DeviceInput {
  name: string;
  description?: string;
  iotThingName?: string;
}

export interface UpdateDeviceInput {
  description?: string | null;
  iotThingName?: string | null;
  tags?: Tag[];
}

export interface DeviceListFilter {
  fleet?: string;
  /** `key` or `key=value`. */
  tags?: string[];
  nameContains?: string;
  status?: 'online' | 'offline' | 'never-seen';
  modelName?: string;
  latestHeartbeatAfter?: string;
}

export interface MetricsFilter {
  since?: string;
  until?: string;
  step?: number;
  metricName?: string;
  modelName?: string;
}

type Query = Record<string, string | number | string[] | undefined>;

interface CallOptions {
  query?: Query;
  body?: unknown;
  /** Bearer token for this call instead of the connection's (enrollment tokens). */
  bearer?: string;
}

/** Bytes moved so far of an upload or download, and how many there are in all (0 when unknown). */
export type TransferProgress = (done: number, total: number) => void;

/** A file upload's content type: what the server's model upload route takes for each kind of file. */
export function uploadContentType(file: string): 'application/octet-stream' | 'application/gzip' {
  return /\.(tar\.gz|tgz)$/i.test(file) ? 'application/gzip' : 'application/octet-stream';
}

/** Largest page the server hands out; listing more follows nextToken. */
const PAGE_SIZE = 500;
const DEFAULT_TIMEOUT_MS = 30_000;

/**
 * A small typed client of the EdgeFleet operator API (`/api/v1/…`): one method per route, answers checked
 * against the shapes in schemas.ts, failures as ServerApiError / ServerUnreachableError / ServerResponseError.
 */
export class ServerClient {
  readonly #connection: ServerConnection;
  readonly #fetch: typeof fetch;
  readonly #timeoutMs: number;

  constructor(connection: ServerConnection, options: { fetch?: typeof fetch; timeoutMs?: number } = {}) {
    this.#connection = connection;
    this.#fetch = options.fetch ?? fetch;
    this.#timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  }

  get server(): string {
    return this.#connection.server;
  }

  // ---- fleets ------------------------------------------------------------------------------------------------

  createFleet(input: CreateFleetInput) {
    return this.#call('POST', '/api/v1/fleets', fleetSchema, { body: input });
  }

  listFleets(filter: { nameContains?: string } = {}, max?: number): Promise<Fleet[]> {
    return this.#listAll(
      '/api/v1/fleets',
      fleetListSchema,
      'fleets',
      { nameContains: filter.nameContains },
      max,
    );
  }

  getFleet(name: string) {
    return this.#call('GET', `/api/v1/fleets/${seg(name)}`, fleetSchema);
  }

  updateFleet(name: string, patch: UpdateFleetInput) {
    return this.#call('PATCH', `/api/v1/fleets/${seg(name)}`, fleetSchema, { body: patch });
  }

  async deleteFleet(name: string): Promise<void> {
    await this.#call('DELETE', `/api/v1/fleets/${seg(name)}`, null);
  }

  fleetReport(name: string) {
    return this.#call('GET', `/api/v1/fleets/${seg(name)}/report`, fleetReportSchema);
  }

  // ---- devices -----------------------------------------------------------------------------------------------

  async registerDevices(fleet: string, devices: DeviceInput[], tags: Tag[] = []) {
    return (
      await this.#call('POST', `/api/v1/fleets/${seg(fleet)}/devices`, registeredDevicesSchema, {
        body: { devices, tags },
      })
    ).devices;
  }

  listDevices(filter: DeviceListFilter = {}, max?: number): Promise<DeviceSummary[]> {
    return this.#listAll(
      '/api/v1/devices',
      deviceListSchema,
      'devices',
      {
        fleet: filter.fleet,
        tag: filter.tags,
        nameContains: filter.nameContains,
        status: filter.status,
        modelName: filter.modelName,
        latestHeartbeatAfter: filter.latestHeartbeatAfter,
      },
      max,
    );
  }

  getDevice(name: string) {
    return this.#call('GET', `/api/v1/devices/${seg(name)}`, deviceSchema);
  }

  updateDevice(name: string, patch: UpdateDeviceInput) {
    return this.#call('PATCH', `/api/v1/devices/${seg(name)}`, deviceSchema, { body: patch });
  }

  async deregisterDevice(name: string): Promise<void> {
    await this.#call('DELETE', `/api/v1/devices/${seg(name)}`, null);
  }

  deviceMetrics(name: string, filter: MetricsFilter = {}) {
    return this.#call('GET', `/api/v1/devices/${seg(name)}/metrics`, deviceMetricsSchema, {
      query: { ...filter },
    });
  }

  // ---- identity ----------------------------------------------------------------------------------------------

  createEnrollmentToken(device: string, ttlSeconds?: number) {
    return this.#call('POST', `/api/v1/devices/${seg(device)}/enrollment-tokens`, enrollmentTokenSchema, {
      body: ttlSeconds !== undefined ? { ttlSeconds } : {},
    });
  }

  /**
   * Exchanges an enrollment token and a CSR for the device's certificate (no API token involved). With
   * `deviceName`, the server refuses (403, token unused) a token issued for another device.
   */
  /** `host`: who the enrolling host takes itself for (its device name, or its IoT thing name). */
  enroll(enrollmentToken: string, csrPem: string, host: { deviceName?: string; thingName?: string } = {}) {
    return this.#call('POST', '/api/v1/enroll', issuedCertificateSchema, {
      body: {
        csr: csrPem,
        ...(host.deviceName !== undefined && { deviceName: host.deviceName }),
        ...(host.thingName !== undefined && { thingName: host.thingName }),
      },
      bearer: enrollmentToken,
    });
  }

  async certificates(device: string) {
    return (await this.#call('GET', `/api/v1/devices/${seg(device)}/certificates`, certificateListSchema))
      .certificates;
  }

  async revokeCertificates(device: string, options: { serial?: string; reason?: string } = {}) {
    return (
      await this.#call('POST', `/api/v1/devices/${seg(device)}/certificates/revoke`, revokedSchema, {
        body: options,
      })
    ).revoked;
  }

  deviceCa() {
    return this.#call('GET', '/api/v1/device-ca', deviceCaSchema);
  }

  // ---- API tokens --------------------------------------------------------------------------------------------

  createApiToken(input: { name: string; scope: string }) {
    return this.#call('POST', '/api/v1/tokens', createdApiTokenSchema, { body: input });
  }

  listApiTokens(max?: number): Promise<ApiToken[]> {
    return this.#listAll('/api/v1/tokens', apiTokenListSchema, 'tokens', {}, max);
  }

  async revokeApiToken(id: string): Promise<void> {
    await this.#call('DELETE', `/api/v1/tokens/${seg(id)}`, null);
  }

  /** An AWS-style access key pair for the SageMaker facade; the secret is in this answer only. */
  createAccessKey(input: { name: string; scope: string; deviceName?: string }) {
    return this.#call('POST', '/api/v1/access-keys', createdAccessKeySchema, { body: input });
  }

  listAccessKeys(max?: number): Promise<AccessKey[]> {
    return this.#listAll('/api/v1/access-keys', accessKeyListSchema, 'accessKeys', {}, max);
  }

  async revokeAccessKey(accessKeyId: string): Promise<void> {
    await this.#call('DELETE', `/api/v1/access-keys/${seg(accessKeyId)}`, null);
  }

  whoami() {
    return this.#call('GET', '/api/v1/whoami', whoamiSchema);
  }

  // ---- models ------------------------------------------------------------------------------------------------

  /** Streams an ONNX file or a package archive to the server as a new model version. */
  async uploadModelVersion(
    name: string,
    version: string,
    file: string,
    options: { description?: string; onProgress?: TransferProgress } = {},
  ): Promise<ModelVersion> {
    const size = (await stat(file)).size;
    let sent = 0;
    const counter = new Transform({
      transform(chunk: Buffer, _encoding, done) {
        sent += chunk.length;
        options.onProgress?.(sent, size);
        done(null, chunk);
      },
    });
    const source = createReadStream(file).pipe(counter);
    const url = this.#url(`/api/v1/models/${seg(name)}/versions/${seg(version)}`, {
      description: options.description,
    });
    try {
      const response = await this.#send('POST', url, {
        body: Readable.toWeb(source) as ReadableStream,
        headers: { 'content-type': uploadContentType(file), 'content-length': String(size) },
        timeout: false,
      });
      // The answer is read before the file stream is closed: a server may refuse (409, 413) before it has
      // read the whole body, and destroying the request body first would abort that answer unread.
      return await this.#read(response, `POST ${url.pathname}`, modelVersionSchema);
    } finally {
      source.destroy();
    }
  }

  listModels(max?: number): Promise<Model[]> {
    return this.#listAll('/api/v1/models', modelListSchema, 'models', {}, max);
  }

  getModel(name: string) {
    return this.#call('GET', `/api/v1/models/${seg(name)}`, modelSchema);
  }

  listModelVersions(name: string, max?: number): Promise<ModelVersion[]> {
    return this.#listAll(`/api/v1/models/${seg(name)}/versions`, modelVersionListSchema, 'versions', {}, max);
  }

  getModelVersion(name: string, version: string) {
    return this.#call('GET', `/api/v1/models/${seg(name)}/versions/${seg(version)}`, modelVersionSchema);
  }

  async deleteModelVersion(name: string, version: string): Promise<void> {
    await this.#call('DELETE', `/api/v1/models/${seg(name)}/versions/${seg(version)}`, null);
  }

  // ---- packaging ---------------------------------------------------------------------------------------------

  createPackagingJob(input: {
    name: string;
    modelName: string;
    modelVersion: string;
    outputS3Location?: string;
  }) {
    return this.#call('POST', '/api/v1/packaging-jobs', packagingJobSchema, { body: input });
  }

  listPackagingJobs(filter: { status?: string } = {}, max?: number): Promise<PackagingJob[]> {
    return this.#listAll(
      '/api/v1/packaging-jobs',
      packagingJobListSchema,
      'jobs',
      { status: filter.status },
      max,
    );
  }

  getPackagingJob(name: string) {
    return this.#call('GET', `/api/v1/packaging-jobs/${seg(name)}`, packagingJobSchema);
  }

  signingRoot() {
    return this.#call('GET', '/api/v1/signing/root-certificate', signingRootSchema);
  }

  /**
   * Downloads a completed job's package to `file` (via a temporary sibling, renamed when whole) and checks
   * its SHA-256 against `expectedSha256` when given. Returns the bytes written and their digest.
   */
  async downloadPackage(
    job: string,
    file: string,
    options: { expectedSha256?: string; onProgress?: TransferProgress } = {},
  ): Promise<{ bytes: number; sha256: string }> {
    const url = this.#url(`/api/v1/packaging-jobs/${seg(job)}/artifact`);
    const response = await this.#send('GET', url, { timeout: false });
    if (!response.ok || response.body === null) {
      await this.#read(response, `GET ${url.pathname}`, null);
      throw new ServerResponseError(`GET ${url.pathname} answered HTTP ${response.status} without a body`);
    }
    const total = Number(response.headers.get('content-length') ?? 0);
    const hash = createHash('sha256');
    let bytes = 0;
    const temporary = `${file}.part-${randomBytes(4).toString('hex')}`;
    try {
      await pipeline(
        Readable.fromWeb(response.body as WebReadableStream),
        new Transform({
          transform(chunk: Buffer, _encoding, done) {
            bytes += chunk.length;
            hash.update(chunk);
            options.onProgress?.(bytes, total);
            done(null, chunk);
          },
        }),
        createWriteStream(temporary, { flags: 'wx' }),
      );
    } catch (error) {
      await rm(temporary, { force: true });
      throw error instanceof ServerResponseError ? error : unreachable(this.#connection.server, error);
    }
    const sha256 = hash.digest('hex');
    if (options.expectedSha256 !== undefined && sha256 !== options.expectedSha256) {
      await rm(temporary, { force: true });
      throw new ServerResponseError(
        `the downloaded package's SHA-256 is ${sha256}, but the job says ${options.expectedSha256}; nothing was written`,
      );
    }
    await rename(temporary, file);
    return { bytes, sha256 };
  }

  // ---- deployments -------------------------------------------------------------------------------------------

  /** Creates a deployment plan; `plan` is the server's body (name, fleetName, modelConfigs, stages, options). */
  createDeploymentPlan(plan: Record<string, unknown>) {
    return this.#call('POST', '/api/v1/deployment-plans', createdDeploymentPlanSchema, { body: plan });
  }

  listDeploymentPlans(filter: { fleetName?: string } = {}, max?: number): Promise<DeploymentPlan[]> {
    return this.#listAll(
      '/api/v1/deployment-plans',
      deploymentPlanListSchema,
      'plans',
      { fleetName: filter.fleetName },
      max,
    );
  }

  getDeploymentPlan(name: string) {
    return this.#call('GET', `/api/v1/deployment-plans/${seg(name)}`, deploymentPlanSchema);
  }

  async deleteDeploymentPlan(name: string): Promise<void> {
    await this.#call('DELETE', `/api/v1/deployment-plans/${seg(name)}`, null);
  }

  /** `force`: start it even though an earlier stage of the plan FAILED (the server refuses otherwise). */
  startDeploymentStage(plan: string, stage: string, options: { force?: boolean } = {}) {
    return this.#call(
      'POST',
      `/api/v1/deployment-plans/${seg(plan)}/stages/${seg(stage)}/start`,
      deploymentPlanSchema,
      options.force === true ? { body: { force: true } } : {},
    );
  }

  stopDeploymentStage(plan: string, stage: string) {
    return this.#call(
      'POST',
      `/api/v1/deployment-plans/${seg(plan)}/stages/${seg(stage)}/stop`,
      deploymentPlanSchema,
    );
  }

  /** `filter.status`: only the devices in that deployment status (FAILED, STOPPED, …). */
  stageDevices(
    plan: string,
    stage: string,
    filter: { status?: string } = {},
    max?: number,
  ): Promise<StageDevice[]> {
    return this.#listAll(
      `/api/v1/deployment-plans/${seg(plan)}/stages/${seg(stage)}/devices`,
      stageDeviceListSchema,
      'devices',
      { status: filter.status },
      max,
    );
  }

  cancelDeviceDeployment(plan: string, device: string) {
    return this.#call(
      'POST',
      `/api/v1/deployment-plans/${seg(plan)}/devices/${seg(device)}/cancel`,
      stageDeviceSchema,
    );
  }

  deploymentEvents(plan: string, max?: number): Promise<DeploymentEventView[]> {
    return this.#listAll(
      `/api/v1/deployment-plans/${seg(plan)}/events`,
      deploymentEventListSchema,
      'events',
      {},
      max,
    );
  }

  // ---- plumbing ----------------------------------------------------------------------------------------------

  async #listAll<S extends z.ZodType, K extends string>(
    path: string,
    schema: S,
    key: K,
    query: Query,
    max = Number.POSITIVE_INFINITY,
  ): Promise<z.output<S> extends Record<K, infer T extends unknown[]> ? T : never> {
    const items: unknown[] = [];
    let nextToken: string | undefined;
    do {
      const limit = Math.min(PAGE_SIZE, max - items.length);
      const page = (await this.#call('GET', path, schema, {
        query: { ...query, limit, nextToken },
      })) as Record<string, unknown>;
      items.push(...(page[key] as unknown[]));
      nextToken = page.nextToken as string | undefined;
    } while (nextToken !== undefined && items.length < max);
    return items as never;
  }

  async #call<S extends z.ZodType>(
    method: string,
    path: string,
    schema: S | null,
    options: CallOptions = {},
  ): Promise<z.output<S>> {
    const url = this.#url(path, options.query);
    const headers: Record<string, string> = {};
    let body: string | undefined;
    if (options.body !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(options.body);
    }
    const response = await this.#send(method, url, {
      headers,
      ...(body !== undefined ? { body } : {}),
      ...(options.bearer !== undefined ? { bearer: options.bearer } : {}),
    });
    return this.#read(response, `${method} ${url.origin}${url.pathname}`, schema);
  }

  #url(path: string, query: Query = {}): URL {
    const url = new URL(`${this.#connection.server}${path}`);
    for (const [name, value] of Object.entries(query)) {
      if (value === undefined) continue;
      for (const v of Array.isArray(value) ? value : [value]) url.searchParams.append(name, String(v));
    }
    return url;
  }

  /** One request; a failure to get any answer becomes ServerUnreachableError. */
  async #send(
    method: string,
    url: URL,
    options: {
      headers?: Record<string, string>;
      body?: string | ReadableStream;
      bearer?: string;
      /** false: no time limit (uploads and downloads of any size). */
      timeout?: false;
    },
  ): Promise<Response> {
    const headers: Record<string, string> = { accept: 'application/json', ...options.headers };
    const bearer = options.bearer ?? this.#connection.token;
    if (bearer !== undefined) headers.authorization = `Bearer ${bearer}`;
    try {
      return await this.#fetch(url, {
        method,
        headers,
        ...(options.body !== undefined ? { body: options.body } : {}),
        ...(typeof options.body === 'object' ? { duplex: 'half' } : {}),
        ...(options.timeout === false ? {} : { signal: AbortSignal.timeout(this.#timeoutMs) }),
      } as RequestInit);
    } catch (error) {
      throw await explainedUnreachable(this.#connection.server, error);
    }
  }

  /** The answer's JSON checked against `schema`; an error answer becomes ServerApiError. */
  async #read<S extends z.ZodType>(
    response: Response,
    where: string,
    schema: S | null,
  ): Promise<z.output<S>> {
    const text = await response.text().catch((error: unknown) => {
      throw unreachable(this.#connection.server, error);
    });
    let json: unknown;
    if (text !== '') {
      try {
        json = JSON.parse(text);
      } catch {
        throw new ServerResponseError(
          `${where} answered HTTP ${response.status} with something that is not JSON; is ${this.#connection.server} an EdgeFleet server?`,
          response.status,
        );
      }
    }
    if (!response.ok) {
      const error = errorBodySchema.safeParse(json);
      if (!error.success) {
        throw new ServerApiError(
          response.status,
          `HTTP${response.status}`,
          `${where} failed with HTTP ${response.status}`,
        );
      }
      throw new ServerApiError(response.status, error.data.code, error.data.message, error.data.details);
    }
    if (schema === null) return undefined as z.output<S>;
    const parsed = schema.safeParse(json);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw new ServerResponseError(
        `${where} answered with an unexpected body (${issue?.path.join('.') || '(root)'}: ${issue?.message}); is the server a compatible EdgeFleet version?`,
      );
    }
    return parsed.data;
  }
}

/** One path segment, encoded (names are validated by the server; this keeps odd input from changing the route). */
function seg(value: string): string {
  return encodeURIComponent(value);
}

/**
 * unreachable(), and when the failure looks like a TLS port, what answers there: the device API (an operator's
 * likely slip: its port is the one enrollment prints) gets a message saying where the operator API is.
 */
async function explainedUnreachable(server: string, error: unknown): Promise<ServerUnreachableError> {
  const plain = unreachable(server, error);
  const code = (error as { cause?: { code?: string } }).cause?.code;
  if (!looksLikeTlsPort(code)) return plain;
  const answering = await probeTlsPort(server);
  if (answering === 'device-api')
    return new ServerUnreachableError(
      `${server} is an EdgeFleet server's device API (mutual TLS, for agents), not its operator API: pass the operator API's URL as --server (or EDGEFLEET_SERVER): the server's "listen" address (by default 127.0.0.1:8080, on the server's own host) (${code})`,
      { cause: error },
    );
  if (answering === 'tls' && new URL(server).protocol === 'http:')
    return new ServerUnreachableError(
      `${plain.message}; that port speaks TLS: use https:// if it is the operator API served with tls`,
      { cause: error },
    );
  return plain;
}

/** Node's codes for a server certificate that no CA it trusts issued (a private CA, a self-signed certificate). */
const UNTRUSTED_CERTIFICATE_CODES = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
]);

/** What to do about a certificate the CLI refused: trust its CA, or use a name it holds. */
function certificateHint(code: string | undefined): string {
  if (code !== undefined && UNTRUSTED_CERTIFICATE_CODES.has(code))
    return "; the server's certificate is not trusted: set NODE_EXTRA_CA_CERTS to the file of the CA that issued it (e.g. NODE_EXTRA_CA_CERTS=/etc/edgefleet/operator-ca.crt)";
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID')
    return "; the server's certificate does not name the host in --server: use a host name or address it holds";
  return '';
}

function unreachable(server: string, error: unknown): ServerUnreachableError {
  const cause = (error as { cause?: { code?: string; message?: string } }).cause;
  const name = (error as Error).name;
  const reason =
    name === 'TimeoutError'
      ? 'no answer in time'
      : (cause?.code ?? cause?.message ?? (error as Error).message ?? String(error));
  return new ServerUnreachableError(
    `cannot reach the EdgeFleet server at ${server}: ${reason}${certificateHint(cause?.code)}`,
    { cause: error },
  );
}
