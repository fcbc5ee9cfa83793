import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { z } from 'zod';
import type { CaptureLogger } from './capture-metrics.js';
import { currentDeviceApi, DeviceApiError, type CurrentTls, type DeviceApiClient } from '../fleet/index.js';
import {
  RefusedByStoreError,
  RetryAfterGate,
  RetryLaterError,
  retryAfterMs,
  type ObjectStore,
} from './object-store.js';

/** The control plane's answer to a capture file (packages/server/src/captures/routes.ts). */
const storedCaptureFileSchema = z.looseObject({
  location: z.string(),
  records: z.number(),
  duplicates: z.number(),
});

export interface EdgeFleetStoreOptions {
  /** The device API (`sagemaker_edge_core_endpoint_override`), https://. */
  endpoint: string;
  /** The device's enrolled identity, as the fleet client uses it. */
  certFile: string;
  keyFile: string;
  caFile?: string;
  /** The fleet's output bucket (`sagemaker_edge_provider_s3_bucket_name`), for the records' `data-ref` URLs. */
  bucket?: string;
  /** Per upload. Default 60 s. */
  timeoutMs?: number;
  /**
   * The monotonic clock (ms) Retry-After waits and the raw-route re-probe are measured on (tests). Default
   * performance.now. An HTTP-date Retry-After is turned into a wait with the wall clock once, when it arrives.
   */
  now?: () => number;
  /** Where the switch to the JSON form (and back) is told. */
  logger?: Pick<CaptureLogger, 'info' | 'warn'>;
}

const RAW_FILES = 'api/v1/device/captures/files/raw';
/** The form of servers before the raw one (base64 in JSON): used when the server has no raw route. */
const JSON_FILES = 'api/v1/device/captures/files';

/**
 * How long the JSON form is used after the raw route was missing or refused (411, 415): then the raw route is
 * tried again, so that one answer (an old replica during a rolling upgrade, a proxy since reconfigured) does not
 * cost base64 for the rest of the agent's life.
 */
export const RAW_REPROBE_MS = 60 * 60 * 1000;
/**
 * The raw route's answers that the JSON form can get past: 411, from a proxy that forwards the body chunked
 * (dropping Content-Length, which the JSON form does not need), and 415, from one that rewrites its type.
 */
const RAW_REFUSED = new Set([411, 415]);

/** The control plane's answers that no retry of the same file can change: 400, 403, 413. */
const REFUSED_FOR_GOOD = new Set([400, 403, 413]);
/** Answers whose Retry-After the agent honours. */
const ASKS_TO_WAIT = new Set([429, 503]);

/**
 * Destination `EdgeFleet`: capture files go to the control plane over the device's mutual-TLS identity
 * (`POST /api/v1/device/captures/files/raw`, the file as the body), which writes them to the fleet's output
 * location. No cloud credentials on the device. Failures throw, so the capture service keeps the batch in its
 * offline spool and retries (at least once; the server stores each capture id once). A 429 or 503 with
 * Retry-After throws RetryLaterError, and no request is made until that time has passed.
 */
export class EdgeFleetObjectStore implements ObjectStore {
  readonly description: string;
  readonly #bucket: string | undefined;
  readonly #api: CurrentTls<DeviceApiClient>;
  readonly #gate: RetryAfterGate;
  readonly #now: () => number;
  readonly #logger: Pick<CaptureLogger, 'info' | 'warn'> | undefined;
  /**
   * Until when (on #now) files go in the JSON form: the server had no raw route (an older server), or a proxy
   * in between refused the raw body (411, 415).
   */
  #jsonUntil = Number.NEGATIVE_INFINITY;

  constructor(options: EdgeFleetStoreOptions) {
    this.description = `the EdgeFleet control plane at ${options.endpoint}`;
    this.#bucket = options.bucket;
    this.#now = options.now ?? (() => performance.now());
    this.#gate = new RetryAfterGate(this.#now);
    this.#logger = options.logger;
    // Read now too, so that a missing or unreadable file stops the agent at start with its name.
    for (const file of [options.certFile, options.keyFile, options.caFile]) {
      if (file !== undefined) readFileSync(file);
    }
    // Read before every upload: a certificate the fleet client renewed (or a re-enrollment) is used at once.
    this.#api = currentDeviceApi(
      options.endpoint,
      async () => ({
        certPem: await readFile(options.certFile, 'utf8'),
        keyPem: await readFile(options.keyFile, 'utf8'),
        ...(options.caFile !== undefined && { caPem: await readFile(options.caFile, 'utf8') }),
      }),
      { timeoutMs: options.timeoutMs ?? 60_000 },
    );
  }

  /** Where the server puts the key: the fleet's bucket (its output location). */
  urlFor(key: string): string {
    return this.#bucket === undefined ? `edgefleet:///${key}` : `s3://${this.#bucket}/${key}`;
  }

  async put(key: string, body: Buffer, contentType: string): Promise<void> {
    this.#gate.check(this.description);
    try {
      const client = await this.#api.get();
      const json = this.#now() < this.#jsonUntil;
      if (!json) {
        try {
          await client.postRaw(RAW_FILES, { key, contentType }, body, storedCaptureFileSchema);
          if (this.#jsonUntil !== Number.NEGATIVE_INFINITY) {
            this.#jsonUntil = Number.NEGATIVE_INFINITY;
            this.#logger?.info(
              { event: 'capture_raw_upload' },
              `${this.description} takes raw uploads again`,
            );
          }
          return;
        } catch (error) {
          const why = rawRefusal(error);
          if (why === undefined) throw error;
          this.#jsonUntil = this.#now() + RAW_REPROBE_MS;
          this.#logger?.warn(
            {
              event: 'capture_json_fallback',
              status: (error as DeviceApiError).status,
              retryRawInMs: RAW_REPROBE_MS,
            },
            `${this.description} ${why}: capture files go as base64 JSON (POST /${JSON_FILES}) for the next ${RAW_REPROBE_MS / 60_000} min, then the raw form is tried again`,
          );
        }
      }
      await client.post(
        JSON_FILES,
        { key, contentType, data: body.toString('base64') },
        storedCaptureFileSchema,
      );
    } catch (error) {
      if (error instanceof DeviceApiError) {
        const wait = ASKS_TO_WAIT.has(error.status ?? 0)
          ? retryAfterMs(error.retryAfter, Date.now())
          : undefined;
        if (wait !== undefined) {
          this.#gate.waitFor(wait);
          throw new RetryLaterError(`${key}: ${error.message}`, wait, { cause: error });
        }
        // A bad file, a key outside the fleet's output, or one too large: refused whatever the retries (unlike a
        // quota, a timeout or a fleet output the operator has yet to fix, which a later retry can get past).
        if (REFUSED_FOR_GOOD.has(error.status ?? 0))
          throw new RefusedByStoreError(`${key}: ${error.message}`, {
            cause: error,
            ...(error.status !== undefined && { status: error.status }),
            ...(error.code !== undefined && { code: error.code }),
          });
        throw new Error(`${key}: ${error.message}`, { cause: error });
      }
      throw error;
    }
  }

  close(): void {
    this.#api.close();
  }
}

/**
 * Why the raw form cannot be used but the JSON form can, or undefined: the server's own 404 for a route it does
 * not have (packages/server/src/http/errors.ts; an older server), not one of the upload's own 404s nor a proxy's
 * page; or a 411 or 415 (a proxy that re-frames or re-types the body).
 */
function rawRefusal(error: unknown): string | undefined {
  if (!(error instanceof DeviceApiError)) return undefined;
  if (
    error.status === 404 &&
    error.code === 'NotFound' &&
    /: no route POST \S*\/captures\/files\/raw\b/.test(error.message)
  )
    return 'has no raw upload route (an older server)';
  if (RAW_REFUSED.has(error.status ?? 0))
    return `refused the raw upload with HTTP ${error.status} (a proxy in between that re-frames or re-types the body?)`;
  return undefined;
}
