/**
 * The agent's link to its control plane: checks that the device is registered (at start, then whenever the
 * server's CacheTTL runs out) and sends a heartbeat every interval. One loop, one request at a time:
 *
 *        start ──► check registration ──ok──► heartbeat ──ok──► wait interval (±10%) ──┐
 *                      ▲   │ fails                 │ fails                              │
 *                      │   ▼                       ▼                                    │
 *                      └── wait backoff ◄──────────┘  (refused: re-check registration)  │
 *                      ▲                                                                │
 *                      └───────────── registration older than CacheTTL ◄────────────────┘
 *
 * While the server is away nothing piles up: each attempt sends the state of that moment, with counts since
 * the last heartbeat the server accepted. Backoff is exponential with jitter, capped, so a fleet that lost its
 * server does not return to it in lockstep. `stop()` cancels the wait and the request in flight.
 */
import { readFile } from 'node:fs/promises';
import {
  type DeployedModelNotLoadedInput,
  type DeploymentResultInput,
  MAX_MODELS_PER_HEARTBEAT,
  deployedModelNotLoadedSchema,
  deploymentResultSchema,
  deviceRegistrationResultSchema,
  sendHeartbeatRequestSchema,
  sendHeartbeatResultSchema,
} from '@edgefleet/core';
import type { AgentConfig } from '../config/index.js';
import type { AgentMetrics } from '../metrics/index.js';
import { backoffDelay, sleepUnlessAborted } from '../retry/index.js';
import { AgentRunsLedger } from './agent-runs.js';
import { CertificateRenewal, type CertificateRenewalOptions } from './certificate-renewal.js';
import { currentDeviceApi } from './current-tls.js';
import type { DeviceApiClient } from './device-api.js';
import { DeviceApiError, type DeviceTlsIdentity } from './device-api.js';
import {
  HeartbeatComposer,
  type ActivitySource,
  type ModelSource,
  type ProcessProbe,
  type StorageProbe,
} from './telemetry.js';

/** The logging the client needs (pino's signature: fields first). */
export interface FleetLogger {
  debug(fields: object, message: string): void;
  info(fields: object, message: string): void;
  warn(fields: object, message: string): void;
  error(fields: object, message: string): void;
}

export interface FleetClientOptions {
  config: AgentConfig;
  registry: ModelSource;
  logger: FleetLogger;
  agentVersion: string;
  metrics?: AgentMetrics;
  /** Latest inference and sample times per model (e.g. the local database's ModelActivity). */
  activity?: ActivitySource;
  /** The update engine's result to carry in heartbeats (SendHeartbeat.DeploymentResult). */
  deployments?: DeploymentResultSource;
  /** The data root's free space and the capture spool's backlog, for the heartbeat. */
  storage?: StorageProbe;
  /** Test seams; the defaults derive from the config. */
  timing?: Partial<FleetTiming>;
  probe?: ProcessProbe;
  random?: () => number;
  /** Certificate renewal settings (certificate-renewal.ts); the files come from the config. */
  renewal?: Omit<CertificateRenewalOptions, 'files'>;
}

/** What the heartbeat reports of deployments: a result to send, and the server's acceptance of it. */
export interface DeploymentResultSource {
  deploymentResult(): DeploymentResultInput | undefined;
  reported(result: DeploymentResultInput): void;
  /** Deployed handles serving nothing now (SendHeartbeat.DeployedModelsNotLoaded, EdgeFleet's). */
  deployedModelsNotLoaded?(): DeployedModelNotLoadedInput[];
}

export interface FleetTiming {
  heartbeatIntervalMs: number;
  /** First retry delay after a failure, doubled per failure up to maxBackoffMs, with jitter (retry/backoff.ts). */
  initialBackoffMs: number;
  maxBackoffMs: number;
  requestTimeoutMs: number;
  /** Registration is re-checked after this long when the server sends no usable CacheTTL. */
  defaultRegistrationTtlMs: number;
}

export type FleetClientState =
  'disabled' | 'starting' | 'registered' | 'unregistered' | 'unreachable' | 'stopped';

export interface FleetClientStatus {
  state: FleetClientState;
  /** Why the client is disabled, or the last failure. */
  reason?: string;
  heartbeatsSent: number;
  consecutiveFailures: number;
  lastHeartbeatAt?: Date;
}

export interface FleetClient {
  status(): FleetClientStatus;
  /** Cancels any wait and the request in flight, then records a clean stop. Safe to call more than once. */
  stop(): Promise<void>;
}

export const DEFAULT_HEARTBEAT_INTERVAL_SECONDS = 30;

/** Backoff tops out at four intervals (at most 5 minutes): a returning server hears from devices soon. */
export function defaultTiming(heartbeatIntervalSeconds: number): FleetTiming {
  const interval = heartbeatIntervalSeconds * 1000;
  return {
    heartbeatIntervalMs: interval,
    initialBackoffMs: Math.min(1000, interval),
    maxBackoffMs: Math.min(4 * interval, 300_000),
    requestTimeoutMs: Math.min(30_000, Math.max(5000, interval)),
    defaultRegistrationTtlMs: 300_000,
  };
}

const DATA_PLANE_NAME = /^[a-zA-Z0-9](-*_*[a-zA-Z0-9])*$/;

function disabled(reason: string): FleetClient {
  return {
    status: () => ({ state: 'disabled', reason, heartbeatsSent: 0, consecutiveFailures: 0 }),
    stop: async () => {},
  };
}

/** Why the config does not allow a fleet client (nor deployments), or undefined when it does. */
export function whyDisabled(config: AgentConfig): string | undefined {
  const { provider, device } = config;
  if (provider.kind === 'None') return 'sagemaker_edge_provider_provider is None (offline)';
  if (provider.endpoint === undefined) return 'sagemaker_edge_core_endpoint_override is not set';
  if (!provider.endpoint.startsWith('https://'))
    return `sagemaker_edge_core_endpoint_override ${provider.endpoint} is not https://; the device API needs mutual TLS`;
  if (provider.certFile === undefined || provider.certKeyFile === undefined)
    return 'sagemaker_edge_provider_aws_cert_file and sagemaker_edge_provider_aws_cert_pk_file are not both set (enroll the device: edgefleet device enroll)';
  for (const [key, value] of [
    ['sagemaker_edge_core_device_name', device.name],
    ['sagemaker_edge_core_device_fleet_name', device.fleetName],
  ] as const) {
    if (value === undefined || value.length > 63 || !DATA_PLANE_NAME.test(value))
      return `${key} ${JSON.stringify(value)} is not a device/fleet name the device API accepts (letters and digits joined by - or _)`;
  }
  return undefined;
}

export async function readDeviceTls(config: AgentConfig): Promise<DeviceTlsIdentity> {
  const { certFile, certKeyFile, caCertFile } = config.provider;
  const read = (file: string, key: string) =>
    readFile(file, 'utf8').catch((error: unknown) => {
      throw new Error(`${key} ${file}: ${(error as Error).message}`);
    });
  return {
    certPem: await read(certFile!, 'sagemaker_edge_provider_aws_cert_file'),
    keyPem: await read(certKeyFile!, 'sagemaker_edge_provider_aws_cert_pk_file'),
    ...(caCertFile !== undefined && {
      caPem: await read(caCertFile, 'sagemaker_edge_provider_aws_ca_cert_file'),
    }),
  };
}

/**
 * Starts the fleet client when the config names an endpoint and a provider other than None (and the device's
 * certificate files); otherwise logs why not and returns a handle whose stop() does nothing.
 */
export async function startFleetClient(options: FleetClientOptions): Promise<FleetClient> {
  const { config, logger } = options;
  const reason = whyDisabled(config);
  if (reason !== undefined) {
    if (config.provider.kind !== 'None')
      logger.warn({ event: 'fleet-disabled' }, `fleet client off: ${reason}`);
    return disabled(reason);
  }
  const endpoint = config.provider.endpoint!;
  const deviceName = config.device.name!;
  const fleetName = config.device.fleetName!;
  const timing: FleetTiming = {
    ...defaultTiming(config.provider.heartbeatIntervalSeconds ?? DEFAULT_HEARTBEAT_INTERVAL_SECONDS),
    ...options.timing,
  };
  const random = options.random ?? Math.random;

  const ledger = new AgentRunsLedger(config.storage.localDataRootPath);
  await ledger
    .recordStart()
    .catch((error: unknown) =>
      logger.warn(
        { event: 'fleet-runs-unwritable', file: ledger.file, err: error },
        'cannot record agent starts; start and crash counts are this run only',
      ),
    );

  const composer = new HeartbeatComposer({
    deviceName,
    fleetName,
    agentVersion: options.agentVersion,
    registry: options.registry,
    ...(options.metrics && { metrics: options.metrics }),
    ...(options.activity && { activity: options.activity }),
    // This run counts even when the ledger could not be written.
    runs: () => ({ starts: Math.max(1, ledger.runs.starts), crashes: ledger.runs.crashes }),
    ...(options.probe && { probe: options.probe }),
    ...(options.storage && { storage: options.storage }),
  });

  const status: FleetClientStatus = { state: 'starting', heartbeatsSent: 0, consecutiveFailures: 0 };
  const abort = new AbortController();
  // The TLS files are read again before each registration check and heartbeat, so a renewed or re-enrolled
  // certificate is used at once.
  const api = currentDeviceApi(endpoint, () => readDeviceTls(config), { timeoutMs: timing.requestTimeoutMs });
  let registeredUntil = 0;
  const connect = (): Promise<DeviceApiClient> => api.get();

  const renewal = new CertificateRenewal({
    ...options.renewal,
    files: {
      certFile: config.provider.certFile!,
      keyFile: config.provider.certKeyFile!,
      ...(config.provider.caCertFile !== undefined && { caFile: config.provider.caCertFile }),
    },
  });
  /** Renews the certificate when due; a failure is logged and retried later, the current one still works. */
  const renewCertificate = async (client: DeviceApiClient): Promise<void> => {
    try {
      const renewed = await renewal.renewIfDue(client, abort.signal);
      if (renewed)
        logger.info(
          { event: 'fleet-certificate-renewed', serial: renewed.serial, notAfter: renewed.notAfter },
          `device certificate renewed, valid until ${renewed.notAfter}`,
        );
    } catch (error) {
      if (abort.signal.aborted) return;
      logger.warn(
        { event: 'fleet-certificate-renewal-failed', err: error },
        `device certificate renewal failed (the current certificate stays in use): ${(error as Error).message}`,
      );
    }
  };

  const ids = { DeviceName: deviceName, DeviceFleetName: fleetName };
  let badResultLogged = false;
  /** The kind of the last failure logged as a warning; '' after a success. */
  let lastFailure = '';

  const failed = (error: unknown, step: 'registration' | 'heartbeat'): number => {
    status.consecutiveFailures++;
    const message = (error as Error).message;
    const failure = error instanceof DeviceApiError ? error.failure : 'local';
    status.state = failure === 'refused' ? 'unregistered' : 'unreachable';
    status.reason = message;
    if (failure === 'refused') registeredUntil = 0;
    const delay = backoffDelay(
      { initialMs: timing.initialBackoffMs, maxMs: timing.maxBackoffMs },
      status.consecutiveFailures,
      random,
    );
    // One warning per kind of failure, not one per retry: an outage of an hour is a few lines, not thousands.
    const fields = {
      event: `fleet-${step}-failed`,
      failure,
      failures: status.consecutiveFailures,
      retryInMs: delay,
    };
    if (failure !== lastFailure) {
      (failure === 'rejected' ? logger.error : logger.warn).call(
        logger,
        fields,
        `${step} failed: ${message}; retrying with backoff`,
      );
      lastFailure = failure;
    } else logger.debug(fields, `${step} failed again: ${message}`);
    return delay;
  };

  const loop = async (): Promise<void> => {
    while (!abort.signal.aborted) {
      let delay: number;
      try {
        if (Date.now() >= registeredUntil) {
          const client = await connect();
          const result = await client.post(
            'GetDeviceRegistration',
            ids,
            deviceRegistrationResultSchema,
            abort.signal,
          );
          if (result.DeviceRegistration !== 'REGISTERED') {
            throw new DeviceApiError(
              'refused',
              `the server says device ${deviceName} is ${result.DeviceRegistration}`,
            );
          }
          const ttl = Number(result.CacheTTL);
          registeredUntil =
            Date.now() + (Number.isFinite(ttl) && ttl >= 0 ? ttl * 1000 : timing.defaultRegistrationTtlMs);
          if (status.state !== 'registered')
            logger.info(
              { event: 'fleet-registered', device: deviceName, fleet: fleetName, endpoint },
              `registered with ${endpoint} as ${deviceName} of fleet ${fleetName}`,
            );
          status.state = 'registered';
        }
        const client = await connect();
        const { heartbeat, reading, skipped } = await composer.compose();
        if (skipped.length > 0)
          logger.debug(
            { event: 'fleet-models-skipped', models: skipped },
            'models left out of the heartbeat: name or version outside the heartbeat patterns, or too many',
          );
        // A result the contract refuses is left out (and said once), never allowed to stop the heartbeats.
        let deploymentResult = options.deployments?.deploymentResult();
        if (deploymentResult && !deploymentResultSchema.safeParse(deploymentResult).success) {
          if (!badResultLogged)
            logger.warn(
              { event: 'fleet-deployment-result-invalid', deployment: deploymentResult.DeploymentName },
              `the deployment result of ${deploymentResult.DeploymentName} does not fit the heartbeat's contract; not sent`,
            );
          badResultLogged = true;
          deploymentResult = undefined;
        }
        if (deploymentResult) heartbeat.DeploymentResult = deploymentResult;
        // Every heartbeat, empty too: the server replaces its list, so a handle loaded again drops out of it.
        const notLoaded = options.deployments?.deployedModelsNotLoaded?.();
        if (notLoaded) {
          // Entry by entry, as the Models list: one that does not fit the contract is left out, not the heartbeat.
          const fitting = notLoaded.filter((entry) => deployedModelNotLoadedSchema.safeParse(entry).success);
          if (fitting.length < notLoaded.length)
            logger.debug(
              {
                event: 'fleet-not-loaded-skipped',
                handles: notLoaded
                  .filter((entry) => !fitting.includes(entry))
                  .map((entry) => entry.ModelHandle),
              },
              'deployed models not loaded left out of the heartbeat: they do not fit its contract',
            );
          heartbeat.DeployedModelsNotLoaded = fitting.slice(0, MAX_MODELS_PER_HEARTBEAT);
        }
        // Checked against the contract, sent as composed (parsing would turn its seconds into the server's ms).
        sendHeartbeatRequestSchema.parse(heartbeat);
        await client.post('SendHeartbeat', heartbeat, sendHeartbeatResultSchema, abort.signal);
        composer.commit(reading);
        if (deploymentResult) options.deployments?.reported(deploymentResult);
        if (status.consecutiveFailures > 0)
          logger.info(
            { event: 'fleet-resumed', failures: status.consecutiveFailures },
            `heartbeats resumed after ${status.consecutiveFailures} failed attempts`,
          );
        status.heartbeatsSent++;
        status.consecutiveFailures = 0;
        status.lastHeartbeatAt = new Date();
        status.state = 'registered';
        delete status.reason;
        lastFailure = '';
        delay = Math.round(timing.heartbeatIntervalMs * (0.9 + 0.2 * random()));
        // After an accepted heartbeat, so a renewal never delays one; the next heartbeat reads the new files.
        await renewCertificate(client);
      } catch (error) {
        if (abort.signal.aborted) break;
        if (!(error instanceof DeviceApiError) || error.failure !== 'refused') composer.attemptFailed();
        delay = failed(error, Date.now() >= registeredUntil ? 'registration' : 'heartbeat');
      }
      await sleepUnlessAborted(delay, abort.signal);
    }
  };

  logger.info(
    {
      event: 'fleet-starting',
      endpoint,
      device: deviceName,
      fleet: fleetName,
      intervalMs: timing.heartbeatIntervalMs,
      starts: ledger.runs.starts,
      crashes: ledger.runs.crashes,
    },
    `fleet client: heartbeats to ${endpoint} every ${timing.heartbeatIntervalMs / 1000} s`,
  );
  const running = renewal
    .recover()
    .then(
      (finished) => {
        if (finished)
          logger.info(
            { event: 'fleet-certificate-renewed' },
            'finished a certificate renewal cut short by a restart',
          );
      },
      (error: unknown) =>
        logger.warn(
          { event: 'fleet-certificate-renewal-failed', err: error },
          `checking for an interrupted certificate renewal failed: ${(error as Error).message}`,
        ),
    )
    .then(loop)
    .catch((error: unknown) => {
      logger.error(
        { event: 'fleet-client-failed', err: error },
        `fleet client stopped unexpectedly: ${(error as Error).message}`,
      );
    });

  let stopping: Promise<void> | undefined;
  return {
    status: () => ({ ...status }),
    stop() {
      stopping ??= (async () => {
        abort.abort();
        await running;
        api.close();
        status.state = 'stopped';
        await ledger.recordCleanStop().catch(() => {});
      })();
      return stopping;
    },
  };
}
