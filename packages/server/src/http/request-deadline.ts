import type { FastifyInstance } from 'fastify';
import type { ErrorBody } from './errors.js';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** This route's own deadline for its whole request, body included (ms), instead of the app's default. */
    requestTimeoutMs?: number;
  }
}

/** Node's request timeout covers every request on a listener alike; the longest route deadline is what it gets. */
export function listenerRequestTimeoutMs(defaultMs: number, routeDeadlinesMs: readonly number[]): number {
  const all = [defaultMs, ...routeDeadlinesMs];
  return all.includes(0) ? 0 : Math.max(...all);
}

/**
 * A deadline per request for its body: the app's default, or the route's own (`config.requestTimeoutMs`).
 * Node's own request timeout is one value per listener, so a port that takes long model uploads would
 * otherwise give every route (and every unauthenticated peer) that long to trickle a body. A request whose
 * body is not in by then is answered 408, like Node's own timeout, and its connection closed.
 */
export function installRequestDeadlines(app: FastifyInstance, options: { defaultMs: number }): void {
  app.addHook('onRequest', async (request, reply) => {
    const deadlineMs = request.routeOptions.config?.requestTimeoutMs ?? options.defaultMs;
    if (deadlineMs <= 0 || request.raw.complete) return;
    const timer = setTimeout(() => {
      if (request.raw.complete) return;
      const socket = request.raw.socket;
      request.log.info({ deadlineMs }, 'request body not received in time; closing the connection');
      if (!reply.raw.headersSent && socket.writable) {
        const body: ErrorBody = {
          code: 'RequestTimeout',
          message: `the request was not received in full within ${deadlineMs} ms; send the body faster, or in smaller requests`,
        };
        const json = JSON.stringify(body);
        // Written to the socket as Node's own request timeout does: the route may still be reading the body.
        socket.write(
          'HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: application/json; charset=utf-8\r\n' +
            `Content-Length: ${Buffer.byteLength(json)}\r\n\r\n${json}`,
        );
      }
      socket.destroy();
    }, deadlineMs);
    timer.unref();
    request.raw.once('close', () => clearTimeout(timer));
  });
}
