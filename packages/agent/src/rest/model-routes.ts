import type { FastifyInstance, FastifyReply } from 'fastify';
import { AgentError, type ModelDescription, type ModelRegistry } from '../models/index.js';
import { decodeInferRequest, INFERENCE_HEADER_CONTENT_LENGTH } from './infer-request.js';
import { checkRequestedOutputs, encodeInferResponse, type EncodedInferResponse } from './infer-response.js';
import { kserveDatatype } from './kserve-datatypes.js';
import type { RequestBody } from './request-body.js';
import type { PeerOf, SharedMemoryRegions } from './shared-memory-routes.js';
import { JSON_TYPE } from './rest-errors.js';

/** Reported as each model's platform, as Triton names ONNX Runtime models. */
export const REST_MODEL_PLATFORM = 'onnxruntime_onnx';

type NameParams = { name: string; version?: string };

/** The model, checked to be at the version asked for (when the path names one). */
function describeAt(registry: ModelRegistry, name: string, version: string | undefined): ModelDescription {
  const model = registry.describe(name);
  if (version !== undefined && version !== model.version) {
    throw new AgentError(
      'NOT_FOUND',
      `model ${JSON.stringify(name)} is loaded at version ${JSON.stringify(model.version)}, not ${JSON.stringify(version)}; expected that version, or no version in the path`,
    );
  }
  return model;
}

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

/** Writes JSON and binary parts straight to the socket, corked: no concatenation of the output bytes. */
function sendBinaryResponse(reply: FastifyReply, response: EncodedInferResponse): void {
  const json = Buffer.from(response.json, 'utf8');
  let length = json.length;
  for (const part of response.binary) length += part.byteLength;
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, {
    'content-type': 'application/octet-stream',
    'content-length': length,
    'inference-header-content-length': json.length,
  });
  res.cork();
  res.write(json);
  for (const part of response.binary) res.write(part);
  res.end();
  res.uncork();
}

/**
 * Model metadata, readiness and inference, each at /v2/models/{name} and /v2/models/{name}/versions/{version}.
 * Inference decodes the request (JSON or binary), lets the registry check and run it, and encodes the answer.
 */
export function registerModelRoutes(
  app: FastifyInstance,
  registry: ModelRegistry,
  regions: SharedMemoryRegions,
  peerOf: PeerOf,
): void {
  for (const base of ['/v2/models/:name', '/v2/models/:name/versions/:version']) {
    app.get<{ Params: NameParams }>(base, async (request) =>
      modelMetadata(describeAt(registry, request.params.name, request.params.version)),
    );

    app.get<{ Params: NameParams }>(`${base}/ready`, async (request) => {
      const model = describeAt(registry, request.params.name, request.params.version);
      return { name: model.name, ready: true };
    });

    app.post<{ Params: NameParams }>(`${base}/infer`, async (request, reply) => {
      const { name, version } = request.params;
      const model = describeAt(registry, name, version);
      const decoded = decodeInferRequest(
        request.body as RequestBody | undefined,
        request.headers[INFERENCE_HEADER_CONTENT_LENGTH],
      );
      checkRequestedOutputs(model, decoded.outputs);
      const regionNames = decoded.sharedInputs.map((place) => place.region);
      for (const output of decoded.outputs ?? [])
        if (output.sharedMemory) regionNames.push(output.sharedMemory.region);
      const caller = regionNames.length > 0 ? peerOf(request.raw.socket) : null;
      // Until the outputs are written, unregistering a region this request names waits for it: once unregister
      // has answered, the client may reuse the memory, and nothing here touches it any more.
      const regionUse = regions.use(regionNames);
      let result;
      try {
        const leases = regions.readInputs(decoded.inputs, decoded.sharedInputs, caller);
        try {
          const outputSegments = regions.outputSegments(decoded.outputs, caller);
          // The inputs were built for this request alone: hand them to the worker without a copy (those in shared
          // memory are mapped by the worker itself, or read in place by the inline path).
          result = await registry.predict(name, decoded.inputs, {
            transferInputs: true,
            ...(outputSegments && { outputSegments }),
          });
        } finally {
          for (const lease of leases) lease.release();
        }
        for (const output of decoded.outputs ?? []) {
          if (!output.sharedMemory) continue;
          const produced = result.outputs.find((o) => o.name.toString('utf8') === output.name);
          // Written into the region by the worker already, or (the inline path) to be written here.
          if (produced && !produced.writtenToSegment)
            regions.writeOutput(output.name, output.sharedMemory, produced.data, caller);
        }
      } finally {
        regionUse.release();
      }
      const response = encodeInferResponse(result, decoded.id, decoded.outputs, decoded.binaryOutputs);
      if (response.binary.length === 0) return reply.type(JSON_TYPE).send(response.json);
      sendBinaryResponse(reply, response);
      return reply;
    });
  }
}
