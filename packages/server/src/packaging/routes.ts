import { JOB_PACKAGE_ROUTE, ModelNameSchema, ModelVersionSchema } from '@edgefleet/core';
import { operatorActorOf } from '../audit/index.js';
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import { z } from 'zod';
import type { BlobStore } from '../blobs/index.js';
import { entityNameSchema, s3UriSchema } from '../fields/index.js';
import { DomainError } from '../errors/index.js';
import { decodePageToken, pageQuerySchema, toPage } from '../http/pagination.js';
import { defineRoute } from '../http/routes.js';
import { requireDevice } from '../identity/index.js';
import type { DevicePackageAccess } from './device-access.js';
import {
  packagingJobStatusSchema,
  type PackagingJobRecord,
  type PackagingJobStore,
} from './packaging-jobs.js';
import type { PackageSigningIdentity } from './signing-keys.js';

const iso = (ms: number) => new Date(ms).toISOString();

export const packagingJobSchema = z.object({
  name: z.string(),
  modelName: z.string(),
  modelVersion: z.string(),
  status: packagingJobStatusSchema,
  statusMessage: z.string().optional(),
  outputS3Location: z.string().optional(),
  artifact: z
    .object({
      key: z.string().describe('Key in the server blob store'),
      location: z.string().describe('s3://… or file://… of <model>-<version>.tar.gz'),
      sizeBytes: z.int(),
      sha256: z.string(),
    })
    .optional()
    .describe('Present once COMPLETED'),
  modelSignature: z
    .string()
    .optional()
    .describe(
      'The signature document (model.sig: Sigstore bundle, DSSE envelope, in-toto statement), JSON text',
    ),
  createdAt: z.iso.datetime(),
  updatedAt: z.iso.datetime(),
});

export function packagingJobView(job: PackagingJobRecord): z.input<typeof packagingJobSchema> {
  return {
    name: job.name,
    modelName: job.modelName,
    modelVersion: job.modelVersion,
    status: job.status,
    ...(job.statusMessage !== null ? { statusMessage: job.statusMessage } : {}),
    ...(job.outputS3Location !== null ? { outputS3Location: job.outputS3Location } : {}),
    ...(job.artifactKey !== null && job.artifactLocation !== null
      ? {
          artifact: {
            key: job.artifactKey,
            location: job.artifactLocation,
            sizeBytes: job.artifactSizeBytes ?? 0,
            sha256: job.artifactSha256 ?? '',
          },
        }
      : {}),
    ...(job.signature !== null ? { modelSignature: job.signature } : {}),
    createdAt: iso(job.createdAt),
    updatedAt: iso(job.updatedAt),
  };
}

const jobParams = z.object({ job: entityNameSchema });

/** A job's stored package; 409 while it has none (the job is not COMPLETED). */
function completedPackageOf(job: PackagingJobRecord): { key: string; size: number; sha256: string | null } {
  if (job.status !== 'COMPLETED' || job.artifactKey === null || job.artifactSizeBytes === null) {
    throw new DomainError(
      'Conflict',
      `packaging job ${job.name} is ${job.status}; its package exists once COMPLETED`,
      { status: job.status },
    );
  }
  return { key: job.artifactKey, size: job.artifactSizeBytes, sha256: job.artifactSha256 };
}

export const packagingRoutes: FastifyPluginAsync<{
  jobs: PackagingJobStore;
  blobs: BlobStore;
  signing: PackageSigningIdentity;
  onCreated: () => void;
}> = async (app, deps) => {
  defineRoute(app, {
    method: 'POST',
    url: '/api/v1/packaging-jobs',
    auth: 'admin',
    tag: 'packaging',
    summary: 'Start a packaging job: package, sign and store an uploaded model version',
    body: z.strictObject({
      name: entityNameSchema.describe('Job name, unique'),
      modelName: ModelNameSchema,
      modelVersion: ModelVersionSchema,
      outputS3Location: s3UriSchema
        .optional()
        .describe('Recorded for compatibility; the package goes to the blob store'),
    }),
    response: packagingJobSchema,
    status: 201,
    handler: async ({ body, request }) => {
      const job = await deps.jobs.create(body, operatorActorOf(request));
      deps.onCreated();
      return packagingJobView(job);
    },
  });

  defineRoute(app, {
    method: 'GET',
    url: '/api/v1/packaging-jobs',
    auth: 'read',
    tag: 'packaging',
    summary: 'List packaging jobs in name order',
    query: pageQuerySchema.extend({ status: packagingJobStatusSchema.optional() }),
    response: z.object({ jobs: z.array(packagingJobSchema), nextToken: z.string().optional() }),
    handler: async ({ query }) => {
      const after = decodePageToken('packaging-jobs', query.nextToken);
      const rows = await deps.jobs.list({
        limit: query.limit + 1,
        ...(after !== undefined ? { after } : {}),
        ...(query.status !== undefined ? { status: query.status } : {}),
      });
      const page = toPage('packaging-jobs', rows, query.limit, (j) => j.name);
      return {
        jobs: page.items.map(packagingJobView),
        ...(page.nextToken ? { nextToken: page.nextToken } : {}),
      };
    },
  });

  defineRoute(app, {
    method: 'GET',
    url: '/api/v1/packaging-jobs/:job',
    auth: 'read',
    tag: 'packaging',
    summary: 'Describe a packaging job: status, artifact location, signature document',
    params: jobParams,
    response: packagingJobSchema,
    handler: async ({ params }) => packagingJobView(await deps.jobs.get(params.job)),
  });

  defineRoute(app, {
    method: 'GET',
    url: '/api/v1/packaging-jobs/:job/artifact',
    auth: 'read',
    tag: 'packaging',
    summary: 'Download the signed package (<model>-<version>.tar.gz) of a completed job',
    params: jobParams,
    binaryResponse: 'application/gzip',
    handler: async ({ params, reply }) => {
      const stored = completedPackageOf(await deps.jobs.get(params.job));
      reply
        .type('application/gzip')
        .header('content-disposition', `attachment; filename="${stored.key.split('/').pop()}"`)
        .header('content-length', stored.size);
      return (await deps.blobs.get(stored.key)) as never;
    },
  });

  defineRoute(app, {
    method: 'GET',
    url: '/api/v1/signing/root-certificate',
    auth: 'read',
    tag: 'packaging',
    summary: "The root certificate packages are signed under: put it in devices' root-certs folder",
    response: z.object({ certificatePem: z.string(), fingerprintSha256: z.string() }),
    handler: async () => ({
      certificatePem: deps.signing.rootCertificatePem,
      fingerprintSha256: deps.signing.rootFingerprintSha256,
    }),
  });
};

/**
 * A request's single byte range (`bytes=a-b`, `bytes=a-`, `bytes=-n`) over a file of `size` bytes: the range,
 * `undefined` to send the whole file (no Range header, several ranges, or a stale If-Range), or
 * 'unsatisfiable' (416) for a range that starts beyond the end.
 */
export function requestedRange(
  header: string | undefined,
  size: number,
  ifRange: string | undefined,
  etag: string,
): { start: number; end: number } | 'unsatisfiable' | undefined {
  if (header === undefined) return undefined;
  // The client's copy is of another package version: it gets the whole new file.
  if (ifRange !== undefined && ifRange !== etag) return undefined;
  const match = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (match === null || (match[1] === '' && match[2] === '')) return undefined;
  if (match[1] === '') {
    const suffix = Number(match[2]);
    if (suffix === 0 || size === 0) return 'unsatisfiable';
    return { start: Math.max(0, size - suffix), end: size - 1 };
  }
  const start = Number(match[1]);
  const end = match[2] === '' ? size - 1 : Math.min(Number(match[2]), size - 1);
  if (start >= size || end < start) return 'unsatisfiable';
  return { start, end };
}

/**
 * Answers a device's package download from the blob store: the whole file (200), or the single range it asked
 * for (206 with Content-Range; If-Range compared with the ETag, the package's SHA-256), or 416 past the end.
 */
export async function sendPackage(
  request: FastifyRequest,
  reply: FastifyReply,
  blobs: BlobStore,
  blob: { key: string; size: number; sha256: string | null },
): Promise<never> {
  const etag = `"${blob.sha256 ?? ''}"`;
  reply.type('application/gzip').header('accept-ranges', 'bytes').header('etag', etag);
  if (blob.sha256 !== null) reply.header('x-edgefleet-sha256', blob.sha256);
  const header = request.headers.range;
  const ifRange = request.headers['if-range'];
  const range = requestedRange(
    typeof header === 'string' ? header : undefined,
    blob.size,
    typeof ifRange === 'string' ? ifRange : undefined,
    etag,
  );
  if (range === 'unsatisfiable') {
    reply.code(416).type('application/json').header('content-range', `bytes */${blob.size}`);
    return {
      code: 'RangeNotSatisfiable',
      message: `the range ${String(header)} lies outside the package (${blob.size} bytes); expected bytes=<start>-<end> with start < ${blob.size}`,
    } as never;
  }
  if (range === undefined) {
    reply.header('content-length', blob.size);
    return (await blobs.get(blob.key)) as never;
  }
  reply
    .code(206)
    .header('content-range', `bytes ${range.start}-${range.end}/${blob.size}`)
    .header('content-length', range.end - range.start + 1);
  return (await blobs.get(blob.key, range)) as never;
}

/**
 * Device route (mutual TLS): download a completed job's package, if it is deployed to the device's fleet.
 * Supports single HTTP range requests (206, `If-Range` with the package's ETag, its SHA-256), so a device
 * resumes an interrupted download where it stopped.
 */
export const packagingDeviceRoutes: FastifyPluginAsync<{
  jobs: PackagingJobStore;
  blobs: BlobStore;
  access: DevicePackageAccess;
}> = async (app, deps) => {
  defineRoute(app, {
    method: 'GET',
    // The route a PackageUrl names (core's contract), so that the two cannot drift apart.
    url: `${JOB_PACKAGE_ROUTE}:job`,
    auth: 'device',
    tag: 'device',
    summary: "Download a completed packaging job's signed package (one deployed to the device's fleet)",
    description:
      'Accepts one byte range (Range: bytes=a-b, bytes=a-, bytes=-n) and answers 206 with Content-Range, so an ' +
      'interrupted download resumes; If-Range with the ETag (the SHA-256) guards against a changed package. ' +
      '416 for a range beyond the end.',
    params: jobParams,
    binaryResponse: 'application/gzip',
    handler: async ({ params, request, reply }) => {
      const device = requireDevice(request);
      // Checked before the job is looked up, so a device cannot learn which job names exist elsewhere.
      if (!(await deps.access.isDeployable(params.job, device.fleetName))) {
        throw new DomainError(
          'Forbidden',
          `package ${params.job} is not deployed to fleet ${device.fleetName}; a device may download only ` +
            'packages deployed to its own fleet',
          { job: params.job, fleet: device.fleetName },
        );
      }
      return sendPackage(request, reply, deps.blobs, completedPackageOf(await deps.jobs.get(params.job)));
    },
  });
};
