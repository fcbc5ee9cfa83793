export { AgentMetrics, type RequestObservation } from './agent-metrics.js';
