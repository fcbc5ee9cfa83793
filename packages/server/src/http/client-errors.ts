import { STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyInstance } from 'fastify';

/** What Node answers below the app, before a request reaches it: statuses only, nothing the client sent. */
export type ClientErrorStatus = 400 | 408 | 431;

/**
 * The status Node's `clientError` is answered with: 408 when the request's headers (or the request) did not come
 * within Node's own timeouts (headersTimeout, requestTimeout), 431 for headers over maxHeaderSize, 400 for
 * anything Node could not parse. As Fastify's default handler.
 */
function statusOf(error: NodeJS.ErrnoException): ClientErrorStatus {
  if (error.code === 'ERR_HTTP_REQUEST_TIMEOUT') return 408;
  if (error.code === 'HPE_HEADER_OVERFLOW') return 431;
  return 400;
}

/**
 * Fastify's `clientErrorHandler`: answers as Fastify's default does (a short JSON body, then the socket closed),
 * and tells `onAnswered` the status of each answer sent, so that /metrics counts them; these never reach the
 * app's hooks. A connection reset, or a socket already closed or not writable, gets no answer and is not heard.
 */
export function clientErrorHandler(
  onAnswered: ((status: ClientErrorStatus) => void) | undefined,
): (this: FastifyInstance, error: NodeJS.ErrnoException, socket: Socket) => void {
  return function answerClientError(error, socket) {
    if (error.code === 'ECONNRESET' || socket.destroyed) return;
    const status = statusOf(error);
    const message =
      status === 408
        ? 'Client Timeout'
        : status === 431
          ? 'Exceeded maximum allowed HTTP header size'
          : 'Client Error';
    // At trace, as Fastify does: a client's broken request is the client's or a proxy's concern, not a line each.
    this.log.trace({ err: error }, `client error ${status}`);
    if (socket.writable) {
      const body = JSON.stringify({ error: STATUS_CODES[status], message, statusCode: status });
      socket.write(
        `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
          `Content-Type: application/json\r\n\r\n${body}`,
      );
      onAnswered?.(status);
    }
    socket.destroy(error);
  };
}
