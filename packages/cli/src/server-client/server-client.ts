import type { z } from 'zod';
import type { ServerConnection } from './connection.js';
import {
  apiTokenListSchema,
  certificateListSchema,
  createdApiTokenSchema,
  deviceCaSchema,
  deviceListSchema,
  deviceMetricsSchema,
  deviceSchema,
  enrollmentTokenSchema,
  errorBodySchema,
  fleetListSchema,
  fleetReportSchema,
  fleetSchema,
  issuedCertificateSchema,
  registeredDevicesSchema,
  revokedSchema,
  whoamiSchema,
  type ApiToken,
  type DeviceSummary,
  type Fleet,
  type Tag,
} from './schemas.js';

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
  constructor(message: string) {
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
  status?: 'online' | 'offline';
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

  /** Exchanges an enrollment token and a CSR for the device's certificate (no API token involved). */
  enroll(enrollmentToken: string, csrPem: string) {
    return this.#call('POST', '/api/v1/enroll', issuedCertificateSchema, {
      body: { csr: csrPem },
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

  whoami() {
    return this.#call('GET', '/api/v1/whoami', whoamiSchema);
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
    const url = new URL(`${this.#connection.server}${path}`);
    for (const [name, value] of Object.entries(options.query ?? {})) {
      if (value === undefined) continue;
      for (const v of Array.isArray(value) ? value : [value]) url.searchParams.append(name, String(v));
    }
    const headers: Record<string, string> = { accept: 'application/json' };
    const bearer = options.bearer ?? this.#connection.token;
    if (bearer !== undefined) headers.authorization = `Bearer ${bearer}`;
    let body: string | undefined;
    if (options.body !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(options.body);
    }
    const where = `${method} ${url.origin}${url.pathname}`;
    let response: Response;
    try {
      response = await this.#fetch(url, {
        method,
        headers,
        ...(body !== undefined ? { body } : {}),
        signal: AbortSignal.timeout(this.#timeoutMs),
      });
    } catch (error) {
      throw unreachable(this.#connection.server, error);
    }
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

function unreachable(server: string, error: unknown): ServerUnreachableError {
  const cause = (error as { cause?: { code?: string; message?: string } }).cause;
  const name = (error as Error).name;
  const reason =
    name === 'TimeoutError'
      ? 'no answer in time'
      : (cause?.code ?? cause?.message ?? (error as Error).message ?? String(error));
  return new ServerUnreachableError(`cannot reach the EdgeFleet server at ${server}: ${reason}`, {
    cause: error,
  });
}
