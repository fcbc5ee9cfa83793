import { collectDefaultMetrics, Registry } from 'prom-client';

/**
 * prom-client's process and Node.js metrics, collected once per process and shared by every ServerMetrics in it.
 * collectDefaultMetrics starts a GC PerformanceObserver and an event-loop-delay histogram that prom-client gives
 * no way to stop: one registry per server start would leave another set observing every GC for the rest of the
 * process (a test worker starts many servers). The metrics are the process's anyway, whichever server shows them.
 */
let shared: Registry | undefined;

export function processMetricsRegistry(): Registry {
  if (shared === undefined) {
    shared = new Registry();
    collectDefaultMetrics({ register: shared });
  }
  return shared;
}
