import type { Readable } from 'node:stream';
import { operatorActorOf } from '../audit/index.js';
import { ModelNameSchema, ModelVersionSchema, TensorMetadataSchema } from '@edgefleet/core';
import type { FastifyPluginAsync } from 'fastify';
import { z } from 'zod';
import { DomainError } from '../errors/index.js';
import { ApiError } from '../http/errors.js';
import { decodePageToken, pageQuerySchema, toPage } from '../http/pagination.js';
import { defineRoute } from '../http/routes.js';
import type { ModelRecord, ModelSourceKind, ModelStore, ModelVersionRecord } from './model-store.js';

const iso = (ms: number) => new Date(ms).toISOString();

/** Content types an upload may have, and what each means. */
export const UPLOAD_CONTENT_TYPES: Record<string, ModelSourceKind> = {
  'application/octet-stream': 'onnx',
  'application/onnx': 'onnx',
  'application/gzip': 'package',
  'application/x-gzip': 'package',
  'application/x-compressed-tar': 'package',
};

export const modelVersionSchema = z.object({
  modelName: z.string(),
  version: z.string(),
  sourceKind: z.enum(['onnx', 'package']).describe('What was uploaded: an ONNX model or a ready package'),
  sizeBytes: z.int(),
  sha256: z.string(),
  inputs: z.array(TensorMetadataSchema),
  outputs: z.array(TensorMetadataSchema),
  createdAt: z.iso.datetime(),
  warning: z
    .string()
    .optional()
    .describe(
      "A package enrolled devices will refuse (unsigned, or its signature does not lead to the server's " +
        'package-signing root, which they trust, or its certificate is not valid now): why and what to do, ' +
        "as of this answer (from what the upload's check kept; the package is not read again). " +
        '(A package signed under that root and altered after signing is refused at upload: 400.)',
    ),
});

export const modelSchema = z.object({
  name: z.string(),
  description: z.string().optional(),
  versionCount: z.int(),
  latestVersion: z.string().optional().describe('The most recently uploaded version'),
  createdAt: z.iso.datetime(),
  updatedAt: z.iso.datetime(),
});

/** A version as the API shows it; `warning`: why devices will refuse it now (ModelStore.deviceTrustWarningFor). */
export function modelVersionView(
  v: ModelVersionRecord,
  warning?: string,
): z.input<typeof modelVersionSchema> {
  return {
    modelName: v.modelName,
    version: v.version,
    sourceKind: v.sourceKind,
    sizeBytes: v.sizeBytes,
    sha256: v.sha256,
    inputs: v.tensors.inputs,
    outputs: v.tensors.outputs,
    createdAt: iso(v.createdAt),
    ...(warning !== undefined && { warning }),
  };
}

/** The upload's answer: the version, and what the operator should know about it (checked at the upload). */
export const uploadedModelVersionSchema = modelVersionSchema;

function modelView(m: ModelRecord): z.input<typeof modelSchema> {
  return {
    name: m.name,
    ...(m.description !== null ? { description: m.description } : {}),
    versionCount: m.versionCount,
    ...(m.latestVersion !== null ? { latestVersion: m.latestVersion } : {}),
    createdAt: iso(m.createdAt),
    updatedAt: iso(m.updatedAt),
  };
}

const modelParams = z.object({ model: ModelNameSchema });
const versionParams = z.object({ model: ModelNameSchema, version: ModelVersionSchema });

export const modelRoutes: FastifyPluginAsync<{
  models: ModelStore;
  maxUploadBytes: number;
  /** The upload route's own deadline for its whole request; other routes keep the listener's short one. */
  uploadTimeoutMs: number;
}> = async (app, { models, maxUploadBytes, uploadTimeoutMs }) => {
  // Uploads reach the handler as a stream; the model store spools it with its own size limit.
  app.addContentTypeParser(Object.keys(UPLOAD_CONTENT_TYPES), (_request, payload, done) =>
    done(null, payload),
  );

  defineRoute(app, {
    method: 'POST',
    url: '/api/v1/models/:model/versions/:version',
    auth: 'admin',
    tag: 'models',
    summary:
      'Upload a model version: an ONNX file (application/octet-stream) or a ready package (application/gzip)',
    description: `Streamed; at most ${maxUploadBytes} bytes, in at most ${uploadTimeoutMs / 1000} s (else 408 and the connection is closed). The tensor metadata is read from the model or package manifest.`,
    requestTimeoutMs: uploadTimeoutMs,
    params: versionParams,
    query: z.object({ description: z.string().max(800).optional() }),
    consumes: Object.keys(UPLOAD_CONTENT_TYPES),
    response: uploadedModelVersionSchema,
    status: 201,
    handler: async ({ params, query, request }) => {
      const type = (request.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase() ?? '';
      const kind = UPLOAD_CONTENT_TYPES[type];
      if (kind === undefined) {
        throw new ApiError(
          415,
          'UnsupportedMediaType',
          `upload content type "${type}" is not accepted; expected ${Object.keys(UPLOAD_CONTENT_TYPES).join(', ')}`,
        );
      }
      const declared = Number(request.headers['content-length'] ?? NaN);
      if (declared > maxUploadBytes) {
        throw new DomainError(
          'PayloadTooLarge',
          `the upload is ${declared} bytes; the limit is ${maxUploadBytes}`,
          {
            maxBytes: maxUploadBytes,
          },
        );
      }
      const body = request.body as Readable;
      let version;
      try {
        version = await models.upload(
          {
            name: params.model,
            version: params.version,
            kind,
            body,
            ...(query.description !== undefined ? { description: query.description } : {}),
          },
          operatorActorOf(request),
        );
      } catch (error) {
        // Refused before the body was read (the version exists): an answer sent now closes the connection under
        // a client still sending, which then sees EPIPE instead of the answer. This peer is an admin, and the
        // body is within the limit and the route's deadline: read the rest, then answer.
        if (!request.raw.complete && declared <= maxUploadBytes) await drain(body);
        throw error;
      }
      return modelVersionView(version, version.warning);
    },
  });

  defineRoute(app, {
    method: 'GET',
    url: '/api/v1/models',
    auth: 'read',
    tag: 'models',
    summary: 'List models in name order',
    query: pageQuerySchema,
    response: z.object({ models: z.array(modelSchema), nextToken: z.string().optional() }),
    handler: async ({ query }) => {
      const after = decodePageToken('models', query.nextToken);
      const rows = await models.list({ limit: query.limit + 1, ...(after !== undefined ? { after } : {}) });
      const page = toPage('models', rows, query.limit, (m) => m.name);
      return { models: page.items.map(modelView), ...(page.nextToken ? { nextToken: page.nextToken } : {}) };
    },
  });

  defineRoute(app, {
    method: 'GET',
    url: '/api/v1/models/:model',
    auth: 'read',
    tag: 'models',
    summary: 'Describe a model',
    params: modelParams,
    response: modelSchema,
    handler: async ({ params }) => modelView(await models.get(params.model)),
  });

  defineRoute(app, {
    method: 'GET',
    url: '/api/v1/models/:model/versions',
    auth: 'read',
    tag: 'models',
    summary: "List a model's versions with their tensor metadata",
    params: modelParams,
    query: pageQuerySchema,
    response: z.object({ versions: z.array(modelVersionSchema), nextToken: z.string().optional() }),
    handler: async ({ params, query }) => {
      const list = `versions:${params.model}`;
      const after = decodePageToken(list, query.nextToken);
      const rows = await models.listVersions(params.model, {
        limit: query.limit + 1,
        ...(after !== undefined ? { after } : {}),
      });
      const page = toPage(list, rows, query.limit, (v) => v.version);
      return {
        versions: page.items.map((v) => modelVersionView(v, models.deviceTrustWarningFor(v))),
        ...(page.nextToken ? { nextToken: page.nextToken } : {}),
      };
    },
  });

  defineRoute(app, {
    method: 'GET',
    url: '/api/v1/models/:model/versions/:version',
    auth: 'read',
    tag: 'models',
    summary: 'Describe a model version, with its tensor metadata',
    params: versionParams,
    response: modelVersionSchema,
    handler: async ({ params }) => {
      const version = await models.getVersion(params.model, params.version);
      return modelVersionView(version, models.deviceTrustWarningFor(version));
    },
  });

  defineRoute(app, {
    method: 'DELETE',
    url: '/api/v1/models/:model/versions/:version',
    auth: 'admin',
    tag: 'models',
    summary: 'Delete a model version (packages already built from it stay)',
    params: versionParams,
    status: 204,
    handler: async ({ params, request }) => {
      await models.deleteVersion(params.model, params.version, operatorActorOf(request));
      return undefined;
    },
  });
};

/** Reads a request body to its end (or its failure), keeping nothing. */
function drain(body: Readable): Promise<void> {
  if (body.destroyed || body.readableEnded) return Promise.resolve();
  return new Promise<void>((resolve) => {
    body
      .once('end', resolve)
      .once('error', () => resolve())
      .once('close', resolve);
    body.resume();
  });
}
