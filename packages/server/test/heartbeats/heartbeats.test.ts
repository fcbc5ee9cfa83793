import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deviceCall } from '../support/device.js';
import { databaseEngines } from '../support/engines.js';
import { enrollDevice, startTestServer, type EnrolledDevice, type TestServer } from '../support/server.js';

const engines = await databaseEngines();
const seconds = (ms: number) => ms / 1000;

describe.each(engines)('heartbeats on $engine', (fixture) => {
  let t: TestServer;
  let cam1: EnrolledDevice;
  let cam2: EnrolledDevice;
  let other: EnrolledDevice;
  beforeAll(async () => {
    if (!fixture.available) return;
    t = await startTestServer({ database: await fixture.createLocation() });
    for (const [fleet, devices] of [
      ['cams', ['cam-1', 'cam-2', 'cam-3']],
      ['doors', ['door-1']],
    ] as const) {
      await t.call('POST', '/api/v1/fleets', {
        token: t.adminToken,
        body: { name: fleet, outputConfig: { s3OutputLocation: `s3://captures/${fleet}` } },
      });
      await t.call('POST', `/api/v1/fleets/${fleet}/devices`, {
        token: t.adminToken,
        body: { devices: devices.map((name) => ({ name })) },
      });
    }
    cam1 = await enrollDevice(t, 'cam-1');
    cam2 = await enrollDevice(t, 'cam-2');
    other = await enrollDevice(t, 'door-1');
    // A plan of fleet cams for cam-1's results to name (a result naming none of its fleet's plans is left out).
    const plan = await t.call('POST', '/api/v1/deployment-plans', {
      token: t.adminToken,
      body: {
        name: 'rollout-1',
        fleetName: 'cams',
        modelConfigs: [{ modelHandle: 'main', state: 'UNDEPLOY' }],
        stages: [{ name: 's1', deviceSelection: { subsetType: 'SELECTION', deviceNames: ['cam-1'] } }],
      },
    });
    expect(plan.status).toBe(201);
  });
  afterAll(() => t?.stop());

  const heartbeat = (
    device: EnrolledDevice,
    body: Record<string, unknown>,
    path = '/api/v1/device/heartbeat',
  ) => deviceCall(t.server.deviceUrl, device.tls, 'POST', path, { body });

  it.skipIf(!fixture.available)('records the latest state, visible in the device description', async () => {
    const now = Date.now();
    const response = await heartbeat(cam1, {
      DeviceName: 'cam-1',
      DeviceFleetName: 'cams',
      AgentVersion: '1.4.0',
      AgentMetrics: [
        { MetricName: 'CpuUtilization', Value: 12.5, Timestamp: seconds(now) },
        { MetricName: 'MemoryUtilization', Dimension: 'agent', Value: 40, Timestamp: seconds(now) },
      ],
      Models: [
        {
          ModelName: 'resnet',
          ModelVersion: '2.0',
          LatestInference: seconds(now - 1000),
          LatestSampleTime: seconds(now - 5000),
          ModelMetrics: [{ MetricName: 'InferenceCount', Value: 7, Timestamp: seconds(now) }],
        },
        { ModelName: 'yolo', ModelVersion: '5' },
      ],
      DeploymentResult: {
        DeploymentName: 'rollout-1',
        DeploymentStatus: 'SUCCESS',
        DeploymentModels: [
          { ModelHandle: 'main', ModelName: 'resnet', ModelVersion: '2.0', Status: 'SUCCESS' },
        ],
      },
    });
    expect(response).toEqual({ status: 200, body: {} });

    const described = await t.call('GET', '/api/v1/devices/cam-1', { token: t.readToken });
    expect(described.body).toMatchObject({
      agentVersion: '1.4.0',
      status: 'online',
      models: [
        {
          name: 'resnet',
          version: '2.0',
          latestInference: new Date(now - 1000).toISOString(),
          latestSampleTime: new Date(now - 5000).toISOString(),
        },
        { name: 'yolo', version: '5' },
      ],
      deploymentResult: { DeploymentName: 'rollout-1', DeploymentStatus: 'SUCCESS' },
    });
    expect(Date.parse(described.body.latestHeartbeat)).toBeGreaterThanOrEqual(now - 1000);
  });

  it.skipIf(!fixture.available)('replaces the model list, or keeps it when Models is omitted', async () => {
    const base = { DeviceName: 'cam-2', DeviceFleetName: 'cams', AgentVersion: '1.3.9' };
    await heartbeat(cam2, {
      ...base,
      Models: [
        { ModelName: 'a', ModelVersion: '1' },
        { ModelName: 'b', ModelVersion: '1' },
      ],
    });
    await heartbeat(cam2, { ...base, Models: [{ ModelName: 'b', ModelVersion: '2' }] });
    const models = async () =>
      (await t.call('GET', '/api/v1/devices/cam-2', { token: t.readToken })).body.models;
    expect(await models()).toEqual([{ name: 'b', version: '2' }]);
    await heartbeat(cam2, base);
    expect(await models()).toEqual([{ name: 'b', version: '2' }]);
  });

  it.skipIf(!fixture.available)(
    'keeps the deployed models not loaded: each heartbeat replaces the list, one without it keeps none',
    async () => {
      // A fleet of its own, so the fleet report below counts what it did before.
      await t.call('POST', '/api/v1/fleets', {
        token: t.adminToken,
        body: { name: 'yards', outputConfig: { s3OutputLocation: 's3://captures/yards' } },
      });
      await t.call('POST', '/api/v1/fleets/yards/devices', {
        token: t.adminToken,
        body: { devices: [{ name: 'cam-7' }] },
      });
      const cam7 = await enrollDevice(t, 'cam-7');
      const base = { DeviceName: 'cam-7', DeviceFleetName: 'yards', AgentVersion: '2.0.0' };
      const unloadedAt = Date.now() - 60_000;
      const detector = {
        ModelHandle: 'detector',
        DeploymentName: 'rollout-9',
        ModelName: 'detector',
        ModelVersion: '1.0',
        UnloadedByApplication: true,
        Since: seconds(unloadedAt),
        Reason: 'unloaded by an application (UnLoadModel or the REST unload)',
      };
      const loading = {
        ModelHandle: 'counter',
        DeploymentName: 'rollout-8',
        UnloadedByApplication: false,
        Reason: 'not loaded since the agent started: still loading, or its load failed',
      };
      const describe = async () =>
        (await t.call('GET', '/api/v1/devices/cam-7', { token: t.readToken })).body;
      const listed = async () =>
        (await t.call('GET', '/api/v1/devices?nameContains=cam-7', { token: t.readToken })).body.devices[0];

      expect(
        await heartbeat(cam7, { ...base, Models: [], DeployedModelsNotLoaded: [detector, loading] }),
      ).toEqual({ status: 200, body: {} });
      const first = await describe();
      expect(first.deployedModelsNotLoaded).toEqual([
        {
          modelHandle: 'detector',
          deploymentName: 'rollout-9',
          modelName: 'detector',
          modelVersion: '1.0',
          unloadedByApplication: true,
          since: new Date(unloadedAt).toISOString(),
          reason: 'unloaded by an application (UnLoadModel or the REST unload)',
        },
        {
          modelHandle: 'counter',
          deploymentName: 'rollout-8',
          unloadedByApplication: false,
          reason: 'not loaded since the agent started: still loading, or its load failed',
        },
      ]);
      expect(first.deployedModelsNotLoadedCount).toBe(2);
      expect((await listed()).deployedModelsNotLoadedCount).toBe(2);
      // A changed list moves updatedAt (the console's change feed watches it) to that heartbeat; the same list
      // again leaves it.
      expect(first.updatedAt).toBe(first.latestHeartbeat);
      await heartbeat(cam7, { ...base, DeployedModelsNotLoaded: [detector, loading] });
      expect((await describe()).updatedAt).toBe(first.updatedAt);

      // Loaded again: the next heartbeat's empty list says every deployed handle serves.
      await heartbeat(cam7, { ...base, DeployedModelsNotLoaded: [] });
      const loaded = await describe();
      expect(loaded.deployedModelsNotLoaded).toEqual([]);
      expect(loaded.deployedModelsNotLoadedCount).toBe(0);
      expect(loaded.updatedAt).toBe(loaded.latestHeartbeat);

      // An agent that does not report it (an older one, deployments off): nothing is kept, nothing stale shown.
      await heartbeat(cam7, { ...base, DeployedModelsNotLoaded: [detector] });
      expect((await describe()).deployedModelsNotLoadedCount).toBe(1);
      await heartbeat(cam7, { ...base, AgentVersion: '1.0.0' });
      const older = await describe();
      expect(older.agentVersion).toBe('1.0.0');
      expect(older).not.toHaveProperty('deployedModelsNotLoaded');
      expect(older).not.toHaveProperty('deployedModelsNotLoadedCount');
      expect(await listed()).not.toHaveProperty('deployedModelsNotLoadedCount');

      // A time from a clock that ran ahead is left out, not refused: the agent sends it unchanged until the model
      // is loaded again, so a refusal would refuse every later heartbeat.
      const ahead = await heartbeat(cam7, {
        ...base,
        DeployedModelsNotLoaded: [{ ...detector, Since: seconds(Date.now()) + 30 * 86_400 }],
      });
      expect(ahead).toEqual({ status: 200, body: {} });
      const { since, ...withoutSince } = first.deployedModelsNotLoaded[0];
      expect(since).toBeDefined();
      expect((await describe()).deployedModelsNotLoaded).toEqual([withoutSince]);
      // A bad entry is refused whole, naming what was wrong.
      const nameless = await heartbeat(cam7, {
        ...base,
        DeployedModelsNotLoaded: [{ ...detector, ModelHandle: undefined }],
      });
      expect(nameless).toMatchObject({ status: 400, body: { code: 'ValidationError' } });
      expect(nameless.body.message).toContain('DeployedModelsNotLoaded.0.ModelHandle');
      expect((await describe()).deployedModelsNotLoaded).toEqual([withoutSince]);
    },
  );

  it.skipIf(!fixture.available)('answers the SageMaker operation names too', async () => {
    const response = await heartbeat(
      other,
      {
        DeviceName: 'door-1',
        DeviceFleetName: 'doors',
        AgentVersion: '1.4.0',
        Models: [{ ModelName: 'resnet', ModelVersion: '2.0' }],
      },
      '/SendHeartbeat',
    );
    expect(response.status).toBe(200);
    const registration = await deviceCall(t.server.deviceUrl, other.tls, 'POST', '/GetDeviceRegistration', {
      body: { DeviceName: 'door-1', DeviceFleetName: 'doors' },
    });
    expect(registration).toEqual({
      status: 200,
      body: { DeviceRegistration: 'REGISTERED', CacheTTL: '300' },
    });
  });

  it.skipIf(!fixture.available)('lets a device act only as itself', async () => {
    const asOther = await heartbeat(cam1, {
      DeviceName: 'cam-2',
      DeviceFleetName: 'cams',
      AgentVersion: '1',
    });
    expect(asOther).toMatchObject({
      status: 403,
      body: { code: 'Forbidden', details: { certificateDevice: 'cam-1' } },
    });
    const otherFleet = await heartbeat(cam1, {
      DeviceName: 'cam-1',
      DeviceFleetName: 'doors',
      AgentVersion: '1',
    });
    expect(otherFleet).toMatchObject({ status: 403 });
    const registration = await deviceCall(
      t.server.deviceUrl,
      cam1.tls,
      'POST',
      '/api/v1/device/registration',
      {
        body: { DeviceName: 'door-1', DeviceFleetName: 'doors' },
      },
    );
    expect(registration).toMatchObject({ status: 403 });
    // Nothing about cam-2 changed.
    expect((await t.call('GET', '/api/v1/devices/cam-2', { token: t.readToken })).body.agentVersion).toBe(
      '1.3.9',
    );
  });

  it.skipIf(!fixture.available)('validates the heartbeat shape', async () => {
    const base = { DeviceName: 'cam-1', DeviceFleetName: 'cams', AgentVersion: '1.4.0' };
    for (const body of [
      { DeviceName: 'cam-1', DeviceFleetName: 'cams' },
      { ...base, AgentVersion: 'v1/2' },
      { ...base, AgentMetrics: [{ MetricName: 'bad name', Value: 1 }] },
      { ...base, AgentMetrics: [{ MetricName: 'x', Value: 'high' }] },
      { ...base, Models: [{ ModelName: 'm' }] },
      { ...base, DeploymentResult: { DeploymentModels: [{ Status: 'MAYBE' }] } },
      { ...base, AgentMetrics: Array.from({ length: 501 }, () => ({ MetricName: 'x', Value: 1 })) },
    ]) {
      const response = await heartbeat(cam1, body);
      expect(response.status, JSON.stringify(body).slice(0, 80)).toBe(400);
      expect(response.body.code).toBe('ValidationError');
    }
  });

  it.skipIf(!fixture.available)(
    'refuses timestamps far from the server clock, storing nothing (issue 15, item 13)',
    async () => {
      const base = { DeviceName: 'cam-2', DeviceFleetName: 'cams', AgentVersion: '9.9.9' };
      const farFuture = await heartbeat(cam2, {
        ...base,
        AgentMetrics: [{ MetricName: 'CpuUtilization', Value: 1, Timestamp: 99999999999 }],
      });
      expect(farFuture.status).toBe(400);
      expect(farFuture.body).toMatchObject({
        code: 'ValidationError',
        details: { field: 'AgentMetrics.0.Timestamp' },
      });
      expect(farFuture.body.message).toContain('check the device clock');
      const activeForever = await heartbeat(cam2, {
        ...base,
        Models: [{ ModelName: 'm', ModelVersion: '1', LatestInference: seconds(Date.now()) + 30 * 86_400 }],
      });
      expect(activeForever).toMatchObject({
        status: 400,
        body: { details: { field: 'Models.0.LatestInference' } },
      });
      const ancient = await heartbeat(cam2, {
        ...base,
        Models: [
          { ModelName: 'm', ModelVersion: '1', ModelMetrics: [{ MetricName: 'X', Value: 1, Timestamp: 1 }] },
        ],
      });
      expect(ancient).toMatchObject({
        status: 400,
        body: { details: { field: 'Models.0.ModelMetrics.0.Timestamp' } },
      });
      // Nothing of those heartbeats was kept; a model idle for weeks still reports its old LatestInference.
      const described = await t.call('GET', '/api/v1/devices/cam-2', { token: t.readToken });
      expect(described.body.agentVersion).not.toBe('9.9.9');
      const idle = await heartbeat(cam2, {
        ...base,
        AgentVersion: '1.3.9',
        Models: [{ ModelName: 'b', ModelVersion: '2', LatestInference: seconds(Date.now()) - 30 * 86_400 }],
      });
      expect(idle.status).toBe(200);
    },
  );

  it.skipIf(!fixture.available)('refuses heartbeats without a valid certificate', async () => {
    const body = { DeviceName: 'cam-1', DeviceFleetName: 'cams', AgentVersion: '1' };
    for (const path of [
      '/api/v1/device/heartbeat',
      '/SendHeartbeat',
      '/api/v1/device/registration',
      '/GetDeviceRegistration',
    ]) {
      expect(
        await deviceCall(t.server.deviceUrl, { ca: cam1.tls.ca }, 'POST', path, { body }),
        path,
      ).toMatchObject({
        status: 401,
        body: { code: 'CertificateRequired' },
      });
    }
    const spare = await enrollDevice(t, 'cam-3');
    await t.call('POST', '/api/v1/devices/cam-3/certificates/revoke', { token: t.adminToken, body: {} });
    expect(await heartbeat(spare, { ...body, DeviceName: 'cam-3' })).toMatchObject({
      status: 401,
      body: { code: 'CertificateRevoked' },
    });
  });

  it.skipIf(!fixture.available)(
    'keeps a time series of agent and model metrics, bucketed on request',
    async () => {
      const t0 = Math.floor(Date.now() / 120_000) * 120_000 - 10 * 60_000;
      const body = (values: number[], at: number) => ({
        DeviceName: 'door-1',
        DeviceFleetName: 'doors',
        AgentVersion: '1.4.0',
        AgentMetrics: values.map((Value, i) => ({
          MetricName: 'CpuUtilization',
          Value,
          Timestamp: seconds(at + i * 1000),
        })),
        Models: [
          {
            ModelName: 'resnet',
            ModelVersion: '2.0',
            ModelMetrics: [
              {
                MetricName: 'InferenceLatencyMs',
                Dimension: 'p50',
                Value: values[0],
                Timestamp: seconds(at),
              },
            ],
          },
        ],
      });
      expect((await heartbeat(other, body([10, 20, 30], t0))).status).toBe(200);
      expect((await heartbeat(other, body([50], t0 + 60_000))).status).toBe(200);

      const since = new Date(t0).toISOString();
      const until = new Date(t0 + 120_000).toISOString();
      const query = await t.call(
        'GET',
        `/api/v1/devices/door-1/metrics?since=${since}&until=${until}&step=60`,
        {
          token: t.readToken,
        },
      );
      expect(query.status).toBe(200);
      expect(query.body.series).toEqual([
        {
          metricName: 'CpuUtilization',
          points: [
            { timestamp: new Date(t0).toISOString(), min: 10, max: 30, avg: 20, count: 3 },
            { timestamp: new Date(t0 + 60_000).toISOString(), min: 50, max: 50, avg: 50, count: 1 },
          ],
        },
        {
          metricName: 'InferenceLatencyMs',
          dimension: 'p50',
          modelName: 'resnet',
          modelVersion: '2.0',
          points: [
            { timestamp: new Date(t0).toISOString(), min: 10, max: 10, avg: 10, count: 1 },
            { timestamp: new Date(t0 + 60_000).toISOString(), min: 50, max: 50, avg: 50, count: 1 },
          ],
        },
      ]);
      const filtered = await t.call(
        'GET',
        `/api/v1/devices/door-1/metrics?since=${since}&until=${until}&step=120&modelName=resnet`,
        { token: t.readToken },
      );
      expect(filtered.body.series).toHaveLength(1);
      expect(filtered.body.series[0].points).toEqual([
        { timestamp: new Date(t0).toISOString(), min: 10, max: 50, avg: 30, count: 2 },
      ]);

      expect(
        await t.call('GET', `/api/v1/devices/door-1/metrics?since=${until}&until=${since}`, {
          token: t.readToken,
        }),
      ).toMatchObject({ status: 400 });
      expect(
        await t.call('GET', `/api/v1/devices/door-1/metrics?since=2000-01-01T00:00:00Z&step=1`, {
          token: t.readToken,
        }),
      ).toMatchObject({ status: 400, body: { message: expect.stringMatching(/buckets/) } });
      expect(await t.call('GET', '/api/v1/devices/nobody/metrics', { token: t.readToken })).toMatchObject({
        status: 404,
      });
      expect(await t.call('GET', '/api/v1/devices/door-1/metrics')).toMatchObject({ status: 401 });
    },
  );

  it.skipIf(!fixture.available)('reports models, versions and agent versions across the fleet', async () => {
    // cam-3 never sent a heartbeat; make cam-2 long silent so it counts as offline.
    await t.server.database.db
      .updateTable('devices')
      .set({ last_heartbeat_at: Date.now() - 24 * 3_600_000 })
      .where('name', '=', 'cam-2')
      .execute();
    await heartbeat(cam1, {
      DeviceName: 'cam-1',
      DeviceFleetName: 'cams',
      AgentVersion: '1.4.0',
      Models: [
        { ModelName: 'resnet', ModelVersion: '2.0', LatestInference: seconds(Date.now()) },
        { ModelName: 'b', ModelVersion: '2', LatestSampleTime: seconds(Date.now()) },
      ],
    });
    const report = await t.call('GET', '/api/v1/fleets/cams/report', { token: t.readToken });
    expect(report.status).toBe(200);
    expect(report.body).toMatchObject({
      fleetName: 'cams',
      outputConfig: { s3OutputLocation: 's3://captures/cams' },
      deviceStats: { registeredDeviceCount: 3, connectedDeviceCount: 1, neverSeenDeviceCount: 1 },
      agentVersions: [
        { version: '1.3.9', agentCount: 1 },
        { version: '1.4.0', agentCount: 1 },
      ],
      modelStats: [
        {
          modelName: 'b',
          modelVersion: '2',
          offlineDeviceCount: 1,
          connectedDeviceCount: 1,
          activeDeviceCount: 0,
          samplingDeviceCount: 1,
        },
        {
          modelName: 'resnet',
          modelVersion: '2.0',
          offlineDeviceCount: 0,
          connectedDeviceCount: 1,
          activeDeviceCount: 1,
          samplingDeviceCount: 0,
        },
      ],
    });
    expect(await t.call('GET', '/api/v1/fleets/nope/report', { token: t.readToken })).toMatchObject({
      status: 404,
    });
    expect(
      (
        await t.call('GET', '/api/v1/devices?status=offline&fleet=cams', { token: t.readToken })
      ).body.devices.map((d: { name: string }) => d.name),
    ).toEqual(['cam-2', 'cam-3']);
  });
});
