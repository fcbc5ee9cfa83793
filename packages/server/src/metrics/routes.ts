import type { FastifyPluginAsync } from 'fastify';
import { defineRoute } from '../http/routes.js';
import type { ServerMetrics } from './server-metrics.js';

/** Prometheus text exposition format 0.0.4, as prom-client writes it. */
export const PROMETHEUS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

/**
 * GET /metrics on the operator port, for an operator API token of any scope (Prometheus sends it with
 * `authorization` / `bearer_token_file`) or a console session, as every read route: the counts it shows (devices, plans, refusals) are the operator's to
 * see, not the network's. The device port has no such route. One difference: a token that scraped within the last
 * minute is let in while the database cannot be used, so that the scrape reports `database_usable 0`.
 */
export const metricsRoutes: FastifyPluginAsync<{ metrics: ServerMetrics }> = async (app, { metrics }) => {
  defineRoute(app, {
    method: 'GET',
    url: '/metrics',
    // read, except while the database cannot be used: a token verified in the last minute is still let in.
    auth: 'scrape',
    tag: 'monitoring',
    summary:
      "Prometheus metrics of this server: requests, refusals, heartbeats, captures, the database, the fleet's state",
    description:
      "Prometheus text format (0.0.4). Counters are this process's since it started (each replica has its own); " +
      "the fleet's counts (devices by connection state, deployment stages and packaging jobs by status) are read " +
      'from the database at most once every few seconds, whatever the number of scrapes. docs/operations.md, ' +
      '"Monitoring", lists the metrics.',
    textResponse: {
      contentType: PROMETHEUS_CONTENT_TYPE,
      description: 'The metrics, Prometheus text format',
    },
    handler: async ({ reply }) => {
      const text = await metrics.text();
      void reply.type(PROMETHEUS_CONTENT_TYPE);
      return text;
    },
  });
};
