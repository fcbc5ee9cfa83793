import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import type { BodyBudget } from '../body-budget/index.js';
import { INFERENCE_HEADER_CONTENT_LENGTH } from './infer-request.js';
import { readRequestBody, type BodyGrowth, type BodyLimit, type RequestBody } from './request-body.js';
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
  /** Bytes of bodies in flight, shared with the gRPC door. */
  budget: BodyBudget;
}

/**
 * Bodies of at most this many bytes (by Content-Length) are not counted against the body budget: the hot path
 * of small requests stays free of it, and the connection caps bound what they hold (256 × 64 KiB per listener).
 */
export const UNCOUNTED_BODY_BYTES = 64 * 1024;

/**
 * A counted body's share of the body budget: taken as its bytes arrive (never from the announced length, which
 * costs a client nothing to send), and given back once, when the agent is done with the body: when the response's
 * connection closes while the body was never handed on (refused, or the client gone mid-body), else when the work
 * it was handed to settles (handOn, then release). A client that disconnects while its body waits in a model's
 * queue therefore leaves the budget taken until that inference is over.
 */
class BodyReservation implements BodyGrowth, HeldBody {
  #bytes = 0;
  #handedOn = false;
  #released = false;
  constructor(private readonly budget: BodyBudget) {}

  grow(bytes: number): string | undefined {
    // Given back already (the connection closed): nothing more is kept for this body.
    if (this.#released) return undefined;
    if (this.budget.take(bytes)) {
      this.#bytes += bytes;
      return undefined;
    }
    return this.budget.describeRefusal(
      `the next ${bytes} bytes of this request body (after ${this.#bytes} taken for it)`,
    );
  }

  handOn(): void {
    this.#handedOn = true;
  }

  /** The response's connection closed: the body is given back unless work still holds it. */
  readonly onClose = (): void => {
    if (!this.#handedOn) this.release();
  };

  release(): void {
    if (this.#released) return;
    this.#released = true;
    this.budget.give(this.#bytes);
    this.#bytes = 0;
  }
}

/** A body handed to work that may outlive its connection: release() gives its budget back (once; more calls do nothing). */
export interface HeldBody {
  release(): void;
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
  readonly #maxBodyBytes: number;
  readonly #budget: BodyBudget;
  /**
   * Counted requests' reservations, from admit (which sees the response) to read (which sees the chunks) and
   * handOn (which the inference routes call once the body is read).
   */
  readonly #reservations = new WeakMap<Readable, BodyReservation>();
  #jsonBodiesInFlight = 0;
  readonly #releaseJsonBody = () => {
    this.#jsonBodiesInFlight--;
  };

  constructor(limits: BodyAdmissionLimits) {
    this.#maxJsonBodyBytes = limits.maxJsonBodyBytes;
    this.#maxConcurrentJsonBodies = limits.maxConcurrentJsonBodies;
    this.#maxBodyBytes = limits.maxBodyBytes;
    this.#budget = limits.budget;
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
   * connection gone). A body over UNCOUNTED_BODY_BYTES by its Content-Length, or chunked, is counted against
   * the body budget as its bytes arrive (see read and BodyReservation). A RestError (429, and the connection
   * closed: the client may go on sending) when too many large JSON bodies are in flight already; undefined when
   * admitted.
   */
  admit(req: IncomingMessage, res: ServerResponse): RestError | undefined {
    const { headers } = req;
    const contentLength = headers['content-length'];
    const transferEncoding = headers['transfer-encoding'];
    if (contentLength === undefined && transferEncoding === undefined) return undefined;
    this.#reserve(req, res, contentLength, transferEncoding);
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

  #reserve(
    req: IncomingMessage,
    res: ServerResponse,
    contentLength: string | undefined,
    transferEncoding: string | undefined,
  ): void {
    if (contentLength === undefined) {
      if (transferEncoding === undefined) return;
    } else {
      const bytes = Number(contentLength);
      // A body over maxBodyBytes is refused (413) before it is read: nothing to count.
      if (!(bytes > UNCOUNTED_BODY_BYTES) || bytes > this.#maxBodyBytes) return;
    }
    const reservation = new BodyReservation(this.#budget);
    this.#reservations.set(req, reservation);
    // on, not once: 'close' fires once anyway, and once() would wrap the listener in two more objects.
    res.on('close', reservation.onClose);
  }

  /**
   * The body of `req` has been read and is handed to work (an inference) that may go on after the client has
   * gone: its share of the budget is kept until the returned body's release(), which the caller must call once
   * that work has settled. Undefined when the body was not counted (small, or none).
   */
  handOn(req: Readable): HeldBody | undefined {
    const reservation = this.#reservations.get(req);
    reservation?.handOn();
    return reservation;
  }

  /**
   * Reads a body whatever its Content-Type (JSON and binary tensor bodies are parsed by the routes themselves),
   * within the limit its kind has: 413 as soon as it is known to be over; 429 when a counted body's next chunk
   * would pass the body budget.
   */
  read(
    stream: Readable,
    headers: IncomingHttpHeaders,
    done: (error: Error | null, body?: RequestBody) => void,
  ): void {
    const jsonPart = headers[INFERENCE_HEADER_CONTENT_LENGTH];
    const reservation = this.#reservations.get(stream);
    if (jsonPart === undefined) {
      readRequestBody(stream, headers['content-length'], this.#jsonLimit, done, reservation);
    } else if (Number(jsonPart) > this.#maxJsonBodyBytes) {
      done(
        new RestError(
          413,
          `the JSON part of the body is ${String(jsonPart).slice(0, 20)} bytes (Inference-Header-Content-Length); this agent accepts at most ${this.#maxJsonBodyBytes} bytes of JSON (maxJsonBodyBytes); send tensors as binary data after it`,
          { connection: 'close' },
        ),
      );
    } else {
      readRequestBody(stream, headers['content-length'], this.#binaryLimit, done, reservation);
    }
  }
}
