import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAgentConfig } from '../../src/config/index.js';
import { startFleetClient, type FleetClient } from '../../src/fleet/index.js';
import { DEFAULT_ORT_SESSION_CONFIG, InferencePool } from '../../src/inference/index.js';
import { AgentMetrics } from '../../src/metrics/index.js';
import { ModelRegistry } from '../../src/models/index.js';
import { predictTensors, scratch } from '../models/helpers.js';
import {
  agentConfig,
  captureLogger,
  enrollDevice,
  FAST_TIMING,
  operator,
  reenroll,
  removeControlPlane,
  startControlPlane,
  until,
  type ControlPlane,
} from './support.js';

let plane: ControlPlane;
let work: string;
let files: Awaited<ReturnType<typeof scratch>>;
let pool: InferencePool;

beforeAll(async () => {
  plane = await startControlPlane();
  work = await mkdtemp(join(tmpdir(), 'ef-fleet-client-'));
  files = await scratch('ef-fleet-models-');
  pool = await InferencePool.start({ workers: 1, session: DEFAULT_ORT_SESSION_CONFIG });
});
afterAll(async () => {
  await pool?.close();
  await files?.cleanup();
  await removeControlPlane(plane, work);
});

describe('startFleetClient', () => {
  it('stays off, saying why, without a provider, an endpoint or certificate files', async () => {
    const ctx = { cwd: work, cpuCount: 2, grpcSocketPath: join(work, 'a.sock') };
    const { logger, lines } = captureLogger();
    const offline = await startFleetClient({
      config: parseAgentConfig({}, ctx).config,
      registry: { list: () => [] },
      logger,
      agentVersion: '0.1.0',
    });
    expect(offline.status()).toMatchObject({
      state: 'disabled',
      reason: expect.stringMatching(/provider is None/),
    });
    await offline.stop();
    expect(lines).toEqual([]); // offline is the normal case: nothing to warn about

    const noCerts = await startFleetClient({
      config: parseAgentConfig(
        {
          sagemaker_edge_provider_provider: 'Aws',
          sagemaker_edge_core_device_name: 'd1',
          sagemaker_edge_core_device_fleet_name: 'f1',
          sagemaker_edge_core_endpoint_override: plane.deviceEndpoint,
        },
        ctx,
      ).config,
      registry: { list: () => [] },
      logger,
      agentVersion: '0.1.0',
    });
    expect(noCerts.status()).toMatchObject({
      state: 'disabled',
      reason: expect.stringMatching(/edgefleet device enroll/),
    });
    expect(lines.map((l) => l.event)).toEqual(['fleet-disabled']);
  });

  it('registers, heartbeats with agent and model metrics, survives an outage without losing counts, and resumes', async () => {
    const dir = join(work, 'cam-1');
    const config = await agentConfig(await enrollDevice(plane, 'yard', 'cam-1', dir), dir);
    const metrics = new AgentMetrics({ defaultMetrics: false });
    const registry = new ModelRegistry({ pool, trust: null, cwd: files.root, metrics });
    await registry.load({ url: await files.catalogue('mlp', 'mlp'), name: 'mlp' });
    const { logger, lines } = captureLogger();
    let client: FleetClient | undefined;
    try {
      client = await startFleetClient({
        config,
        registry,
        metrics,
        logger,
        agentVersion: '0.1.0',
        timing: FAST_TIMING,
      });
      for (let i = 0; i < 3; i++) await registry.predict('mlp', predictTensors('mlp'));
      const before = client.status().heartbeatsSent;
      await until(() => (client!.status().heartbeatsSent >= before + 2 ? true : undefined), 'two heartbeats');

      const device = await operator(plane, 'GET', '/api/v1/devices/cam-1');
      expect(device).toMatchObject({
        status: 'online',
        agentVersion: '0.1.0',
        models: [{ name: 'mlp', version: '1.0', latestInference: expect.any(String) }],
      });
      const report = await operator(plane, 'GET', '/api/v1/fleets/yard/report');
      expect(report).toMatchObject({
        deviceStats: { connectedDeviceCount: 1, registeredDeviceCount: 1 },
        agentVersions: [{ version: '0.1.0', agentCount: 1 }],
        modelStats: [
          { modelName: 'mlp', modelVersion: '1.0', connectedDeviceCount: 1, activeDeviceCount: 1 },
        ],
      });
      expect(lines.filter((l) => l.event === 'fleet-registered')).toHaveLength(1);

      // The server goes away; inferences go on; the client retries with backoff and keeps nothing queued.
      await plane.stop();
      await until(
        () => (client!.status().consecutiveFailures >= 3 ? true : undefined),
        'three failed attempts',
      );
      expect(client.status()).toMatchObject({
        state: 'unreachable',
        reason: expect.stringMatching(/ECONNREFUSED/),
      });
      for (let i = 0; i < 4; i++) await registry.predict('mlp', predictTensors('mlp'));
      // One warning for the outage, not one per retry.
      expect(lines.filter((l) => l.event === 'fleet-heartbeat-failed' && l.level === 40)).toHaveLength(1);

      await plane.start();
      const sent = client.status().heartbeatsSent;
      await until(
        () => (client!.status().heartbeatsSent > sent ? true : undefined),
        'a heartbeat after the outage',
      );
      expect(client.status()).toMatchObject({ state: 'registered', consecutiveFailures: 0 });
      expect(lines.some((l) => l.event === 'fleet-resumed')).toBe(true);

      // Every inference is counted exactly once across the outage; the first heartbeat after it says how many
      // attempts failed.
      const series = await until(async () => {
        const body = await operator(
          plane,
          'GET',
          `/api/v1/devices/cam-1/metrics?step=3600&since=${new Date(Date.now() - 3_600_000).toISOString()}`,
        );
        const count = body.series.find((s: { metricName: string }) => s.metricName === 'InferenceCount');
        const total = count?.points.reduce(
          (sum: number, p: { avg: number; count: number }) => sum + p.avg * p.count,
          0,
        );
        return total === 7 ? body.series : undefined;
      }, 'InferenceCount to add up to 7');
      const missed = series.find((s: { metricName: string }) => s.metricName === 'HeartbeatsMissed');
      expect(Math.max(...missed.points.map((p: { max: number }) => p.max))).toBeGreaterThanOrEqual(3);
      expect(series.map((s: { metricName: string }) => s.metricName)).toEqual(
        expect.arrayContaining([
          'CpuUtilization',
          'MemoryRssBytes',
          'UptimeSeconds',
          'AgentStarts',
          'AgentCrashes',
          'LatencyP50Ms',
        ]),
      );
    } finally {
      await client?.stop();
      await registry.close();
    }
    expect(client.status().state).toBe('stopped');
  });

  it('leaves a DeployedModelsNotLoaded entry the contract refuses out of the heartbeat, not the heartbeat', async () => {
    const dir = join(work, 'cam-3');
    const config = await agentConfig(await enrollDevice(plane, 'yard', 'cam-3', dir), dir);
    const { logger, lines } = captureLogger();
    const fits = {
      ModelHandle: 'detector',
      DeploymentName: 'plan-1',
      UnloadedByApplication: true,
      Reason: 'unloaded by an application',
    };
    const client = await startFleetClient({
      config,
      registry: { list: () => [] },
      logger,
      agentVersion: '0.1.0',
      timing: FAST_TIMING,
      deployments: {
        deploymentResult: () => undefined,
        reported: () => {},
        deployedModelsNotLoaded: () => [fits, { ...fits, ModelHandle: 'bad handle!' }],
      },
    });
    try {
      await until(() => (client.status().heartbeatsSent >= 1 ? true : undefined), 'a heartbeat');
      expect(client.status().consecutiveFailures).toBe(0);
      expect(lines.find((l) => l.event === 'fleet-not-loaded-skipped')).toMatchObject({
        level: 20,
        handles: ['bad handle!'],
      });
    } finally {
      await client.stop();
    }
  });

  it('stops promptly while waiting out a long backoff', async () => {
    const dir = join(work, 'cam-2');
    const config = await agentConfig(await enrollDevice(plane, 'yard', 'cam-2', dir), dir);
    await plane.stop();
    try {
      const { logger } = captureLogger();
      const client = await startFleetClient({
        config,
        registry: { list: () => [] },
        logger,
        agentVersion: '0.1.0',
        timing: { ...FAST_TIMING, initialBackoffMs: 600_000, maxBackoffMs: 600_000 },
      });
      await until(() => (client.status().consecutiveFailures >= 1 ? true : undefined), 'the first failure');
      await client.stop(); // would take ten minutes if the wait were not cancelled (the test times out first)
      expect(client.status().state).toBe('stopped');
    } finally {
      await plane.start();
    }
  });

  it('is refused with a revoked certificate, and picks up a new one after re-enrollment', async () => {
    const dir = join(work, 'cam-3');
    const file = await enrollDevice(plane, 'yard', 'cam-3', dir);
    const config = await agentConfig(file, dir);
    const { logger, lines } = captureLogger();
    const client = await startFleetClient({
      config,
      registry: { list: () => [] },
      logger,
      agentVersion: '0.1.0',
      timing: FAST_TIMING,
    });
    try {
      await until(() => (client.status().heartbeatsSent >= 1 ? true : undefined), 'a heartbeat');
      await operator(plane, 'POST', '/api/v1/devices/cam-3/certificates/revoke', { reason: 'test' });
      await until(() => (client.status().state === 'unregistered' ? true : undefined), 'the refusal');
      expect(client.status().reason).toMatch(/HTTP 401 CertificateRevoked/);
      expect(
        lines.some((l) => l.event === 'fleet-registration-failed' || l.event === 'fleet-heartbeat-failed'),
      ).toBe(true);

      await reenroll(plane, 'cam-3', dir); // same file paths, new key and certificate
      const sent = client.status().heartbeatsSent;
      await until(
        () => (client.status().heartbeatsSent > sent ? true : undefined),
        'a heartbeat with the new certificate',
      );
      expect(client.status().state).toBe('registered');
    } finally {
      await client.stop();
    }
  });
});
