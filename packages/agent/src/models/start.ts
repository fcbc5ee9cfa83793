import { TrustPolicyError, loadTrustFolder, type TrustPolicy } from '@edgefleet/core';
import type { AgentConfig } from '../config/index.js';
import { ConfigError } from '../config/index.js';
import { InferencePool, type PoolEvent } from '../inference/index.js';
import type { AgentMetrics } from '../metrics/index.js';
import { ModelRegistry, type RegistryLogger } from './model-registry.js';

export interface ModelService {
  registry: ModelRegistry;
  pool: InferencePool;
  trust: TrustPolicy | null;
  /** Unloads every model (bounded by the unload timeout), then stops the workers. */
  close(): Promise<void>;
}

/**
 * Wires the model service from the agent's configuration: reads the trust folder (a bad one is a ConfigError
 * naming sagemaker_edge_core_root_certs_path), starts the inference workers, and builds the registry with
 * metrics and logging attached. What the agent's entry point calls; front doors then take `registry`.
 */
export async function startModelService(
  config: AgentConfig,
  deps: { cwd: string; logger?: RegistryLogger; metrics?: AgentMetrics },
): Promise<ModelService> {
  let trust: TrustPolicy | null = null;
  if (config.trust.rootCertsPath !== undefined) {
    try {
      trust = await loadTrustFolder(config.trust.rootCertsPath);
    } catch (error) {
      if (error instanceof TrustPolicyError) {
        throw new ConfigError(
          'sagemaker_edge_core_root_certs_path',
          `sagemaker_edge_core_root_certs_path: ${error.message}`,
        );
      }
      throw error;
    }
  } else {
    deps.logger?.warn(
      'sagemaker_edge_core_root_certs_path is not set: model packages are loaded without checking their signatures',
    );
  }
  const { metrics, logger } = deps;
  const pool = await InferencePool.start({
    workers: config.inference.workers,
    session: config.inference.ort,
    maxQueuedPerModel: config.inference.maxQueuedRequestsPerModel,
    onEvent: (event: PoolEvent) => {
      if (event.type === 'worker-exit') {
        metrics?.workerExited();
        logger?.warn(`inference worker ${event.worker} stopped (${event.reason}); replacing it`, {
          ...event,
        });
      } else if (event.type === 'instance-lost') {
        logger?.warn(`model ${event.key} lost its instance on worker ${event.worker}: ${event.reason}`, {
          ...event,
        });
      } else {
        logger?.info?.(`inference worker ${event.worker} restarted`, { ...event });
      }
    },
  });
  metrics?.watchPool(() => pool.stats());
  const registry = new ModelRegistry({
    pool,
    trust,
    requireSignatures: config.trust.requireSignatures,
    cwd: deps.cwd,
    instancesPerModel: config.inference.instancesPerModel,
    unloadTimeoutMs: config.inference.unloadTimeoutMs,
    ...(metrics && { metrics }),
    ...(logger && { logger }),
  });
  return {
    registry,
    pool,
    trust,
    async close() {
      await registry.close();
      await pool.close();
    },
  };
}
