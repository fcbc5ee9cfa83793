import type { ServerResponse } from 'node:http';
import type { FastifyPluginAsync, FastifyRequest } from 'fastify';
import { bearerTokenOf, requireOperator, type ApiTokenStore } from '../auth/index.js';
import { DomainError } from '../errors/index.js';
import { errorBodySchema } from '../http/errors.js';
import { toJsonSchema } from '../http/routes.js';
import type { ChangeFeed } from './change-feed.js';
import type { ConsoleSessionStore } from './session-store.js';

export interface ConsoleEventRoutesOptions {
  feed: ChangeFeed;
  /** Streams this server holds at most (console.maxEventStreams). */
  maxStreams: number;
  /** Streams one API token, with the console sessions opened with it, holds at most. */
  maxStreamsPerToken: number;
  /** How often a keepalive comment goes out and the stream's token or session is checked again. */
  keepaliveMs: number;
  /** A stream ends after 80-100 % of this long (jittered); EventSource reconnects and authenticates again. */
  maxLifetimeMs: number;
  tokens: ApiTokenStore;
  sessions: ConsoleSessionStore;
}

/**
 * Live updates for the console as Server-Sent Events: `event: ready` once every later change is sent, then
 * `event: change` with the topics that changed. The
 * browser's EventSource reconnects by itself (after a restart, a replica switch, or the stream's lifetime).
 * A stream holds its identity only as long as the token or session does: each keepalive tick checks it again.
 */
export const consoleEventRoutes: FastifyPluginAsync<ConsoleEventRoutesOptions> = async (app, options) => {
  const { feed, maxStreams, maxStreamsPerToken } = options;
  const streams = new Set<ServerResponse>();
  const streamsByToken = new Map<string, number>();
  const errorJson = toJsonSchema(errorBodySchema, 'output');

  /** Whether the token or console session that opened a stream is still good (not revoked, signed out or expired). */
  const stillAuthenticated = async (request: FastifyRequest): Promise<boolean> => {
    if (request.consoleSession !== undefined) {
      return (await options.sessions.find(request.consoleSession.sessionId)) !== undefined;
    }
    const token = bearerTokenOf(request.headers.authorization);
    return token !== undefined && (await options.tokens.verify(token)) !== undefined;
  };

  app.route({
    method: 'GET',
    url: '/api/v1/console/events',
    config: { auth: 'read' },
    schema: {
      tags: ['console'],
      summary:
        'Live updates (text/event-stream): `ready` once every later change is sent, then `change` events naming the topics that changed',
      description:
        `A stream ends after ${(options.maxLifetimeMs * 0.8) / 1000}-${options.maxLifetimeMs / 1000} s (jittered), and as soon as its token or session is revoked, ` +
        `signed out or expired (checked every ${options.keepaliveMs / 1000} s); EventSource reconnects by itself. ` +
        `At most ${maxStreamsPerToken} streams per API token (its console sessions included) and ${maxStreams} per server; more get 429.`,
      security: [{ bearerAuth: [] }],
      response: {
        200: {
          description:
            'A text/event-stream, ended by the server after its lifetime or when its credentials end',
          content: { 'text/event-stream': { schema: { type: 'string' } } },
        },
        400: errorJson,
        401: errorJson,
        429: errorJson,
      },
    },
    handler: async (request, reply) => {
      const { tokenId, name } = requireOperator(request);
      if (streams.size >= maxStreams) {
        reply.header('retry-after', '30');
        throw new DomainError(
          'LimitExceeded',
          `this server already holds ${maxStreams} live-update streams (console.maxEventStreams); try again later`,
        );
      }
      const held = streamsByToken.get(tokenId) ?? 0;
      if (held >= maxStreamsPerToken) {
        reply.header('retry-after', '30');
        throw new DomainError(
          'LimitExceeded',
          `token "${name}" already holds ${held} live-update streams, the most one token and its console sessions may (console.maxEventStreamsPerToken); close one (another console tab) or try again later`,
        );
      }
      streamsByToken.set(tokenId, held + 1);
      reply.hijack();
      const raw = reply.raw;
      streams.add(raw);
      raw.writeHead(200, {
        'content-type': 'text/event-stream; charset=utf-8',
        'cache-control': 'no-store',
        'x-accel-buffering': 'no',
      });
      raw.write('retry: 3000\n\n');
      const unsubscribe = feed.subscribe((topics) => {
        raw.write(`event: change\ndata: ${JSON.stringify({ topics })}\n\n`);
      });
      let closed = false;
      /** Gives the stream's places back and stops its timers and subscription; idempotent. */
      const close = () => {
        if (closed) return;
        closed = true;
        streams.delete(raw);
        const left = (streamsByToken.get(tokenId) ?? 1) - 1;
        if (left > 0) streamsByToken.set(tokenId, left);
        else streamsByToken.delete(tokenId);
        clearInterval(keepalive);
        clearTimeout(lifetime);
        unsubscribe();
      };
      /** Ends the stream from this side; close() runs at once, not only when (or if) 'close' is emitted. */
      const end = () => {
        close();
        raw.end();
      };
      let checking = false;
      const keepalive = setInterval(() => {
        if (checking) return;
        checking = true;
        stillAuthenticated(request)
          .then((ok) => {
            if (ok) raw.write(': keepalive\n\n');
            else end();
          })
          .catch((error: unknown) => {
            // Cannot tell (database unreachable): end it; the reconnect authenticates afresh or fails visibly.
            request.log.warn({ err: error }, 'could not check a live-update stream credentials; ending it');
            end();
          })
          .finally(() => (checking = false));
      }, options.keepaliveMs);
      // Jittered (80-100 % of the lifetime), so tabs opened together (after a restart) do not all reconnect and
      // reload every view at the same moment, lifetime after lifetime.
      const lifetime = setTimeout(end, options.maxLifetimeMs * (0.8 + 0.2 * Math.random()));
      request.raw.on('close', close);
      raw.on('close', close);
      raw.on('error', close);
      // The client may have gone during the awaited authentication: its 'close' was emitted before the listeners
      // above were attached, and would never come again.
      if (request.raw.destroyed || raw.destroyed || raw.socket?.destroyed === true) close();
      // Every change after this event reaches this stream: the console reloads what it shows then (its page was
      // loaded before the feed's snapshot, or while it reconnected).
      void feed.ready().then(() => {
        if (!closed) raw.write('event: ready\ndata: {}\n\n');
      });
    },
  });
  // Streams end on their own only after their lifetime: end them when the server closes, or it would wait.
  app.addHook('preClose', async () => {
    for (const stream of streams) stream.end();
    await feed.stop();
  });
};
