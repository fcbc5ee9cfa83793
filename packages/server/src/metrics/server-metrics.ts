import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { ConnectionRefusal } from '@edgefleet/core';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { BlobStoreUnavailableError } from '../blobs/index.js';
import { diskFaultComponentOf, isSqliteBusy } from '../errors/dependency-unavailable.js';
import { damagedPostgresCodeOf, isDamagedDatabaseError } from '../storage/index.js';
import { SEND_HEARTBEAT_URLS } from '../heartbeats/index.js';
import type { ClientErrorStatus } from '../http/client-errors.js';
import type { Refusal } from '../http/refusal.js';
import type { TimedOutRequest } from '../http/request-deadline.js';
import { processMetricsRegistry } from './process-metrics.js';

/** Which port a request came in on. */
export type Listener = 'operator' | 'device';

/** Seconds, 1 ms to 60 s: control-plane requests span small reads to uploads bounded by their deadlines. */
export const HTTP_DURATION_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

/** The methods a label may name; any other is `other`, so that a client cannot add series at will. */
const KNOWN_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']);

/** What a request to no route is labelled: the path it asked for is the client's to choose, never a label. */
export const UNMATCHED_ROUTE = 'unmatched';

/** Why a request was refused, by its answer's status (when the part that answered did not say): never a name. */
function refusalOfStatus(status: number): Refusal | 'other' {
  if (status === 401) return 'unauthenticated';
  if (status === 403) return 'forbidden';
  if (status === 400 || status === 404 || status === 409 || status === 415) return 'invalid';
  if (status === 413) return 'too_large';
  if (status === 408) return 'request_timeout';
  if (status === 429) return 'limit_exceeded';
  if (status === 503) return 'unavailable';
  return status >= 500 ? 'server_error' : 'other';
}

/** The refusals that are for a limit (requests_refused_total's reasons); the others are not counted there. */
const LIMIT_REASONS: Partial<Record<Refusal | 'other', string>> = {
  too_large: 'body_too_large',
  request_timeout: 'request_timeout',
  limit_exceeded: 'limit_exceeded',
};

/** One answered request, as counted. */
interface Answered {
  method: string | undefined;
  route: string;
  status: number;
  /** Undefined: not timed (an answer Node gave before the app saw the request). */
  seconds?: number;
  refusal?: Refusal | null | undefined;
  operation?: string | null | undefined;
}

/**
 * The control plane's Prometheus metrics (GET /metrics), in a registry of its own (never prom-client's global
 * one: several servers or tests in one process do not collide). Labels are few and fixed: a route's pattern,
 * never its path (which names devices), no device, token or fleet name.
 */
export class ServerMetrics {
  /** This server's own metrics (the process's are shown beside them: see text()). */
  readonly registry: Registry;
  readonly #processRegistry: Registry | undefined;
  readonly #requests: Counter<'listener' | 'method' | 'route' | 'operation' | 'status_class'>;
  readonly #requestDuration: Histogram<'listener' | 'method' | 'route' | 'operation'>;
  readonly #refused: Counter<'listener' | 'reason'>;
  readonly #evicted: Counter<'listener' | 'cap'>;
  readonly #heartbeatsIngested: Counter;
  readonly #heartbeatsRefused: Counter<'reason'>;
  readonly #captureBytes: Counter;
  readonly #captureFiles: Counter;
  readonly #databaseErrors: Counter<'kind'>;
  readonly #blobStoreErrors: Counter<'kind'>;

  /** `defaultMetrics: false` leaves out prom-client's process and Node.js metrics (tests of one counter). */
  constructor(options: { defaultMetrics?: boolean } = {}) {
    const registry = new Registry();
    this.registry = registry;
    this.#processRegistry = options.defaultMetrics === false ? undefined : processMetricsRegistry();
    const registers = [registry];
    this.#requests = new Counter({
      name: 'edgefleet_server_http_requests_total',
      help: "HTTP requests answered, by listener (operator, device), method, route pattern (unmatched: no route), operation (the SageMaker facade's POST / only) and status class (2xx…5xx)",
      labelNames: ['listener', 'method', 'route', 'operation', 'status_class'],
      registers,
    });
    this.#requestDuration = new Histogram({
      name: 'edgefleet_server_http_request_duration_seconds',
      help: "Time from a request arriving to its answer sent, by listener, method, route pattern and operation (the SageMaker facade's POST / only)",
      labelNames: ['listener', 'method', 'route', 'operation'],
      buckets: HTTP_DURATION_BUCKETS,
      registers,
    });
    this.#refused = new Counter({
      name: 'edgefleet_server_requests_refused_total',
      help: "Connections and requests refused for a limit, by listener and reason: connection_cap_per_address, connection_cap_total (closed on arrival), body_too_large (413), request_timeout (408: not in within its deadline, or headers not in within Node's headersTimeout), limit_exceeded (429: a quota or concurrency cap), headers_too_large (431: over Node's header size limit)",
      labelNames: ['listener', 'reason'],
      registers,
    });
    this.#evicted = new Counter({
      name: 'edgefleet_server_connections_evicted_total',
      help: 'Connections closed to let a newcomer in over a connection cap (an idle one), by listener and cap (per_address, total)',
      labelNames: ['listener', 'cap'],
      registers,
    });
    this.#heartbeatsIngested = new Counter({
      name: 'edgefleet_server_heartbeats_ingested_total',
      help: 'Heartbeats recorded (SendHeartbeat on the device API or the SageMaker facade)',
      registers,
    });
    this.#heartbeatsRefused = new Counter({
      name: 'edgefleet_server_heartbeats_refused_total',
      help: "Heartbeats refused, by reason: unauthenticated (401), forbidden (403: naming another device), invalid, too_large, request_timeout, limit_exceeded, unavailable (503: the database or blob store), server_error, other (the SageMaker facade's by their AWS error type, not its AWS-style status)",
      labelNames: ['reason'],
      registers,
    });
    this.#captureBytes = new Counter({
      name: 'edgefleet_server_capture_received_bytes_total',
      help: 'Bytes of capture files devices uploaded that were stored (a file sent again, already stored, adds nothing)',
      registers,
    });
    this.#captureFiles = new Counter({
      name: 'edgefleet_server_capture_files_stored_total',
      help: 'Capture file uploads answered as stored (repeats of a stored file included)',
      registers,
    });
    this.#databaseErrors = new Counter({
      name: 'edgefleet_server_database_errors_total',
      help: 'Requests failed because the database could not be used, by kind: unavailable (unreachable, out of connections, shutting down, given up), busy (SQLite file held by another writer), damaged (a damaged SQLite file; PostgreSQL SQLSTATE class XX), disk_full, disk_io',
      labelNames: ['kind'],
      registers,
    });
    this.#blobStoreErrors = new Counter({
      name: 'edgefleet_server_blob_store_errors_total',
      help: 'Requests failed because the blob store could not be used, by kind: unreachable, forbidden, credentials, missing_bucket, disk_full, disk_io',
      labelNames: ['kind'],
      registers,
    });
  }

  /** The scrape's answer: this server's metrics, then the process's (Prometheus text format). */
  async text(): Promise<string> {
    const own = await this.registry.metrics();
    return this.#processRegistry === undefined ? own : `${own}\n${await this.#processRegistry.metrics()}`;
  }

  /** Records one answered request; for the app's onResponse hook of `listener` (and the router's refusals). */
  observeRequest(listener: Listener, request: FastifyRequest, reply: FastifyReply): void {
    this.#count(listener, {
      method: request.method,
      // The pattern (`/api/v1/devices/:name`), never the URL; absent when no route matched (the 404 handler).
      route: request.routeOptions.url ?? UNMATCHED_ROUTE,
      status: reply.statusCode,
      seconds: reply.elapsedTime / 1000,
      refusal: request.refusal,
      operation: request.operation,
    });
  }

  /**
   * Records an answer Node gave below the app (`clientError`): its header timeout's 408, a parse error's 400,
   * headers over its limit's 431. Nothing of the request is known, nor to be trusted: route `unmatched`, method
   * `other`, and no duration (the request never began as far as the app knows).
   */
  clientErrorAnswered(listener: Listener, status: ClientErrorStatus): void {
    this.#count(listener, { method: undefined, route: UNMATCHED_ROUTE, status });
    if (status === 431) this.#refused.inc({ listener, reason: 'headers_too_large' });
  }

  /** Records a request answered 408 by its deadline, below the app's hooks (installRequestDeadlines' onTimeout). */
  requestTimedOut(listener: Listener, answered: TimedOutRequest): void {
    this.#count(listener, {
      method: answered.method,
      route: answered.route ?? UNMATCHED_ROUTE,
      status: 408,
      seconds: answered.elapsedMs / 1000,
    });
  }

  #count(listener: Listener, answered: Answered): void {
    const { status, route } = answered;
    const method =
      answered.method !== undefined && KNOWN_METHODS.has(answered.method) ? answered.method : 'other';
    const statusClass = `${Math.min(Math.max(Math.floor(status / 100), 1), 5)}xx`;
    // Only where a route set it (from its fixed list): no empty label on every other series.
    const operation = answered.operation == null ? {} : { operation: answered.operation };
    this.#requests.inc({ listener, method, route, ...operation, status_class: statusClass });
    if (answered.seconds !== undefined)
      this.#requestDuration.observe({ listener, method, route, ...operation }, answered.seconds);
    if (status < 300) {
      if (SEND_HEARTBEAT_URLS.includes(route)) this.#heartbeatsIngested.inc();
      return;
    }
    const refusal = answered.refusal ?? refusalOfStatus(status);
    const limit = LIMIT_REASONS[refusal];
    if (limit !== undefined) this.#refused.inc({ listener, reason: limit });
    if (SEND_HEARTBEAT_URLS.includes(route)) this.#heartbeatsRefused.inc({ reason: refusal });
  }

  /**
   * A connection over a cap: refused on arrival, or let in by closing an idle one (`idleClosed`), which is no
   * refusal and is counted apart.
   */
  connectionOverCap(listener: Listener, refusal: ConnectionRefusal): void {
    const cap = refusal.refusedBy === 'total' ? 'total' : 'per_address';
    if (refusal.idleClosed === true) this.#evicted.inc({ listener, cap });
    else this.#refused.inc({ listener, reason: `connection_cap_${cap}` });
  }

  /** A capture file was answered as stored, `bytes` of it new. */
  captureStored(bytes: number): void {
    this.#captureFiles.inc();
    if (bytes > 0) this.#captureBytes.inc(bytes);
  }

  /**
   * Shows the upload slots for large capture bodies: how many are taken, of `total`. All taken for long means
   * devices are told to retry (429) and captures wait on them: raise captures.maxConcurrentUploads or find the
   * slow uploads.
   */
  watchUploadSlots(slots: { readonly inUse: number }, total: number): void {
    new Gauge({
      name: 'edgefleet_server_capture_upload_slots_in_use',
      help: 'Upload slots for large capture bodies taken now (a body being read from a device), server-wide',
      registers: [this.registry],
      collect() {
        this.set(slots.inUse);
      },
    });
    new Gauge({
      name: 'edgefleet_server_capture_upload_slots',
      help: 'Upload slots for large capture bodies, server-wide (captures.maxConcurrentUploads)',
      registers: [this.registry],
    }).set(total);
  }

  /** A request failed by an outage of `component` (the HTTP layer's 503), `error` its cause. */
  outage(component: string, error: unknown): void {
    const disk = diskFaultComponentOf(error);
    const diskKind = disk === undefined ? undefined : disk.fault === 'full' ? 'disk_full' : 'disk_io';
    if (component === 'database')
      this.#databaseErrors.inc({
        kind:
          diskKind ??
          (isSqliteBusy(error)
            ? 'busy'
            : damagedPostgresCodeOf(error) !== undefined || isDamagedDatabaseError(error)
              ? 'damaged'
              : 'unavailable'),
      });
    else if (component === 'blobStore')
      this.#blobStoreErrors.inc({
        kind:
          diskKind ??
          (error instanceof BlobStoreUnavailableError ? error.problem.replace('-', '_') : 'unreachable'),
      });
  }
}
