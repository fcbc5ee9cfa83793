import { ServerResponse, type IncomingMessage } from 'node:http';
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

/** The request's deadline timer, on the request itself (no map entry per request). */
const DEADLINE = Symbol('edgefleet.requestDeadline');
/** When the request arrived (performance.now()), and the route pattern it matched once known: for onTimeout. */
const ARRIVED = Symbol('edgefleet.requestArrived');
const ROUTE = Symbol('edgefleet.requestRoute');
type TimedRequest = IncomingMessage & {
  [DEADLINE]?: NodeJS.Timeout;
  [ARRIVED]?: number;
  [ROUTE]?: string | undefined;
};

/** A request answered 408 by its deadline, below Fastify: no hook of the app hears of it. */
export interface TimedOutRequest {
  method: string | undefined;
  /** The route pattern it matched; undefined when none did, or the timer fired before its authentication ended. */
  route: string | undefined;
  /** From its arrival to the 408. */
  elapsedMs: number;
}

const { writeHead } = ServerResponse.prototype;

/**
 * `writeHead` for every response: adds `Connection: close` when the request's body has not been read in full.
 * Every way of answering (writeHead, or end/write without it) goes through it. One function for all responses,
 * set on each: no closure per request.
 */
function writeHeadClosingEarly(this: ServerResponse, ...args: unknown[]): ServerResponse {
  if (!this.req.complete && !this.headersSent) this.setHeader('connection', 'close');
  return (writeHead as (...a: unknown[]) => ServerResponse).apply(this, args);
}

/** The response is done (or the connection gone): its request's deadline no longer applies. */
function clearDeadline(this: ServerResponse): void {
  clearTimeout((this.req as TimedRequest)[DEADLINE]);
}

/**
 * Two rules for every request on the app's listener, enforced on the raw Node server below Fastify, because
 * Fastify writes some answers itself without running hooks (a malformed URL's 400, the 414, the 503 while
 * closing):
 * - A deadline for the request's body: the app's default, or the route's own (`config.requestTimeoutMs`),
 *   which replaces it in an `onRequest` hook, after authentication. Node's own request timeout is one value
 *   per listener, so a port that takes long model uploads would otherwise give every request (and every
 *   unauthenticated peer) that long to trickle a body. A body not in by then is answered 408, like Node's own
 *   timeout, and the connection closed.
 * - Any answer sent before the body was read in full carries `Connection: close`, and Node ends the connection
 *   after it. Node would otherwise keep the connection and drain the unread body, which a refused peer could
 *   trickle until the deadline.
 */
export function installRequestDeadlines(
  app: FastifyInstance,
  options: {
    defaultMs: number;
    /** Hears each 408 sent, which Fastify's onResponse hook never sees (the socket is destroyed after it). */
    onTimeout?: (answered: TimedOutRequest) => void;
  },
): void {
  const log = app.log;

  const startDeadline = (req: TimedRequest, res: ServerResponse, deadlineMs: number) => {
    clearTimeout(req[DEADLINE]);
    if (deadlineMs <= 0 || req.complete) return;
    const timer = setTimeout(() => {
      if (req.complete) return;
      const socket = req.socket;
      log.info({ deadlineMs }, 'request body not received in time; closing the connection');
      if (!res.headersSent && socket.writable) {
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
        options.onTimeout?.({
          method: req.method,
          route: req[ROUTE],
          elapsedMs: performance.now() - (req[ARRIVED] ?? performance.now()),
        });
      }
      socket.destroy();
    }, deadlineMs);
    timer.unref();
    req[DEADLINE] = timer;
  };

  // Prepended so that it runs before Fastify's own listener, which may answer at once.
  app.server.prependListener('request', (req: TimedRequest, res: ServerResponse) => {
    req[ARRIVED] = performance.now();
    startDeadline(req, res, options.defaultMs);
    // A timer that fires once the body is in does nothing; the response's end clears it.
    res.on('close', clearDeadline);
    res.writeHead = writeHeadClosingEarly as typeof res.writeHead;
  });

  app.addHook('onRequest', async (request, reply) => {
    (request.raw as TimedRequest)[ROUTE] = request.routeOptions.url;
    const routeDeadlineMs = request.routeOptions.config?.requestTimeoutMs;
    if (routeDeadlineMs !== undefined) startDeadline(request.raw, reply.raw, routeDeadlineMs);
  });
}
