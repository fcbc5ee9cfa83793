import { Counter, Gauge, type Registry } from 'prom-client';
import { DEPLOYMENT_STATES, type DeploymentState } from './deployment-state.js';

/** The update engine's Prometheus metrics (`edgefleet_deployment_*`), in the agent's own registry. */
export class DeploymentMetrics {
  readonly #state: Gauge<'model' | 'state'>;
  readonly #results: Counter<'result'>;
  readonly #downloadBytes: Counter;
  readonly #rollbacks: Counter<'model'>;

  constructor(registry: Registry) {
    const registers = [registry];
    this.#state = new Gauge({
      name: 'edgefleet_deployment_state',
      help: 'The update engine state of each model handle (1 for its current state, 0 for the others)',
      labelNames: ['model', 'state'],
      registers,
    });
    this.#results = new Counter({
      name: 'edgefleet_deployment_results_total',
      help: 'Model updates that ended, by result (committed, rolled_back, failed)',
      labelNames: ['result'],
      registers,
    });
    this.#downloadBytes = new Counter({
      name: 'edgefleet_deployment_download_bytes_total',
      help: 'Package bytes downloaded by the update engine',
      registers,
    });
    this.#rollbacks = new Counter({
      name: 'edgefleet_deployment_rollbacks_total',
      help: 'Rollbacks to the previous version, per model handle',
      labelNames: ['model'],
      registers,
    });
  }

  setState(model: string, state: DeploymentState): void {
    for (const s of DEPLOYMENT_STATES) this.#state.set({ model, state: s }, s === state ? 1 : 0);
    if (state === 'Committed') this.#results.inc({ result: 'committed' });
    if (state === 'RolledBack') this.#results.inc({ result: 'rolled_back' });
    if (state === 'Failed') this.#results.inc({ result: 'failed' });
    if (state === 'RollingBack') this.#rollbacks.inc({ model });
  }

  downloaded(bytes: number): void {
    this.#downloadBytes.inc(bytes);
  }
}
