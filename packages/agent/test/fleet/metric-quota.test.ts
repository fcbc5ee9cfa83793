import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFleetClient } from '../../src/fleet/index.js';
import {
  agentConfig,
  captureLogger,
  enrollDevice,
  FAST_TIMING,
  operator,
  removeControlPlane,
  startControlPlane,
  until,
  type ControlPlane,
} from './support.js';

/**
 * Review s8 #4: a device past the server's hourly metric quota must not look offline or stop renewing. The
 * server records its heartbeats and drops their metrics; the agent counts them as sent, with no backoff.
 */

let plane: ControlPlane;
let work: string;

beforeAll(async () => {
  // The smallest quota the server takes: a few of the agent's heartbeats fill it.
  plane = await startControlPlane({
    config: { heartbeat: { intervalSeconds: 30, metricBytesPerDevicePerHour: 1024 } },
  });
  work = await mkdtemp(join(tmpdir(), 'ef-metric-quota-'));
});
afterAll(() => removeControlPlane(plane, work));

describe('a device over its hourly metric quota', () => {
  it('goes on heartbeating at its interval, accepted, and stays online', async () => {
    const dir = join(work, 'cam-q');
    const config = await agentConfig(await enrollDevice(plane, 'quota', 'cam-q', dir), dir);
    const { logger, lines } = captureLogger();
    const client = await startFleetClient({
      config,
      registry: { list: () => [] },
      logger,
      agentVersion: '0.1.0',
      timing: FAST_TIMING,
    });
    try {
      await until(() => (client.status().heartbeatsSent >= 10 ? true : undefined), 'ten heartbeats');
      expect(client.status()).toMatchObject({ state: 'registered', consecutiveFailures: 0 });
      // Before the fix each heartbeat past the quota was answered 429 and counted as a failure.
      expect(lines.filter((l) => l.event === 'fleet-heartbeat-failed')).toEqual([]);
      expect(await operator(plane, 'GET', '/api/v1/devices/cam-q')).toMatchObject({ status: 'online' });
      // The quota held: one UptimeSeconds metric per heartbeat, fewer stored than sent.
      const sent = client.status().heartbeatsSent;
      const body = await operator(plane, 'GET', '/api/v1/devices/cam-q/metrics?step=3600');
      const uptime = body.series.find((s: { metricName: string }) => s.metricName === 'UptimeSeconds');
      const stored = (uptime?.points ?? []).reduce((sum: number, p: { count: number }) => sum + p.count, 0);
      expect(stored).toBeGreaterThan(0);
      expect(stored).toBeLessThan(sent);
    } finally {
      await client.stop();
    }
  });
});
