import { MAX_TENSOR_RANK } from '@edgefleet/core';
import { z } from 'zod';
import type { PredictTensor } from '../models/index.js';
import { jsonTensorBytes, NeedsExactIntegers, parseJsonExactIntegers } from './json-tensors.js';
import { dataTypeOfKserve } from './kserve-datatypes.js';
import type { RequestBody } from './request-body.js';
import { RestError } from './rest-errors.js';

/** Header of the binary tensor data extension: the length of the JSON part that starts the body. */
export const INFERENCE_HEADER_CONTENT_LENGTH = 'inference-header-content-length';

const byteCount = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
/** The system shared memory extension's parameters of an input or output (region, its byte size, offset). */
const SharedMemoryParameters = {
  shared_memory_region: z.string().min(1).max(1024).optional(),
  shared_memory_byte_size: byteCount.optional(),
  shared_memory_offset: byteCount.optional(),
};

const RequestInputSchema = z.object({
  name: z.string().max(1024),
  shape: z.array(z.number().int().min(0).max(Number.MAX_SAFE_INTEGER)).max(MAX_TENSOR_RANK),
  datatype: z.string().max(64),
  parameters: z.looseObject({ binary_data_size: byteCount.optional(), ...SharedMemoryParameters }).optional(),
  data: z.unknown().optional(),
});

const RequestOutputSchema = z.object({
  name: z.string().min(1).max(1024),
  parameters: z.looseObject({ binary_data: z.boolean().optional(), ...SharedMemoryParameters }).optional(),
});

/** The inference request of the Open Inference Protocol (unknown members are ignored). */
export const InferRequestSchema = z.object({
  id: z.string().max(1024).optional(),
  parameters: z.looseObject({ binary_data_output: z.boolean().optional() }).optional(),
  inputs: z.array(RequestInputSchema).min(1).max(1024),
  outputs: z.array(RequestOutputSchema).max(1024).optional(),
});
export type InferRequest = z.infer<typeof InferRequestSchema>;

/** One output the client asked for, and whether it wants it as binary data. */
export interface RequestedOutput {
  name: string;
  /** undefined: not said for this output; the request-level binary_data_output decides. */
  binary: boolean | undefined;
  /** Written into this registered system shared memory region instead of the response. */
  sharedMemory?: SharedMemoryPlace;
}

/** Where an input's bytes lie, or an output's go: in a registered region, at an offset, at most byteSize bytes. */
export interface SharedMemoryPlace {
  region: string;
  offset: number;
  byteSize: number;
}

/** An inference request decoded into what the registry takes. */
export interface DecodedInferRequest {
  id: string | undefined;
  /** In request order, each in memory of its own (the caller may transfer them to a worker). */
  inputs: PredictTensor[];
  /** undefined: every output of the model, in its order. */
  outputs: RequestedOutput[] | undefined;
  /** The request-level `binary_data_output` parameter. */
  binaryOutputs: boolean;
  /** Inputs whose bytes are in system shared memory (their `data` is empty until the caller reads them). */
  sharedInputs: Array<SharedMemoryPlace & { position: number }>;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** `inputs[0].shape[1]` from a zod issue path. */
function issuePath(path: readonly PropertyKey[]): string {
  let text = '';
  for (const key of path) text += typeof key === 'number' ? `[${key}]` : `${text ? '.' : ''}${String(key)}`;
  return text || '(the request)';
}

export function describeIssues(error: z.ZodError): string {
  return error.issues
    .slice(0, 5)
    .map((issue) => `${issuePath(issue.path)}: ${issue.message}`)
    .join('; ');
}

const REQUEST_FORM =
  'expected {"id"?, "parameters"?, "inputs": [{"name", "shape", "datatype", "data" (or parameters.binary_data_size)}, …], "outputs"?: [{"name", "parameters"?: {"binary_data"?}}]}';

/** The length of the JSON part from the Inference-Header-Content-Length header (undefined: the whole body). */
function headerLengthOf(header: string | string[] | undefined, bodyLength: number): number {
  if (header === undefined) return bodyLength;
  const text = Array.isArray(header) ? header.join(',') : header.trim();
  if (!/^\d{1,16}$/.test(text)) {
    throw new RestError(
      400,
      `the Inference-Header-Content-Length header is ${JSON.stringify(text.slice(0, 40))}; expected the byte length of the JSON part of the body, a whole number`,
    );
  }
  const length = Number(text);
  if (length > bodyLength) {
    throw new RestError(
      400,
      `the Inference-Header-Content-Length header says the JSON part is ${length} bytes, but the body has only ${bodyLength}; expected at most the body's length`,
    );
  }
  return length;
}

/** Decodes the JSON text of a request; RestError 400 when it is not UTF-8 or not JSON. */
function parseJsonPart(bytes: Uint8Array, binary: boolean): { text: string; value: unknown } {
  const part = binary
    ? 'the JSON part of the body (its first Inference-Header-Content-Length bytes)'
    : 'the request body';
  if (bytes.length === 0) throw new RestError(400, `${part} is empty; ${REQUEST_FORM}`);
  let text: string;
  try {
    text = utf8.decode(bytes);
  } catch {
    throw new RestError(400, `${part} is not valid UTF-8; expected UTF-8 encoded JSON`);
  }
  try {
    return { text, value: JSON.parse(text) };
  } catch (error) {
    throw new RestError(400, `${part} is not valid JSON (${(error as Error).message}); ${REQUEST_FORM}`);
  }
}

function validate(value: unknown): InferRequest {
  const parsed = InferRequestSchema.safeParse(value);
  if (!parsed.success) {
    throw new RestError(
      400,
      `the inference request is malformed: ${describeIssues(parsed.error)}; ${REQUEST_FORM}`,
    );
  }
  return parsed.data;
}

/** Request JSON parts remembered by an InferRequestDecoder, and the longest one remembered. */
const REMEMBERED_REQUESTS = 64;
const MAX_REMEMBERED_JSON_BYTES = 4096;

/**
 * Turns an inference request body (JSON, or JSON followed by binary tensor data) into the registry's inputs.
 * Checks what the protocol itself defines: the JSON, the header length, datatypes, data against shape, and
 * that the binary parts add up to the bytes after the JSON. Whether the tensors fit the model is the
 * registry's call.
 *
 * A client sending binary tensors sends the same JSON part request after request (names, shapes, sizes; the
 * data follows it): the last few such parts are remembered with their checked form, so that a repeat skips the
 * UTF-8 decoding, JSON.parse and the schema, which cost more than the rest of the decoding together. Only JSON
 * parts without tensor data or a request id are remembered (such a part is rarely sent twice), only small ones,
 * only once the whole request passed every check, and the least recently used goes first; what depends on the
 * body (the binary sizes) is checked on every request.
 */
export class InferRequestDecoder {
  /** By the JSON part's bytes (keyOf). */
  readonly #remembered = new Map<string, InferRequest>();

  /** JSON parts remembered now (at most REMEMBERED_REQUESTS). */
  get remembered(): number {
    return this.#remembered.size;
  }

  /** Whether this JSON part is remembered now (for tests and diagnostics). */
  remembers(jsonPart: Uint8Array): boolean {
    return this.#remembered.has(keyOf(jsonPart));
  }

  decode(
    body: RequestBody | undefined,
    headerLengthHeader: string | string[] | undefined,
  ): DecodedInferRequest {
    const length = body?.length ?? 0;
    const jsonLength = headerLengthOf(headerLengthHeader, length);
    const jsonBytes = body ? body.view(0, jsonLength) : new Uint8Array(0);
    const key = jsonLength > 0 && jsonLength <= MAX_REMEMBERED_JSON_BYTES ? keyOf(jsonBytes) : undefined;
    const remembered = key === undefined ? undefined : this.#remembered.get(key);
    if (remembered !== undefined) {
      // Most recently used last: the entry evicted first is the one unused longest.
      this.#remembered.delete(key!);
      this.#remembered.set(key!, remembered);
      return decodedFrom(remembered, decodeInputs(remembered, body, jsonLength, false));
    }
    const { text, value } = parseJsonPart(jsonBytes, headerLengthHeader !== undefined);
    let request = validate(value);
    let inputs: PredictTensor[];
    try {
      inputs = decodeInputs(request, body, jsonLength, false);
    } catch (error) {
      if (!(error instanceof NeedsExactIntegers)) throw error;
      request = validate(parseJsonExactIntegers(text));
      inputs = decodeInputs(request, body, jsonLength, true);
    }
    const decoded = decodedFrom(request, inputs);
    // Only a part that passed every check, carries no tensor data and no per-request id (which would make each
    // request's part new, and push the others' out).
    if (
      key !== undefined &&
      request.id === undefined &&
      request.inputs.every((input) => input.data === undefined)
    ) {
      if (this.#remembered.size >= REMEMBERED_REQUESTS)
        this.#remembered.delete(this.#remembered.keys().next().value!);
      this.#remembered.set(key, request);
    }
    return decoded;
  }
}

/** A JSON part's bytes as latin1 text: one character per byte, so equal keys mean equal bytes. */
function keyOf(jsonPart: Uint8Array): string {
  return Buffer.from(jsonPart.buffer, jsonPart.byteOffset, jsonPart.byteLength).toString('latin1');
}

/** The rest of the decoding, from the checked JSON and the inputs read from the body. */
function decodedFrom(request: InferRequest, inputs: PredictTensor[]): DecodedInferRequest {
  const outputs = request.outputs?.map((output): RequestedOutput => {
    const place = sharedMemoryPlace(output.parameters, `output ${JSON.stringify(output.name)}`);
    return {
      name: output.name,
      binary: output.parameters?.binary_data,
      ...(place && { sharedMemory: place }),
    };
  });
  if (outputs) {
    const seen = new Set<string>();
    for (const output of outputs) {
      if (seen.has(output.name)) {
        throw new RestError(
          400,
          `output ${JSON.stringify(output.name)} is requested twice; expected each output at most once`,
        );
      }
      seen.add(output.name);
    }
  }
  for (const output of request.outputs ?? []) {
    if (output.parameters?.classification !== undefined) {
      throw new RestError(
        400,
        `output ${JSON.stringify(output.name)} asks for classification, an extension this agent does not implement; expected raw tensor outputs`,
      );
    }
  }
  const sharedInputs: DecodedInferRequest['sharedInputs'] = [];
  request.inputs.forEach((input, position) => {
    const place = sharedMemoryPlace(
      input.parameters,
      `input ${JSON.stringify(input.name)} (#${position + 1})`,
    );
    if (place) sharedInputs.push({ ...place, position });
  });
  return {
    id: request.id,
    inputs,
    outputs,
    binaryOutputs: request.parameters?.binary_data_output ?? false,
    sharedInputs,
  };
}

/** The shared memory parameters of an input or output, checked to come together; undefined without them. */
function sharedMemoryPlace(
  parameters:
    | { shared_memory_region?: string; shared_memory_byte_size?: number; shared_memory_offset?: number }
    | undefined,
  what: string,
): SharedMemoryPlace | undefined {
  const region = parameters?.shared_memory_region;
  const byteSize = parameters?.shared_memory_byte_size;
  if (region === undefined) {
    if (byteSize !== undefined || parameters?.shared_memory_offset !== undefined)
      throw new RestError(
        400,
        `${what} has shared_memory_byte_size or shared_memory_offset but no shared_memory_region; expected the name of a registered region with them`,
      );
    return undefined;
  }
  if (byteSize === undefined)
    throw new RestError(
      400,
      `${what} names shared_memory_region ${JSON.stringify(region)} without shared_memory_byte_size; expected the tensor's size in bytes in the region`,
    );
  return { region, offset: parameters?.shared_memory_offset ?? 0, byteSize };
}

function decodeInputs(
  request: InferRequest,
  body: RequestBody | undefined,
  jsonLength: number,
  exact: boolean,
): PredictTensor[] {
  const bodyLength = body?.length ?? 0;
  const binaryLength = bodyLength - jsonLength;
  let offset = jsonLength;
  const inputs = request.inputs.map((input, position): PredictTensor => {
    const what = `input ${JSON.stringify(input.name)} (#${position + 1})`;
    const dataType = dataTypeOfKserve(input.datatype, what);
    const binarySize = input.parameters?.binary_data_size;
    if (binarySize !== undefined) {
      if (input.data !== undefined) {
        throw new RestError(
          400,
          `${what} has both data and parameters.binary_data_size; expected one of them (JSON data, or binary data after the JSON part)`,
        );
      }
      if (offset + binarySize > bodyLength) {
        throw new RestError(
          400,
          `${what} has binary_data_size ${binarySize}, but only ${bodyLength - offset} bytes of binary data remain after the JSON part and the inputs before it (${binaryLength} binary bytes in all)`,
        );
      }
      const data = body!.copy(offset, offset + binarySize);
      offset += binarySize;
      return { name: Buffer.from(input.name), dataType, shape: [...input.shape], data };
    }
    if (input.parameters?.shared_memory_region !== undefined) {
      if (input.data !== undefined)
        throw new RestError(
          400,
          `${what} has both data and parameters.shared_memory_region; expected one of them`,
        );
      // Read from the region by the route, which knows the caller; nothing of the body.
      return { name: Buffer.from(input.name), dataType, shape: [...input.shape], data: new Uint8Array(0) };
    }
    if (input.data === undefined) {
      throw new RestError(
        400,
        `${what} has no data; expected "data" (JSON values) or parameters.binary_data_size (binary data after the JSON part)`,
      );
    }
    return {
      name: Buffer.from(input.name),
      dataType,
      shape: input.shape,
      data: jsonTensorBytes(input.data, dataType, input.shape, what, exact),
    };
  });
  if (offset !== bodyLength) {
    throw new RestError(
      400,
      binaryLength > 0 && offset === jsonLength
        ? `the body has ${binaryLength} bytes after the JSON part but no input has parameters.binary_data_size; expected the Inference-Header-Content-Length header to give the JSON part's length, and binary inputs to declare their sizes`
        : `the inputs' binary_data_size add up to ${offset - jsonLength} bytes, but the body has ${binaryLength} bytes after the JSON part; expected them to be equal`,
    );
  }
  return inputs;
}
