import type { ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { AgentError, type ModelDescription, type ModelRegistry } from '../models/index.js';
import { InferRequestDecoder } from './infer-request.js';
import { checkRequestedOutputs, encodeInferResponse, type EncodedInferResponse } from './infer-response.js';
import type { RequestBody } from './request-body.js';
import type { PeerOf, SharedMemoryRegions } from './shared-memory-routes.js';

/** The model, checked to be at the version asked for (when the path names one). */
export function describeAt(
  registry: ModelRegistry,
  name: string,
  version: string | undefined,
): ModelDescription {
  const model = registry.describe(name);
  if (version !== undefined && version !== model.version) {
    throw new AgentError(
      'NOT_FOUND',
      `model ${JSON.stringify(name)} is loaded at version ${JSON.stringify(model.version)}, not ${JSON.stringify(version)}; expected that version, or no version in the path`,
    );
  }
  return model;
}

/** The inputs were built for this request alone: the registry may hand them to a worker without a copy. */
const TRANSFER_INPUTS = Object.freeze({ transferInputs: true as const });

/** What an inference request arrived with, once its body is read. */
export interface InferCall {
  name: string;
  version: string | undefined;
  body: RequestBody | undefined;
  /** The Inference-Header-Content-Length header, as received. */
  jsonPartHeader: string | string[] | undefined;
  /** The request's connection (for the peer credentials that shared memory needs). */
  socket: Socket;
}

/**
 * POST /v2/models/{name}[/versions/{version}]/infer, whichever door it came in by (the lean door in front of
 * Fastify, or Fastify's route for what that door leaves to it): decodes the request (JSON or binary), lets the
 * registry check and run it, and encodes the answer. Throws what httpFailureOf maps to an HTTP answer.
 */
export class ModelInference {
  readonly #decoder = new InferRequestDecoder();

  constructor(
    private readonly registry: ModelRegistry,
    private readonly regions: SharedMemoryRegions,
    private readonly peerOf: PeerOf,
  ) {}

  /**
   * Throws what infer would for a model (or version) that is not there, so that a door can refuse the request
   * before it reads the body. O(1) and no allocation when the model is loaded and no version is named.
   */
  checkModel(name: string, version: string | undefined): void {
    if (version !== undefined || !this.registry.has(name)) describeAt(this.registry, name, version);
  }

  async infer(call: InferCall): Promise<EncodedInferResponse> {
    const { registry, regions } = this;
    const model = describeAt(registry, call.name, call.version);
    const decoded = this.#decoder.decode(call.body, call.jsonPartHeader);
    checkRequestedOutputs(model, decoded.outputs);
    const regionNames = decoded.sharedInputs.map((place) => place.region);
    for (const output of decoded.outputs ?? [])
      if (output.sharedMemory) regionNames.push(output.sharedMemory.region);
    if (regionNames.length === 0) {
      // No shared memory: nothing to read, write or hold registered.
      const result = await registry.predict(call.name, decoded.inputs, TRANSFER_INPUTS);
      return encodeInferResponse(result, decoded.id, decoded.outputs, decoded.binaryOutputs);
    }
    const caller = this.peerOf(call.socket);
    // Until the outputs are written, unregistering a region this request names waits for it: once unregister
    // has answered, the client may reuse the memory, and nothing here touches it any more.
    const regionUse = regions.use(regionNames, caller);
    let result;
    try {
      const leases = regions.readInputs(decoded.inputs, decoded.sharedInputs, caller);
      try {
        const outputSegments = regions.outputSegments(decoded.outputs, caller);
        // The inputs were built for this request alone: hand them to the worker without a copy (those in shared
        // memory are mapped by the worker itself, or read in place by the inline path).
        result = await registry.predict(call.name, decoded.inputs, {
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
    return encodeInferResponse(result, decoded.id, decoded.outputs, decoded.binaryOutputs);
  }
}

/** Fastify's type for a JSON text it sends (reply.type(JSON_TYPE) adds the charset). */
export const JSON_RESPONSE_TYPE = 'application/json; charset=utf-8';

/** A binary response up to this size is sent as one buffer (a copy costs less than writing its parts apart). */
const SMALL_RESPONSE_BYTES = 16 * 1024;

/**
 * Writes a 200 inference response on the raw response: the JSON alone, or the JSON and the binary parts (a small
 * answer in one buffer; a larger one part by part, corked, with no copy of the output bytes).
 */
export function writeInferResponse(res: ServerResponse, response: EncodedInferResponse): void {
  if (response.binary.length === 0) {
    res.writeHead(200, {
      'content-type': JSON_RESPONSE_TYPE,
      'content-length': Buffer.byteLength(response.json),
    });
    res.end(response.json);
    return;
  }
  const json = Buffer.from(response.json, 'utf8');
  let length = json.length;
  for (const part of response.binary) length += part.byteLength;
  res.writeHead(200, {
    'content-type': 'application/octet-stream',
    'content-length': length,
    'inference-header-content-length': json.length,
  });
  if (length <= SMALL_RESPONSE_BYTES) {
    res.end(Buffer.concat([json, ...response.binary], length));
    return;
  }
  res.cork();
  res.write(json);
  for (const part of response.binary) res.write(part);
  res.end();
  res.uncork();
}
