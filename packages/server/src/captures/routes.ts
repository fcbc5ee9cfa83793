import type { Readable } from 'node:stream';
import type { FastifyPluginAsync } from 'fastify';
import type { Kysely } from 'kysely';
import { z } from 'zod';
import type { BlobStore, S3ConnectionOptions } from '../blobs/index.js';
import { DomainError } from '../errors/index.js';
import { ApiError } from '../http/errors.js';
import { withRetryAfter } from '../http/retry-after.js';
import { defineRoute } from '../http/routes.js';
import { requireDevice } from '../identity/index.js';
import { hasS3, type ServerConfig } from '../config/index.js';
import type { PackageSigningIdentity } from '../packaging/index.js';
import type { DatabaseSchema } from '../storage/schema.js';
import { captureBodyLimitBytes } from './body-limit.js';
import {
  CaptureIngest,
  checkCaptureFileSize,
  type CaptureLimits,
  type CaptureWriter,
} from './capture-ingest.js';
import { FleetOutputs, parseOutputLocation } from './fleet-output.js';
import type { UploadSlots } from './upload-slots.js';

const CAPTURE_FILES_URL = '/api/v1/device/captures/files';
/** The same upload with the file as the raw body (what the agent sends); the JSON form stays for older agents. */
const RAW_CAPTURE_FILES_URL = '/api/v1/device/captures/files/raw';
const RAW_CONTENT_TYPE = 'application/octet-stream';
/** What a device told "no upload slot free" waits: an upload takes seconds at most. */
const BUSY_RETRY_AFTER_SECONDS = 5;
/**
 * Bytes of a capture body allowed for what is not the file's base64: the key (1024 characters, twice that with
 * escaped slashes), the content type and the JSON around them. A body's file is at least 3/4 of the rest.
 */
const MAX_JSON_OVERHEAD_BYTES = 4096;

/** The smallest file a capture body of `contentLength` bytes can carry (base64 is 4 bytes per 3). */
export function leastFileBytesIn(contentLength: number): number {
  return Math.max(0, Math.floor(((contentLength - MAX_JSON_OVERHEAD_BYTES) * 3) / 4) - 2);
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

const captureKeySchema = z
  .string()
  .min(1)
  .max(1024)
  .describe(
    'The capture key: <prefix>/<fleet>/<model>/YYYY/MM/DD/HH/<file> (packages/agent/docs/capture.md)',
  );
/** The stored object's Content-Type: printable ASCII, so that it can never break the S3 request's headers. */
const captureContentTypeSchema = z
  .string()
  .min(1)
  .max(200)
  .regex(/^[\x20-\x7e]+$/, 'expected a media type such as application/jsonl (printable ASCII)')
  .describe("The file's media type, stored with it");

export const captureFileBodySchema = z.strictObject({
  key: captureKeySchema,
  contentType: captureContentTypeSchema,
  data: z.string().regex(BASE64, 'expected base64').describe('The file, base64'),
});

/** The raw form's query: what the JSON form's fields other than `data` say. */
export const rawCaptureFileQuerySchema = z.strictObject({
  key: captureKeySchema,
  contentType: captureContentTypeSchema,
});

export const storedCaptureFileSchema = z.object({
  location: z.string().describe('Where the file was written (s3://… or file://…)'),
  records: z.int().describe('Capture records stored for the first time'),
  duplicates: z.int().describe('Records left out: that capture was stored before'),
  bytes: z.int(),
});

export const agentSettingsSchema = z.object({
  deviceName: z.string(),
  fleetName: z.string(),
  packageSigningRoot: z.object({ certificatePem: z.string(), fingerprintSha256: z.string() }),
  captureOutputLocation: z.string().optional().describe("The fleet's output location, s3://bucket/prefix"),
  captureBucket: z.string().optional().describe('sagemaker_edge_provider_s3_bucket_name'),
  captureFolderPrefix: z
    .string()
    .optional()
    .describe(
      'sagemaker_edge_core_folder_prefix; "" for an output at the bucket root (the agent config writes that "/")',
    ),
  heartbeatIntervalSeconds: z
    .int()
    .describe(
      "The server's heartbeat interval (edgefleet_heartbeat_interval_seconds): devices are offline after a few missed",
    ),
});

/**
 * Device routes (mutual TLS): `POST /api/v1/device/captures/files` takes one capture file (a manifest of
 * records or a side file) and writes it under the device's fleet's output location. What EdgeFleet's agent
 * destination `EdgeFleet` calls; registered with one line on the device app.
 */
export const captureDeviceRoutes: FastifyPluginAsync<{
  db: Kysely<DatabaseSchema>;
  /** This server process as the writer of capture objects (capture-ingest.ts). */
  writer?: CaptureWriter;
  blobs: BlobStore;
  config: Pick<ServerConfig, 'blobLocation' | 's3' | 'captures' | 'heartbeat'>;
  /** The server's S3 connection (fleet buckets are reached the same way); used only when it has S3 (hasS3). */
  s3: S3ConnectionOptions;
  /** The package-signing root, handed to devices at set-up (their trust folder). */
  signing: Pick<PackageSigningIdentity, 'rootCertificatePem' | 'rootFingerprintSha256'>;
  /** Hears each upload answered as stored, with the bytes it newly stored (metrics/). */
  onStored?: (bytes: number) => void;
  /** The slots for large bodies (captures.maxConcurrentUploads…), read by metrics/ as well. */
  uploadSlots: UploadSlots;
}> = async (app, deps) => {
  const { blobLocation } = deps.config;
  const outputs = new FleetOutputs(deps.blobs, hasS3(deps.config) ? deps.s3 : undefined, {
    serverBlobs: blobLocation.kind === 's3' ? blobLocation : undefined,
    uploadSlots: deps.config.captures.maxConcurrentUploads,
    timeouts: {
      socketTimeoutMs: deps.config.captures.outputS3SocketTimeoutMs,
      connectionTimeoutMs: deps.config.captures.outputS3ConnectionTimeoutMs,
    },
    // One SDK warning per cut-off streamed upload, which a device causes at will: in the log, at debug.
    warn: (message) => app.log.debug({ component: 'fleet-output-s3' }, message),
  });
  const limits: CaptureLimits = deps.config.captures;
  const ingest = new CaptureIngest({ db: deps.db, outputs, limits, log: app.log, writer: deps.writer });
  app.addHook('onClose', async () => outputs.close());

  // The raw form's body reaches its handler as the request stream, which CaptureIngest streams to the store. Only
  // this plugin's routes (the captures) get the parser, and only the raw route takes such a body.
  app.addContentTypeParser(RAW_CONTENT_TYPE, (request, payload, done) => {
    if (request.routeOptions.url === RAW_CAPTURE_FILES_URL) done(null, payload);
    else
      done(
        new ApiError(
          415,
          'UnsupportedMediaType',
          `${request.routeOptions.url ?? 'this route'} takes JSON; send a raw ${RAW_CONTENT_TYPE} body to ${RAW_CAPTURE_FILES_URL}`,
        ),
      );
  });

  // Before a capture body is read (the device is authenticated by then): a large body needs an upload slot, and
  // a body that would pass the device's remaining daily quota by its length alone is refused. Refusals close
  // the connection, so that the unread body is not read either.
  const { largeBodyBytes, maxConcurrentUploads, maxConcurrentUploadsPerDevice } = deps.config.captures;
  const slots = deps.uploadSlots;
  app.addHook('preParsing', async (request, reply, payload) => {
    const url = request.routeOptions.url;
    if (url !== CAPTURE_FILES_URL && url !== RAW_CAPTURE_FILES_URL) return payload;
    const raw = url === RAW_CAPTURE_FILES_URL;
    const device = requireDevice(request);
    const header = request.headers['content-length'];
    const contentLength = header === undefined ? undefined : Number(header);
    const known = contentLength !== undefined && Number.isFinite(contentLength);
    if (raw) {
      // The query is not validated yet (the route's schema comes later): the key is only named in a refusal.
      const key = (request.query as { key?: unknown } | undefined)?.key;
      checkRawBody(
        typeof key === 'string' && key.length <= 1024 ? key : undefined,
        request.headers['content-type'],
        known ? contentLength : undefined,
        limits,
      );
    }
    // The least the body's file can be: the raw body is the file; a JSON body's base64 is 4/3 of it.
    const least = !known ? 0 : raw ? contentLength : leastFileBytesIn(contentLength);
    const refuse = (seconds: number, message: string, details: Record<string, unknown>) => {
      reply.header('connection', 'close').header('retry-after', String(seconds));
      return new DomainError('LimitExceeded', message, { ...details, retryAfterSeconds: seconds });
    };
    /** The refusal when the device's remaining quota today cannot take the body (or nothing at all is left). */
    const overQuota = async (evenEmpty: boolean) => {
      if (least <= 0 && !evenEmpty) return undefined;
      const remaining = await ingest.remainingToday(device.deviceName);
      if (least <= remaining.bytes && !(evenEmpty && remaining.bytes === 0)) return undefined;
      // A raw file sent again to a key where this device stored it (a retry after a lost answer) costs nothing.
      // (A JSON body names its key inside: it is judged by its length.)
      const key = raw ? (request.query as { key?: unknown } | undefined)?.key : undefined;
      if (known && typeof key === 'string' && (await ingest.isStoredRetry(device, key, contentLength)))
        return undefined;
      return refuse(
        remaining.renewsInSeconds,
        `device ${device.deviceName} may upload ${remaining.bytes} more capture bytes today (UTC, captures.dailyQuotaBytesPerDevice); this body of ${contentLength ?? 'unknown'} bytes carries at least ${least}; the agent keeps the batch and retries after the quota renews`,
        { remainingBytes: remaining.bytes, ...(known && { contentLength }) },
      );
    };
    // The slot is taken before anything is awaited, and its release is tied to the connection at once: a
    // client that went away during the awaited authentication (its 'close' already emitted) or that goes away
    // during the quota read below gives the slot back, instead of holding it until a restart. (A refused slot
    // awaits one read, of the quota, before its answer: it holds nothing meanwhile.)
    if (!(contentLength !== undefined && contentLength <= largeBodyBytes)) {
      const slot = slots.take(device.deviceName);
      if ('refused' in slot) {
        // A device over its quota learns when the quota renews (hours away, maybe), not to retry in seconds for
        // a slot and be refused for the quota then.
        const quota = await overQuota(true);
        if (quota !== undefined) throw quota;
        throw refuse(
          BUSY_RETRY_AFTER_SECONDS,
          slot.refused === 'device'
            ? `device ${device.deviceName} is already uploading ${maxConcurrentUploadsPerDevice} large capture files (captures.maxConcurrentUploadsPerDevice); send one at a time and retry this one later`
            : `the server is reading ${maxConcurrentUploads} large capture files from devices (captures.maxConcurrentUploads); retry later`,
          { limit: slot.refused === 'device' ? 'perDevice' : 'server' },
        );
      }
      // Given back once the answer is sent or the connection is gone, whichever comes first (release is idempotent).
      reply.raw.once('close', slot.release);
      if (request.raw.destroyed || reply.raw.destroyed || request.raw.socket.destroyed) {
        slot.release();
        return payload;
      }
    }
    const quota = await overQuota(false);
    if (quota !== undefined) throw quota;
    return payload;
  });
  const stored = <T extends { bytes: number }>(answer: T): T => {
    deps.onStored?.(answer.bytes);
    return answer;
  };
  const limitsText =
    '413 over captures.maxFileBytes, 429 (with Retry-After) over the per-device daily quota, judged by ' +
    'Content-Length before the body is read, and when no upload slot is free for a large body ' +
    '(captures.maxConcurrentUploads, captures.maxConcurrentUploadsPerDevice; a device also over its quota is ' +
    "told when the quota renews); 403 for a key outside the fleet's output prefix; 400 for a record naming " +
    'another device or fleet; 403 for a key another device stored, or other content at one this device ' +
    'stored (objects are written once; the same file again is answered as stored, nothing written); 409 ' +
    "while another upload of the same key by this device is still being written, or while the fleet's " +
    'output location is unusable.';
  defineRoute(app, {
    method: 'POST',
    url: CAPTURE_FILES_URL,
    auth: 'device',
    tag: 'device',
    summary: "Upload a capture file to the device's fleet output location (idempotent by capture id)",
    description:
      'Body: {"key", "contentType", "data" (base64)}: the form of agents before the raw one (POST ' +
      `${RAW_CAPTURE_FILES_URL}), kept for them. A manifest (.jsonl) holds one record per line; records ` +
      `whose capture id was stored before from another manifest are left out. ${limitsText}`,
    body: captureFileBodySchema,
    response: storedCaptureFileSchema,
    bodyLimit: captureBodyLimitBytes(limits.maxFileBytes),
    handler: async ({ body, request, reply }) =>
      withRetryAfter(reply, () =>
        ingest
          .store(requireDevice(request), {
            key: body.key,
            contentType: body.contentType,
            body: Buffer.from(body.data, 'base64'),
          })
          .then(stored),
      ),
  });
  defineRoute(app, {
    method: 'POST',
    url: RAW_CAPTURE_FILES_URL,
    auth: 'device',
    tag: 'device',
    summary:
      "Upload a capture file as the raw body to the device's fleet output location (idempotent by capture id)",
    description:
      `Body: the file (${RAW_CONTENT_TYPE}, with Content-Length; else 415, 411); its key and media type in the ` +
      'query (?key=…&contentType=…). A side file over captures.largeBodyBytes (it holds an upload slot) is ' +
      'streamed to the output as it arrives; a smaller one is read whole first, and so is a manifest (.jsonl), ' +
      `which is handled as in the JSON form. The device listener's request deadline covers the body: one not ` +
      `in by then is cut off (408), and nothing of it is stored. ${limitsText}`,
    query: rawCaptureFileQuerySchema,
    consumes: [RAW_CONTENT_TYPE],
    response: storedCaptureFileSchema,
    handler: async ({ query, request, reply }) =>
      withRetryAfter(reply, () =>
        ingest
          .storeStream(requireDevice(request), {
            key: query.key,
            contentType: query.contentType,
            body: request.body as Readable,
            // Checked in preParsing: present, a number, within captures.maxFileBytes.
            contentLength: Number(request.headers['content-length']),
          })
          .then(stored),
      ),
  });

  defineRoute(app, {
    method: 'GET',
    url: '/api/v1/device/agent-settings',
    auth: 'device',
    tag: 'device',
    summary:
      "What an enrolled agent needs besides its certificate: the package-signing root, and its fleet's capture output",
    description:
      '"edgefleet device enroll" calls it with the new certificate (which also proves the certificate works) and ' +
      'writes the answer into the agent config and the trust folder.',
    response: agentSettingsSchema,
    handler: async ({ request }) => {
      const device = requireDevice(request);
      const fleet = await deps.db
        .selectFrom('fleets')
        .select('output_s3_location')
        .where('name', '=', device.fleetName)
        .executeTakeFirst();
      const output = fleet && parseOutputLocation(fleet.output_s3_location);
      return {
        deviceName: device.deviceName,
        fleetName: device.fleetName,
        packageSigningRoot: {
          certificatePem: deps.signing.rootCertificatePem,
          fingerprintSha256: deps.signing.rootFingerprintSha256,
        },
        heartbeatIntervalSeconds: deps.config.heartbeat.intervalSeconds,
        ...(fleet && { captureOutputLocation: fleet.output_s3_location }),
        ...(output && {
          captureBucket: output.bucket,
          // '' included (an output at the bucket root): the client must not keep a prefix it had.
          captureFolderPrefix: output.prefix,
        }),
      };
    },
  });
};

/**
 * The raw form's body must say what it is and how long it is before any of it is read: the stream goes to the
 * store, which needs its length up front, and a file over captures.maxFileBytes is refused unread.
 */
function checkRawBody(
  key: string | undefined,
  contentType: string | undefined,
  contentLength: number | undefined,
  limits: CaptureLimits,
) {
  const type = (contentType ?? '').split(';')[0]!.trim().toLowerCase();
  if (type !== RAW_CONTENT_TYPE)
    throw new ApiError(
      415,
      'UnsupportedMediaType',
      `a raw capture upload's body is the file, Content-Type ${RAW_CONTENT_TYPE}; got "${type}" (send JSON to ${CAPTURE_FILES_URL})`,
    );
  if (contentLength === undefined || !Number.isSafeInteger(contentLength) || contentLength < 0)
    throw new ApiError(
      411,
      'ValidationError',
      "a raw capture upload needs a Content-Length header (the file is streamed to the store, which needs its length first); expected the file's size in bytes",
    );
  checkCaptureFileSize(key, contentLength, limits);
}
