import { byteLength } from '@edgefleet/core';
import type { ModelDescription, PredictOutput, PredictResult } from '../models/index.js';
import type { RequestedOutput } from './infer-request.js';
import { tensorJsonText } from './json-tensors.js';
import { kserveDatatype } from './kserve-datatypes.js';
import { RestError } from './rest-errors.js';

/** An inference response ready to send: the JSON text, and the binary parts that follow it (if any). */
export interface EncodedInferResponse {
  json: string;
  /** Output bytes in the order the JSON lists them; empty when every output is in the JSON. */
  binary: Uint8Array[];
}

/**
 * Checks the requested outputs against the model before it runs: each must be one of its outputs.
 * RestError 400 naming the model's outputs otherwise.
 */
export function checkRequestedOutputs(
  model: ModelDescription,
  requested: readonly RequestedOutput[] | undefined,
): void {
  if (!requested) return;
  const names = new Set(model.outputs.map((output) => output.name));
  for (const output of requested) {
    if (!names.has(output.name)) {
      throw new RestError(
        400,
        `model ${JSON.stringify(model.name)} has no output ${JSON.stringify(output.name)}; expected outputs among: ${[...names].map((n) => JSON.stringify(n)).join(', ')}`,
      );
    }
  }
}

/**
 * The response for a prediction: the requested outputs in the order asked (all of them, in the model's order,
 * when none were named), each as JSON data or, when asked, as binary data after the JSON.
 */
export function encodeInferResponse(
  result: PredictResult,
  id: string | undefined,
  requested: readonly RequestedOutput[] | undefined,
  binaryOutputs: boolean,
): EncodedInferResponse {
  const byName = new Map<string, PredictOutput>();
  for (const output of result.outputs) byName.set(output.name.toString('utf8'), output);
  const chosen = requested
    ? requested.map((want) => {
        const output = byName.get(want.name);
        if (!output) {
          throw new RestError(
            500,
            `model ${JSON.stringify(result.model.name)} returned no output ${JSON.stringify(want.name)} although its manifest declares it`,
          );
        }
        return { name: want.name, output, binary: want.binary ?? binaryOutputs, shared: want.sharedMemory };
      })
    : [...byName].map(([name, output]) => ({ name, output, binary: binaryOutputs, shared: undefined }));
  const binary: Uint8Array[] = [];
  const parts = chosen.map(({ name, output, binary: asBinary, shared }) => {
    const head = `{"name":${JSON.stringify(name)},"datatype":"${kserveDatatype(output.dataType)}","shape":[${output.shape.join(',')}]`;
    // Already written into the client's region (see shared-memory-routes.ts): the response only says where.
    if (shared) {
      const size = output.writtenToSegment
        ? byteLength(output.dataType, output.shape)
        : output.data.byteLength;
      return `${head},"parameters":{"shared_memory_region":${JSON.stringify(shared.region)},"shared_memory_byte_size":${size},"shared_memory_offset":${shared.offset}}}`;
    }
    if (asBinary) {
      binary.push(output.data);
      return `${head},"parameters":{"binary_data_size":${output.data.byteLength}}}`;
    }
    return `${head},"data":${tensorJsonText(output.dataType, output.data)}}`;
  });
  const idPart = id === undefined ? '' : `,"id":${JSON.stringify(id)}`;
  const json = `{"model_name":${JSON.stringify(result.model.name)},"model_version":${JSON.stringify(result.model.version)}${idPart},"outputs":[${parts.join(',')}]}`;
  return { json, binary };
}
