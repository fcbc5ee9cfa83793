import type { FastifyPluginAsync } from 'fastify';
import type { Kysely } from 'kysely';
import { z } from 'zod';
import type { BlobStore, S3ConnectionOptions } from '../blobs/index.js';
import { DomainError } from '../errors/index.js';
import { withRetryAfter } from '../http/retry-after.js';
import { defineRoute } from '../http/routes.js';
import { requireDevice } from '../identity/index.js';
import type { ServerConfig } from '../config/index.js';
import type { PackageSigningIdentity } from '../packaging/index.js';
import type { DatabaseSchema } from '../storage/schema.js';
import { captureBodyLimitBytes } from './body-limit.js';
import { CaptureIngest, type CaptureLimits } from './capture-ingest.js';
import { FleetOutputs, parseOutputLocation } from './fleet-output.js';
import { UploadSlots } from './upload-slots.js';

const CAPTURE_FILES_URL = '/api/v1/device/captures/files';
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

export const captureFileBodySchema = z.strictObject({
  key: z
    .string()
    .min(1)
    .max(1024)
    .describe(
      'The capture key: <prefix>/<fleet>/<model>/YYYY/MM/DD/HH/<file> (packages/agent/docs/capture.md)',
    ),
  contentType: z.string().min(1).max(200),
  data: z.string().regex(BASE64, 'expected base64').describe('The file, base64'),
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
  captureFolderPrefix: z.string().optional().describe('sagemaker_edge_core_folder_prefix'),
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
  blobs: BlobStore;
  config: Pick<ServerConfig, 'blobLocation' | 'captures' | 'heartbeat'>;
  /** The server's S3 connection (fleet buckets are reached the same way); used only when its blobs are in S3. */
  s3: S3ConnectionOptions;
  /** The package-signing root, handed to devices at set-up (their trust folder). */
  signing: Pick<PackageSigningIdentity, 'rootCertificatePem' | 'rootFingerprintSha256'>;
}> = async (app, deps) => {
  const { blobLocation } = deps.config;
  const outputs = new FleetOutputs(
    deps.blobs,
    blobLocation.kind === 's3' ? deps.s3 : undefined,
    blobLocation.kind === 's3' ? blobLocation : undefined,
  );
  const limits: CaptureLimits = deps.config.captures;
  const ingest = new CaptureIngest({ db: deps.db, outputs, limits });
  app.addHook('onClose', async () => outputs.close());

  // Before a capture body is read (the device is authenticated by then): a large body needs an upload slot, and
  // a body that would pass the device's remaining daily quota by its length alone is refused. Refusals close
  // the connection, so that the unread body is not read either.
  const { largeBodyBytes, maxConcurrentUploads, maxConcurrentUploadsPerDevice } = deps.config.captures;
  const slots = new UploadSlots({ total: maxConcurrentUploads, perDevice: maxConcurrentUploadsPerDevice });
  app.addHook('preParsing', async (request, reply, payload) => {
    if (request.routeOptions.url !== CAPTURE_FILES_URL) return payload;
    const device = requireDevice(request);
    const header = request.headers['content-length'];
    const contentLength = header === undefined ? undefined : Number(header);
    const refuse = (seconds: number, message: string, details: Record<string, unknown>) => {
      reply.header('connection', 'close').header('retry-after', String(seconds));
      return new DomainError('LimitExceeded', message, { ...details, retryAfterSeconds: seconds });
    };
    // The slot is taken before anything is awaited, and its release is tied to the connection at once: a
    // client that went away during the awaited authentication (its 'close' already emitted) or that goes away
    // during the quota read below gives the slot back, instead of holding it until a restart.
    if (!(contentLength !== undefined && contentLength <= largeBodyBytes)) {
      const slot = slots.take(device.deviceName);
      if ('refused' in slot) {
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
    if (contentLength !== undefined && Number.isFinite(contentLength)) {
      const least = leastFileBytesIn(contentLength);
      if (least > 0) {
        const remaining = await ingest.remainingToday(device.deviceName);
        if (least > remaining.bytes) {
          throw refuse(
            remaining.renewsInSeconds,
            `device ${device.deviceName} may upload ${remaining.bytes} more capture bytes today (UTC, captures.dailyQuotaBytesPerDevice); this body of ${contentLength} bytes carries at least ${least}; the agent keeps the batch and retries after the quota renews`,
            { remainingBytes: remaining.bytes, contentLength },
          );
        }
      }
    }
    return payload;
  });
  defineRoute(app, {
    method: 'POST',
    url: CAPTURE_FILES_URL,
    auth: 'device',
    tag: 'device',
    summary: "Upload a capture file to the device's fleet output location (idempotent by capture id)",
    description:
      'Body: {"key", "contentType", "data" (base64)}. A manifest (.jsonl) holds one record per line; records ' +
      'whose capture id was stored before from another manifest are left out. 413 over captures.maxFileBytes, ' +
      '429 (with Retry-After) over the per-device daily quota, judged by Content-Length before the body is read, ' +
      'and when no upload slot is free for a large body (captures.maxConcurrentUploads, ' +
      "captures.maxConcurrentUploadsPerDevice); 403 for a key outside the fleet's output prefix.",
    body: captureFileBodySchema,
    response: storedCaptureFileSchema,
    bodyLimit: captureBodyLimitBytes(limits.maxFileBytes),
    handler: async ({ body, request, reply }) =>
      withRetryAfter(reply, () =>
        ingest.store(requireDevice(request), {
          key: body.key,
          contentType: body.contentType,
          body: Buffer.from(body.data, 'base64'),
        }),
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
          ...(output.prefix !== '' && { captureFolderPrefix: output.prefix }),
        }),
      };
    },
  });
};
