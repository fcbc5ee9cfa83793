/**
 * A device cannot fill the database with metrics or plant a query that stalls the server (security audit s8,
 * finding 2): metrics per heartbeat are capped, SendHeartbeat has its own body limit, each device may store so
 * many metric bytes an hour, and a metrics query counts before it reads, then reads in pages. Through the real
 * device API (mutual TLS), operator API and database. Over the quota a heartbeat still succeeds, its metrics
 * dropped (review s8 #4).
 */
import { Writable } from 'node:stream';
import { MAX_METRICS_PER_HEARTBEAT } from '@edgefleet/core';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deviceCall } from '../support/device.js';
import { databaseEngines } from '../support/engines.js';
import { enrollDevice, startTestServer, type EnrolledDevice, type TestServer } from '../support/server.js';

const engines = await databaseEngines();
const QUOTA = 150_000;
const MAX_METRICS_PER_QUERY = 1500;

interface Metric {
  MetricName: string;
  Value: number;
  Timestamp: number;
  Dimension?: string;
}

/** `count` metrics at `atSeconds`. */
const metrics = (count: number, atSeconds: number, name = 'CpuUtilization'): Metric[] =>
  Array.from({ length: count }, (_, i) => ({ MetricName: name, Value: i % 100, Timestamp: atSeconds }));

/** `count` metrics at `atSeconds` as a heartbeat carries them: 500 (a list's most) of the agent's, then models'. */
const payload = (count: number, atSeconds: number) => {
  const all = metrics(count, atSeconds);
  const models = [];
  for (let i = 500; i < count; i += 500)
    models.push({ ModelName: `m${i}`, ModelVersion: '1', ModelMetrics: all.slice(i, i + 500) });
  return { AgentMetrics: all.slice(0, 500), Models: models };
};

/** The bytes the server stores for a payload's metrics (heartbeat-service.ts's StoredMetric rows). */
const storedBytes = ({ AgentMetrics, Models }: ReturnType<typeof payload>) =>
  JSON.stringify([
    ...AgentMetrics.map((m) => [m.MetricName, null, null, null, m.Value, m.Timestamp * 1000]),
    ...Models.flatMap((model) =>
      model.ModelMetrics.map((m) => [
        m.MetricName,
        null,
        model.ModelName,
        model.ModelVersion,
        m.Value,
        m.Timestamp * 1000,
      ]),
    ),
  ]).length;

describe.each(engines)('heartbeat metric limits on $engine', (fixture) => {
  let t: TestServer;
  const warnings: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      warnings.push(...chunk.toString('utf8').split('\n').filter(Boolean));
      done();
    },
  });
  const devices: Record<string, EnrolledDevice> = {};
  beforeAll(async () => {
    if (!fixture.available) return;
    t = await startTestServer({
      database: await fixture.createLocation(),
      logger: pino({ level: 'warn' }, sink),
      config: {
        heartbeat: { metricBytesPerDevicePerHour: QUOTA, maxMetricsPerQuery: MAX_METRICS_PER_QUERY },
      },
    });
    await t.call('POST', '/api/v1/fleets', {
      token: t.adminToken,
      body: { name: 'cams', outputConfig: { s3OutputLocation: 's3://captures/cams' } },
    });
    const names = ['cam-1', 'cam-2', 'cam-3', 'cam-4'];
    await t.call('POST', '/api/v1/fleets/cams/devices', {
      token: t.adminToken,
      body: { devices: names.map((name) => ({ name })) },
    });
    for (const name of names) devices[name] = await enrollDevice(t, name);
  });
  afterAll(() => t?.stop());

  const heartbeat = (device: string, fields: Record<string, unknown>) =>
    deviceCall(t.server.deviceUrl, devices[device]!.tls, 'POST', '/api/v1/device/heartbeat', {
      body: { DeviceName: device, DeviceFleetName: 'cams', AgentVersion: '1.0', ...fields },
    });
  const query = (device: string, since: number, until: number, step: number) =>
    t.call(
      'GET',
      `/api/v1/devices/${device}/metrics?since=${new Date(since).toISOString()}&until=${new Date(until).toISOString()}&step=${step}`,
      { token: t.readToken },
    );
  const now = () => Math.floor(Date.now() / 1000);

  it.skipIf(!fixture.available)(
    'refuses a heartbeat with more metrics than the contract allows, across agent and model metrics',
    async () => {
      const at = now();
      const over = await heartbeat('cam-1', {
        ...payload(MAX_METRICS_PER_HEARTBEAT + 1, at),
      });
      expect(over.status).toBe(400);
      expect(over.body.code).toBe('ValidationError');
      expect(over.body.message).toContain(
        `carries ${MAX_METRICS_PER_HEARTBEAT + 1} metrics (AgentMetrics and all Models' ModelMetrics together); expected at most ${MAX_METRICS_PER_HEARTBEAT}`,
      );
      // Nothing of it was stored; the cap itself is allowed.
      expect((await t.call('GET', '/api/v1/devices/cam-1', { token: t.readToken })).body.agentVersion).toBe(
        undefined,
      );
    },
  );

  it.skipIf(!fixture.available)('refuses a heartbeat body over heartbeat.maxBodyBytes (413)', async () => {
    // 300 metrics with long dimensions: about 300 KB, over the default 256 KiB though under the metric cap.
    const at = now();
    const big = metrics(300, at).map((m) => ({ ...m, Dimension: 'd'.repeat(900) }));
    const answer = await heartbeat('cam-1', { AgentMetrics: big });
    expect(answer.status).toBe(413);
    expect(answer.body.code).toBe('PayloadTooLarge');
  });

  it.skipIf(!fixture.available)(
    "stores at most the device's hourly metric bytes; past them the heartbeat succeeds, its metrics dropped",
    async () => {
      const at = now();
      const each = payload(1000, at);
      const bytes = storedBytes(each);
      const fit = Math.floor(QUOTA / bytes);
      expect(fit).toBeGreaterThanOrEqual(1);
      // Over the device port's 64 KiB default body limit: SendHeartbeat keeps its own.
      expect(JSON.stringify(each).length).toBeGreaterThan(64 * 1024);
      // Sent together, as a flooding device would: the group commit charges them one by one.
      const answers = await Promise.all(Array.from({ length: fit + 4 }, () => heartbeat('cam-2', each)));
      // Review s8 #4: every one succeeds (a refusal made the agent back off until it looked offline and skip
      // its certificate renewal); those past the quota say their metrics were dropped.
      expect(answers.map((a) => a.status)).toEqual(answers.map(() => 200));
      expect(answers.filter((a) => a.body.MetricsDropped === undefined)).toHaveLength(fit);
      const dropped = answers.filter((a) => a.body.MetricsDropped !== undefined);
      expect(dropped).toHaveLength(4);
      expect(dropped[0]!.body.MetricsDropped).toMatchObject({ QuotaBytes: QUOTA });
      expect(dropped[0]!.body.MetricsDropped.Message).toMatch(/heartbeat\.metricBytesPerDevicePerHour/);
      const retryAfter = dropped[0]!.body.MetricsDropped.RetryAfterSeconds as number;
      expect(retryAfter).toBeGreaterThan(0);
      expect(retryAfter).toBeLessThanOrEqual(3600);

      // The device's state is still recorded, so it stays online.
      const late = await heartbeat('cam-2', { ...each, AgentVersion: '1.1' });
      expect(late.status).toBe(200);
      expect(late.body.MetricsDropped).toBeDefined();
      const described = await t.call('GET', '/api/v1/devices/cam-2', { token: t.readToken });
      expect(described.body).toMatchObject({ agentVersion: '1.1', status: 'online' });
      // Heartbeats without metrics answer as usual.
      expect(await heartbeat('cam-2', { AgentVersion: '1.2' })).toMatchObject({ status: 200, body: {} });

      // Only what fitted was stored (the query's count, here over its own bound of 1 500).
      expect(fit * 1000).toBeGreaterThan(MAX_METRICS_PER_QUERY);
      const series = await query('cam-2', (at - 60) * 1000, (at + 60) * 1000, 3600);
      expect(series.body.details).toMatchObject({ storedMetrics: fit * 1000 });
      // The server warned once for the device this hour, not once per heartbeat.
      expect(
        warnings.filter((line) => line.includes('cam-2 is over heartbeat.metricBytesPerDevicePerHour')),
      ).toHaveLength(1);
    },
  );

  it.skipIf(!fixture.available)(
    'refuses a metrics window holding more than heartbeat.maxMetricsPerQuery metrics; a narrower one is read',
    async () => {
      const at = now();
      expect((await heartbeat('cam-3', payload(1000, at - 600))).status).toBe(200);
      expect((await heartbeat('cam-3', payload(1000, at - 60))).status).toBe(200);
      const wide = await query('cam-3', (at - 3600) * 1000, (at + 60) * 1000, 60);
      expect(wide.status).toBe(400);
      expect(wide.body).toMatchObject({
        code: 'ValidationError',
        details: { storedMetrics: 2000, maxMetrics: MAX_METRICS_PER_QUERY },
      });
      expect(wide.body.message).toMatch(/heartbeat\.maxMetricsPerQuery.*narrow the window/);
      const narrow = await query('cam-3', (at - 120) * 1000, (at + 60) * 1000, 3600);
      expect(narrow.status).toBe(200);
      const counts = (narrow.body.series as { points: { count: number }[] }[]).flatMap((one) =>
        one.points.map((p) => p.count),
      );
      expect(counts.reduce((sum, n) => sum + n, 0)).toBe(1000);
    },
  );

  it.skipIf(!fixture.available)(
    'reads every heartbeat of a window exactly once, however many share a timestamp',
    async () => {
      const at = now();
      // 250 heartbeats of one metric each: 150 at one timestamp (more than a page), 100 at their own.
      const timestamps = [
        ...Array.from({ length: 150 }, () => at - 30),
        ...Array.from({ length: 100 }, (_, i) => at - 400 + i),
      ];
      for (let i = 0; i < timestamps.length; i += 25)
        await Promise.all(
          timestamps.slice(i, i + 25).map(async (ts) => {
            const answer = await heartbeat('cam-4', { AgentMetrics: metrics(1, ts, 'InferenceCount') });
            expect(answer.status).toBe(200);
          }),
        );
      const answer = await query('cam-4', (at - 3600) * 1000, (at + 60) * 1000, 3600);
      expect(answer.status).toBe(200);
      const points = answer.body.series[0].points as { count: number }[];
      expect(points.reduce((sum, p) => sum + p.count, 0)).toBe(250);
    },
  );
});
