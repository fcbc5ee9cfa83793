import type { ServerResponse } from 'node:http';
import type { FastifyPluginAsync } from 'fastify';
import { DomainError } from '../errors/index.js';
import { errorBodySchema } from '../http/errors.js';
import { toJsonSchema } from '../http/routes.js';
import type { ChangeFeed } from './change-feed.js';

/** A comment line this often keeps proxies and the listener's idle timeout from closing a quiet stream. */
const KEEPALIVE_MS = 15_000;

/**
 * Live updates for the console as Server-Sent Events: `event: change` with the topics that changed. The
 * browser's EventSource reconnects by itself (after a restart, a replica switch, or the request timeout).
 */
export const consoleEventRoutes: FastifyPluginAsync<{ feed: ChangeFeed; maxStreams: number }> = async (
  app,
  { feed, maxStreams },
) => {
  const streams = new Set<ServerResponse>();
  const errorJson = toJsonSchema(errorBodySchema, 'output');
  app.route({
    method: 'GET',
    url: '/api/v1/console/events',
    config: { auth: 'read' },
    schema: {
      tags: ['console'],
      summary: 'Live updates (text/event-stream): `change` events naming the topics that changed',
      security: [{ bearerAuth: [] }],
      response: {
        200: {
          description: 'An endless text/event-stream',
          content: { 'text/event-stream': { schema: { type: 'string' } } },
        },
        400: errorJson,
        401: errorJson,
        429: errorJson,
      },
    },
    handler: async (request, reply) => {
      if (streams.size >= maxStreams) {
        throw new DomainError(
          'LimitExceeded',
          `this server already holds ${maxStreams} live-update streams (console.maxEventStreams); try again later`,
        );
      }
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
      const keepalive = setInterval(() => raw.write(': keepalive\n\n'), KEEPALIVE_MS);
      let closed = false;
      const close = () => {
        if (closed) return;
        closed = true;
        streams.delete(raw);
        clearInterval(keepalive);
        unsubscribe();
      };
      request.raw.on('close', close);
      raw.on('close', close);
      raw.on('error', close);
    },
  });
  // Streams never end on their own: end them when the server closes, or it would wait for them forever.
  app.addHook('preClose', async () => {
    for (const stream of streams) stream.end();
    await feed.stop();
  });
};
