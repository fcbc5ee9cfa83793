import { Agent, request } from 'node:https';
import type { z } from 'zod';
import { deviceApiErrorSchema } from '@edgefleet/core';

/** The device's TLS identity: its certificate and key, and the CA the server's certificate must chain to. */
export interface DeviceTlsIdentity {
  certPem: string;
  keyPem: string;
  /** Absent: the system's CAs (a server with a publicly trusted certificate). */
  caPem?: string;
}

/**
 * Why a call failed, which decides what the client does next:
 * - unreachable: no answer (refused, reset, DNS, timeout, TLS handshake) — retry with backoff;
 * - refused: 401/403 — the server does not accept this device's certificate (revoked, expired, unknown);
 * - rejected: another 4xx — the request itself is wrong (a bug or a version mismatch);
 * - server: 5xx or an answer that is not the expected JSON — retry with backoff.
 */
export type DeviceApiFailure = 'unreachable' | 'refused' | 'rejected' | 'server';

export class DeviceApiError extends Error {
  constructor(
    readonly failure: DeviceApiFailure,
    message: string,
    readonly status?: number,
    readonly code?: string,
    options?: {
      cause?: unknown;
      /** The answer's Retry-After header as sent (a 429 or 503 may carry one): when to try again. */
      retryAfter?: string;
    },
  ) {
    super(message, options);
    this.name = 'DeviceApiError';
    this.retryAfter = options?.retryAfter;
  }

  readonly retryAfter: string | undefined;
}

/** The HTTPS agent of the device's mutual-TLS identity: one kept-alive connection at most, TLS 1.2 or later. */
export function deviceHttpsAgent(tls: DeviceTlsIdentity): Agent {
  return new Agent({
    cert: tls.certPem,
    key: tls.keyPem,
    ...(tls.caPem !== undefined ? { ca: tls.caPem } : {}),
    keepAlive: true,
    maxSockets: 1,
    minVersion: 'TLSv1.2',
  });
}

/** Largest answer body read; the device API's answers are tiny. */
const MAX_RESPONSE_BYTES = 1024 * 1024;

/**
 * A mutual-TLS JSON client of the server's device API: `POST <endpoint>/<Operation>` with a JSON body. One
 * kept-alive connection at most; every call bounded by `timeoutMs` and abortable.
 */
export class DeviceApiClient {
  readonly #endpoint: URL;
  readonly #agent: Agent;
  readonly #timeoutMs: number;

  constructor(endpoint: string, tls: DeviceTlsIdentity, options: { timeoutMs: number }) {
    this.#endpoint = new URL(endpoint.endsWith('/') ? endpoint : `${endpoint}/`);
    if (this.#endpoint.protocol !== 'https:')
      throw new Error(`the device API endpoint ${endpoint} is not https://; the device API needs mutual TLS`);
    this.#agent = deviceHttpsAgent(tls);
    this.#timeoutMs = options.timeoutMs;
  }

  async post<S extends z.ZodType>(
    operation: string,
    body: unknown,
    schema: S,
    signal?: AbortSignal,
  ): Promise<z.output<S>> {
    const url = new URL(operation.replace(/^\/+/, ''), this.#endpoint);
    return this.#send(operation, url, 'application/json', Buffer.from(JSON.stringify(body)), schema, signal);
  }

  /** `GET <endpoint>/<operation>`: the answer is JSON, read as post() reads it. */
  async get<S extends z.ZodType>(operation: string, schema: S, signal?: AbortSignal): Promise<z.output<S>> {
    const url = new URL(operation.replace(/^\/+/, ''), this.#endpoint);
    return this.#send(operation, url, undefined, undefined, schema, signal);
  }

  /**
   * `POST <endpoint>/<operation>?<query>` with `body` as it is (application/octet-stream, no JSON or base64
   * around it): for files. The answer is JSON, read as post() reads it.
   */
  async postRaw<S extends z.ZodType>(
    operation: string,
    query: Record<string, string>,
    body: Buffer,
    schema: S,
    signal?: AbortSignal,
  ): Promise<z.output<S>> {
    const url = new URL(operation.replace(/^\/+/, ''), this.#endpoint);
    for (const [name, value] of Object.entries(query)) url.searchParams.set(name, value);
    return this.#send(operation, url, 'application/octet-stream', body, schema, signal);
  }

  async #send<S extends z.ZodType>(
    operation: string,
    url: URL,
    /** Undefined with `payload`: a GET. */
    contentType: string | undefined,
    payload: Buffer | undefined,
    schema: S,
    signal: AbortSignal | undefined,
  ): Promise<z.output<S>> {
    const { status, text, retryAfter } = await new Promise<{
      status: number;
      text: string;
      retryAfter: string | undefined;
    }>((resolve, reject) => {
      const fail = (error: unknown) =>
        reject(
          error instanceof DeviceApiError
            ? error
            : new DeviceApiError('unreachable', describeNetworkError(error), undefined, undefined, {
                cause: error,
              }),
        );
      if (signal?.aborted) return fail(new Error('stopped'));
      const req = request(
        url,
        {
          method: payload === undefined ? 'GET' : 'POST',
          agent: this.#agent,
          headers:
            payload === undefined ? {} : { 'content-type': contentType, 'content-length': payload.length },
          timeout: this.#timeoutMs,
          ...(signal ? { signal } : {}),
        },
        (res) => {
          const chunks: Buffer[] = [];
          let size = 0;
          res.on('data', (chunk: Buffer) => {
            size += chunk.length;
            if (size > MAX_RESPONSE_BYTES) {
              res.destroy(
                new DeviceApiError(
                  'server',
                  `the answer to ${operation} is larger than ${MAX_RESPONSE_BYTES} bytes`,
                ),
              );
              return;
            }
            chunks.push(chunk);
          });
          res.on('end', () =>
            resolve({
              status: res.statusCode ?? 0,
              text: Buffer.concat(chunks).toString('utf8'),
              retryAfter: singleHeader(res.headers['retry-after']),
            }),
          );
          res.on('error', fail);
        },
      );
      req.on('timeout', () => req.destroy(new Error(`no answer within ${this.#timeoutMs} ms`)));
      req.on('error', fail);
      req.end(payload);
    });

    let json: unknown;
    try {
      json = text === '' ? {} : JSON.parse(text);
    } catch {
      throw new DeviceApiError(
        'server',
        `${operation} answered HTTP ${status} with a body that is not JSON`,
        status,
        undefined,
        retryAfter === undefined ? undefined : { retryAfter },
      );
    }
    if (status < 200 || status >= 300) {
      const error = deviceApiErrorSchema.safeParse(json);
      const code = error.success ? error.data.code : undefined;
      const message = error.success ? (error.data.message ?? error.data.Message) : undefined;
      const failure: DeviceApiFailure =
        status === 401 || status === 403 ? 'refused' : status >= 400 && status < 500 ? 'rejected' : 'server';
      throw new DeviceApiError(
        failure,
        `${operation} failed with HTTP ${status}${code ? ` ${code}` : ''}${message ? `: ${message}` : ''}`,
        status,
        code,
        retryAfter === undefined ? undefined : { retryAfter },
      );
    }
    const parsed = schema.safeParse(json);
    if (!parsed.success)
      throw new DeviceApiError(
        'server',
        `${operation} answered with an unexpected body: ${parsed.error.message}`,
        status,
      );
    return parsed.data;
  }

  /** Closes the kept-alive connection. */
  close(): void {
    this.#agent.destroy();
  }
}

function describeNetworkError(error: unknown): string {
  const e = error as NodeJS.ErrnoException & { reason?: string };
  if (e?.name === 'AbortError') return 'stopped';
  const text = e?.reason ?? e?.message;
  // Node's messages name the code already ('connect ECONNREFUSED 127.0.0.1:8443'): said once.
  const parts = [text?.includes(e?.code ?? '\0') ? undefined : e?.code, text].filter(
    (p): p is string => typeof p === 'string' && p !== '',
  );
  return parts.length > 0 ? parts.join(': ') : String(error);
}

function singleHeader(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}
