import type { IncomingHttpHeaders, ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import { INFERENCE_HEADER_CONTENT_LENGTH } from './infer-request.js';
import { readRequestBody, type BodyLimit, type RequestBody } from './request-body.js';
import { RestError } from './rest-errors.js';

/** A JSON body above this size (or of unknown size) counts against maxConcurrentJsonBodies. */
export const LARGE_JSON_BODY_BYTES = 64 * 1024;

export interface BodyAdmissionLimits {
  /** Largest body with binary tensor data. */
  maxBodyBytes: number;
  /** Largest JSON body, and largest JSON part of a binary body (at most maxBodyBytes). */
  maxJsonBodyBytes: number;
  /** Large JSON bodies being read and parsed at once. */
  maxConcurrentJsonBodies: number;
}

/**
 * Which request bodies the REST API takes, and how many large JSON ones at once: one implementation for Fastify's
 * hook and body parser (every route) and the lean inference door in front of Fastify (rest-app.ts).
 */
export class BodyAdmission {
  readonly #binaryLimit: BodyLimit;
  readonly #jsonLimit: BodyLimit;
  readonly #maxJsonBodyBytes: number;
  readonly #maxConcurrentJsonBodies: number;
  #jsonBodiesInFlight = 0;
  readonly #releaseJsonBody = () => {
    this.#jsonBodiesInFlight--;
  };

  constructor(limits: BodyAdmissionLimits) {
    this.#maxJsonBodyBytes = limits.maxJsonBodyBytes;
    this.#maxConcurrentJsonBodies = limits.maxConcurrentJsonBodies;
    this.#binaryLimit = {
      bytes: limits.maxBodyBytes,
      advice: '(maxBodyBytes); send smaller tensors, or use the gRPC API with shared memory for large ones',
    };
    this.#jsonLimit = {
      bytes: limits.maxJsonBodyBytes,
      advice: `of JSON (maxJsonBodyBytes); send large tensors as binary data (the binary tensor data extension, bodies of up to ${limits.maxBodyBytes} bytes), or use the gRPC API`,
    };
  }

  /**
   * Called once a request's headers are in. Large JSON bodies are parsed one or two at a time, so that a burst
   * of them cannot multiply the memory one costs: counted from the headers until the response is done (or the
   * connection gone). A RestError (429) when too many are in flight already; undefined when admitted.
   */
  admit(headers: IncomingHttpHeaders, res: ServerResponse): RestError | undefined {
    const contentLength = headers['content-length'];
    const transferEncoding = headers['transfer-encoding'];
    if (contentLength === undefined && transferEncoding === undefined) return undefined;
    // A binary body's JSON part (up to maxJsonBodyBytes) is parsed the same way, so it counts by its own size:
    // else the header alone would take a large JSON body past this cap.
    const jsonPart = headers[INFERENCE_HEADER_CONTENT_LENGTH];
    const large =
      jsonPart !== undefined
        ? Number(jsonPart) > LARGE_JSON_BODY_BYTES
        : transferEncoding !== undefined || Number(contentLength) > LARGE_JSON_BODY_BYTES;
    if (!large) return undefined;
    if (this.#jsonBodiesInFlight >= this.#maxConcurrentJsonBodies) {
      return new RestError(
        429,
        `${this.#jsonBodiesInFlight} large JSON request bodies are being parsed already, the most this agent takes at once (maxConcurrentJsonBodies); retry shortly, or send tensors as binary data (the binary tensor data extension), which has no such limit`,
        { connection: 'close' },
      );
    }
    this.#jsonBodiesInFlight++;
    res.once('close', this.#releaseJsonBody);
    return undefined;
  }

  /**
   * Reads a body whatever its Content-Type (JSON and binary tensor bodies are parsed by the routes themselves),
   * within the limit its kind has: 413 as soon as it is known to be over.
   */
  read(
    stream: Readable,
    headers: IncomingHttpHeaders,
    done: (error: Error | null, body?: RequestBody) => void,
  ): void {
    const jsonPart = headers[INFERENCE_HEADER_CONTENT_LENGTH];
    if (jsonPart === undefined) {
      readRequestBody(stream, headers['content-length'], this.#jsonLimit, done);
    } else if (Number(jsonPart) > this.#maxJsonBodyBytes) {
      done(
        new RestError(
          413,
          `the JSON part of the body is ${String(jsonPart).slice(0, 20)} bytes (Inference-Header-Content-Length); this agent accepts at most ${this.#maxJsonBodyBytes} bytes of JSON (maxJsonBodyBytes); send tensors as binary data after it`,
          { connection: 'close' },
        ),
      );
    } else {
      readRequestBody(stream, headers['content-length'], this.#binaryLimit, done);
    }
  }
}
