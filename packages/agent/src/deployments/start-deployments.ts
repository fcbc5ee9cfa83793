import { join } from 'node:path';
import type { TrustPolicy } from '@edgefleet/core';
import type { Registry } from 'prom-client';
import type { AgentConfig } from '../config/index.js';
import type { RegistryObserver } from '../models/index.js';
import { currentDeviceApi, fleetDisabledReason, readDeviceTls } from '../fleet/index.js';
import type { DeploymentsRepository } from '../state/index.js';
import { DeploymentMetrics } from './deployment-metrics.js';
import { startDeploymentPoller, type DeploymentsSource } from './deployment-poller.js';
import { PackageStore } from './package-store.js';
import { ResultReporter, type DeploymentResultSink } from './result-reporter.js';
import {
  UpdateEngine,
  type DeployableRegistry,
  type EngineLogger,
  type UpdateEngineOptions,
} from './update-engine.js';

export interface StartDeploymentsOptions {
  config: AgentConfig;
  /** The agent's models; the engine observes applications' loads and unloads of deployed handles. */
  registry: DeployableRegistry & { observe(observer: RegistryObserver): () => void };
  repository: DeploymentsRepository;
  trust: TrustPolicy | null;
  metricsRegistry?: Registry;
  logger: EngineLogger;
  /** Why a model did not load at the agent's start (status and heartbeats say it for a deployed handle). */
  loadFailure?: UpdateEngineOptions['loadFailure'];
}

export interface RunningDeployments {
  engine: UpdateEngine;
  /** Stops polling and the step in progress (it resumes at the next start). */
  stop(): Promise<void>;
}

/** The package store's folder under sagemaker_edge_local_data_root_path. */
export const DEPLOYMENTS_FOLDER = 'deployments';

/**
 * Starts the update engine and its poller when sagemaker_edge_deployment_lib_path enables deployments and the
 * config names a control plane (as the fleet client needs); otherwise says why not and returns undefined.
 */
export async function startDeployments(
  options: StartDeploymentsOptions,
): Promise<RunningDeployments | undefined> {
  const { config, logger } = options;
  if (!config.deployments.enabled) return undefined;
  const reason = fleetDisabledReason(config);
  if (reason !== undefined) {
    logger.warn({ event: 'deployments-disabled' }, `deployments off: ${reason}`);
    return undefined;
  }
  const endpoint = config.provider.endpoint!;
  try {
    await readDeviceTls(config);
  } catch (error) {
    // The agent still serves its models; deployments wait for a restart with readable certificate files.
    logger.error(
      { event: 'deployments-disabled', err: error },
      `deployments off: cannot read the device certificate: ${(error as Error).message}`,
    );
    return undefined;
  }
  // The certificate files are read again before each poll and download, so a renewal is used at once.
  const tls = () => readDeviceTls(config);
  const timeoutMs = 30_000;
  const metrics = options.metricsRegistry && new DeploymentMetrics(options.metricsRegistry);
  const store = new PackageStore({
    root: join(config.storage.localDataRootPath, DEPLOYMENTS_FOLDER),
    endpoint,
    tls,
    timeoutMs,
    maxPackageBytes: config.deployments.maxPackageBytes,
    minFreeBytes: config.deployments.minFreeBytes,
    ...(metrics && { onBytes: (bytes: number) => metrics.downloaded(bytes) }),
  });
  const api = currentDeviceApi(endpoint, tls, { timeoutMs });
  const source: DeploymentsSource = {
    post: async (path, body, schema, signal) => (await api.get()).post(path, body, schema, signal),
  };
  const sink: DeploymentResultSink = {
    post: async (path, body, schema, signal) => (await api.get()).post(path, body, schema, signal),
  };
  const ids = { DeviceName: config.device.name!, DeviceFleetName: config.device.fleetName! };
  const engine = new UpdateEngine({
    registry: options.registry,
    repository: options.repository,
    store,
    trust: options.trust,
    requireSignatures: config.trust.requireSignatures,
    healthWindowMs: config.deployments.healthWindowSeconds * 1000,
    updateLock: {
      path: config.deployments.updateLockPath,
      maxHoldMs: config.deployments.maxLockHoldSeconds * 1000,
    },
    logger,
    ...(metrics && { metrics }),
    ...(options.loadFailure && { loadFailure: options.loadFailure }),
    // The engine tells the reporter of final states (only once it runs, after both exist); the reporter asks
    // the engine for their results.
    onFinal: () => results.kick(),
  });
  const results = new ResultReporter({ engine, sink, ids, logger });
  const stopObserving = options.registry.observe(engine.registryObserver());
  const poller = startDeploymentPoller({
    // After each pass too: results a failed send (or a crash) left unreported are tried again at every poll.
    engine: {
      resume: () => engine.resume().finally(() => results.kick()),
      apply: (deployments) => engine.apply(deployments).finally(() => results.kick()),
    },
    source,
    ids,
    intervalMs: config.deployments.pollIntervalSeconds * 1000,
    logger,
  });
  logger.info(
    { event: 'deployments-started', endpoint, intervalSeconds: config.deployments.pollIntervalSeconds },
    `deployments: polling ${endpoint} every ${config.deployments.pollIntervalSeconds} s`,
  );
  return {
    engine,
    async stop() {
      stopObserving();
      await Promise.all([poller.stop(), engine.close(), results.stop()]);
      api.close();
      store.close();
    },
  };
}
