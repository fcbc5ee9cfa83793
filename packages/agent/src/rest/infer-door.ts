import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import type { BodyAdmission } from './body-admission.js';
import { INFERENCE_HEADER_CONTENT_LENGTH } from './infer-request.js';
import { JSON_RESPONSE_TYPE, writeInferResponse, type ModelInference } from './model-inference.js';
import type { RequestBody } from './request-body.js';
import { errorBody, httpFailureOf, RestError } from './rest-errors.js';
import type { RestRequestCounter } from './rest-metrics.js';

/** The inference routes' patterns, as Fastify reports them (the route label of edgefleet_rest_requests_total). */
const INFER_ROUTE = '/v2/models/:name/infer';
const VERSIONED_INFER_ROUTE = '/v2/models/:name/versions/:version/infer';

/**
 * The inference paths this door serves: segments of characters that need no percent-decoding (the router
 * decodes them, and treats ';' and '?' specially) and are not longer than the router's maxParamLength (1024),
 * with or without a trailing slash. Any other path goes to Fastify, which answers it as it always has: serves it,
 * or refuses it with its own message (bad percent-encoding, overlong segment, 404).
 */
const INFER_PATH =
  /^\/v2\/models\/([\w.~:@!$&'()*+,=-]{1,1024})(?:\/versions\/([\w.~:@!$&'()*+,=-]{1,1024}))?\/infer\/?$/;

/**
 * Content types this door takes as they are (the body is parsed whatever its type); a request with another one
 * goes to Fastify, which checks it is a valid media type first.
 */
const PLAIN_CONTENT_TYPES = new Set([
  'application/json',
  'application/json; charset=utf-8',
  'application/octet-stream',
]);

export interface InferDoorOptions {
  inference: ModelInference;
  admission: BodyAdmission;
  requests: RestRequestCounter;
  logger: Logger;
}

/**
 * POST /v2/models/{name}[/versions/{version}]/infer on the raw node:http request, in front of Fastify: the same
 * answers as Fastify's route (the same inference, body limits, 429 cap, errors and request counter), without the
 * framework's routing, hooks and reply on the path every inference request takes.
 */
export class InferDoor {
  readonly #options: InferDoorOptions;

  constructor(options: InferDoorOptions) {
    this.#options = options;
  }

  /** Serves the request and returns true when it is one of this door's; false leaves it to Fastify. */
  serve(req: IncomingMessage, res: ServerResponse): boolean {
    if (req.method !== 'POST') return false;
    const match = INFER_PATH.exec(req.url ?? '');
    if (match === null) return false;
    const { headers } = req;
    const contentType = headers['content-type'];
    if (contentType !== undefined && !PLAIN_CONTENT_TYPES.has(contentType)) return false;
    const name = match[1]!;
    const version = match[2];
    const { requests, admission } = this.#options;
    // Counted when the response is done, as Fastify's onResponse hook counts the other routes.
    const route = version === undefined ? INFER_ROUTE : VERSIONED_INFER_ROUTE;
    res.once('finish', () => requests.inc({ method: 'POST', route, status: String(res.statusCode) }));
    // The model (and version) first: a request for one that is not there is refused before its body is read.
    try {
      this.#options.inference.checkModel(name, version);
    } catch (error) {
      this.#fail(req, res, withBodyUnread(error, headers));
      return true;
    }
    const refused = admission.admit(req, res);
    if (refused !== undefined) {
      this.#fail(req, res, refused);
      return true;
    }
    admission.read(req, headers, (error: Error | null, body?: RequestBody) => {
      if (error !== null) this.#fail(req, res, error);
      else void this.#answer(req, res, name, version, body);
    });
    return true;
  }

  async #answer(
    req: IncomingMessage,
    res: ServerResponse,
    name: string,
    version: string | undefined,
    body: RequestBody | undefined,
  ): Promise<void> {
    // The body is held (queued, then run) until the inference settles, whether or not the client is still there.
    const held = this.#options.admission.handOn(req);
    try {
      const response = await this.#options.inference.infer({
        name,
        version,
        body,
        jsonPartHeader: req.headers[INFERENCE_HEADER_CONTENT_LENGTH],
        socket: req.socket,
      });
      writeInferResponse(res, response);
    } catch (error) {
      this.#fail(req, res, error);
    } finally {
      held?.release();
    }
  }

  /** Answers a failure as Fastify's error handler does (rest-app.ts): the protocol's error body. */
  #fail(req: IncomingMessage, res: ServerResponse, error: unknown): void {
    const failure = httpFailureOf(error);
    const { logger } = this.#options;
    if (failure.internal) logger.error({ err: error, url: req.url }, failure.message);
    else logger.debug({ url: req.url, status: failure.statusCode }, failure.message);
    try {
      if (res.headersSent) throw new Error('the answer was being written already');
      const body = errorBody(failure.message);
      res.writeHead(failure.statusCode, {
        ...failure.headers,
        'content-type': JSON_RESPONSE_TYPE,
        'content-length': Buffer.byteLength(body),
      });
      res.end(body);
    } catch {
      // The client cannot be told any more, only cut off; nothing may escape into the event loop.
      res.destroy();
    }
  }
}

/**
 * A refusal answered before the body is read: the connection is closed after it when a body was announced, so
 * that the client's unread body is never read (or held) by the agent.
 */
export function withBodyUnread(error: unknown, headers: IncomingHttpHeaders): unknown {
  const announced =
    headers['transfer-encoding'] !== undefined ||
    (headers['content-length'] !== undefined && headers['content-length'] !== '0');
  if (!announced) return error;
  const failure = httpFailureOf(error);
  return new RestError(failure.statusCode, failure.message, { ...failure.headers, connection: 'close' });
}
