import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { z } from 'zod';
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
}

const RAW_FILES = 'api/v1/device/captures/files/raw';
/** The form of servers before the raw one (base64 in JSON): used when the server has no raw route. */
const JSON_FILES = 'api/v1/device/captures/files';

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
  /** The server answered that it has no raw route (an older server): the JSON form from then on. */
  #jsonOnly = false;

  constructor(options: EdgeFleetStoreOptions) {
    this.description = `the EdgeFleet control plane at ${options.endpoint}`;
    this.#bucket = options.bucket;
    this.#gate = new RetryAfterGate(options.now);
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
      if (!this.#jsonOnly) {
        try {
          await client.postRaw(RAW_FILES, { key, contentType }, body, storedCaptureFileSchema);
          return;
        } catch (error) {
          if (!isMissingRoute(error)) throw error;
          this.#jsonOnly = true;
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
        const ErrorType = REFUSED_FOR_GOOD.has(error.status ?? 0) ? RefusedByStoreError : Error;
        throw new ErrorType(`${key}: ${error.message}`, { cause: error });
      }
      throw error;
    }
  }

  close(): void {
    this.#api.close();
  }
}

/** The server's 404 for a route it does not have (packages/server/src/http/errors.ts), not one of the upload's own. */
function isMissingRoute(error: unknown): boolean {
  return error instanceof DeviceApiError && error.status === 404 && /: no route POST /.test(error.message);
}
