import { Counter, type Registry } from 'prom-client';

const NAME = 'edgefleet_rest_requests_total';

/**
 * REST requests by route and status, in the agent's own Prometheus registry: the registry's inference metrics
 * count what reached a model; this counts what the REST door answered, including requests refused before that.
 * Reused when a second app is built over the same registry.
 */
export type RestRequestCounter = Counter<'method' | 'route' | 'status'>;

export function restRequestCounter(registry: Registry): RestRequestCounter {
  const existing = registry.getSingleMetric(NAME);
  if (existing) return existing as RestRequestCounter;
  return new Counter({
    name: NAME,
    help: 'KServe v2 REST requests answered, by method, route pattern and HTTP status',
    labelNames: ['method', 'route', 'status'],
    registers: [registry],
  });
}
