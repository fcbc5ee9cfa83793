import type { FastifyInstance } from 'fastify';
import type { ModelDescription, ModelRegistry } from '../models/index.js';
import { INFERENCE_HEADER_CONTENT_LENGTH } from './infer-request.js';
import { kserveDatatype } from './kserve-datatypes.js';
import { describeAt, writeInferResponse, type ModelInference } from './model-inference.js';
import type { BodyAdmission } from './body-admission.js';
import { withBodyUnread } from './infer-door.js';
import type { RequestBody } from './request-body.js';

/** Reported as each model's platform, as Triton names ONNX Runtime models. */
export const REST_MODEL_PLATFORM = 'onnxruntime_onnx';

type NameParams = { name: string; version?: string };

function modelMetadata(model: ModelDescription) {
  const tensor = (t: ModelDescription['inputs'][number]) => ({
    name: t.name,
    datatype: kserveDatatype(t.dataType),
    shape: t.shape,
  });
  return {
    name: model.name,
    versions: [model.version],
    platform: REST_MODEL_PLATFORM,
    inputs: model.inputs.map(tensor),
    outputs: model.outputs.map(tensor),
  };
}

/**
 * Model metadata, readiness and inference, each at /v2/models/{name} and /v2/models/{name}/versions/{version}.
 * Inference (model-inference.ts) is served here only for what the lean door in front of Fastify leaves to it.
 */
export function registerModelRoutes(
  app: FastifyInstance,
  registry: ModelRegistry,
  inference: ModelInference,
  admission: BodyAdmission,
): void {
  for (const base of ['/v2/models/:name', '/v2/models/:name/versions/:version']) {
    app.get<{ Params: NameParams }>(base, async (request) =>
      modelMetadata(describeAt(registry, request.params.name, request.params.version)),
    );

    app.get<{ Params: NameParams }>(`${base}/ready`, async (request) => {
      const model = describeAt(registry, request.params.name, request.params.version);
      return { name: model.name, ready: true };
    });

    // Requests the lean door in front of Fastify leaves to it (infer-door.ts), and app.inject.
    app.post<{ Params: NameParams }>(
      `${base}/infer`,
      {
        // The model (and version) before the body is read, as the lean door does.
        onRequest: (request, _reply, done) => {
          try {
            inference.checkModel(request.params.name, request.params.version);
            done();
          } catch (error) {
            done(withBodyUnread(error, request.headers) as Error);
          }
        },
      },
      async (request, reply) => {
        // The body's share of the budget is kept until the inference settles, as the lean door does.
        const held = admission.handOn(request.raw);
        let response;
        try {
          response = await inference.infer({
            name: request.params.name,
            version: request.params.version,
            body: request.body as RequestBody | undefined,
            jsonPartHeader: request.headers[INFERENCE_HEADER_CONTENT_LENGTH],
            socket: request.raw.socket,
          });
        } finally {
          held?.release();
        }
        reply.hijack();
        writeInferResponse(reply.raw, response);
        return reply;
      },
    );
  }
}
