import { readFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { connect as connectTls } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ServerMetrics } from '../../src/metrics/index.js';
import { deviceCall } from '../support/device.js';
import { signSageMakerRequest, sagemakerCall, type AccessKey } from '../support/sagemaker-call.js';
import { databaseEngines } from '../support/engines.js';
import { enrollDevice, startTestServer, type EnrolledDevice, type TestServer } from '../support/server.js';

const engines = await databaseEngines();

/** One sample of the Prometheus text format: its name, labels and value. */
interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

const SAMPLE_LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

/** Parses the text format (0.0.4), failing on any line that is neither a comment nor a sample. */
function parseExposition(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const match = SAMPLE_LINE.exec(line);
    if (match === null) throw new Error(`not a sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const [, name, value] of (match[2] ?? '').matchAll(LABEL)) labels[name!] = value!;
    // Prometheus reads NaN in any case (prom-client writes `Nan`), and ±Inf.
    const value = /^nan$/i.test(match[3]!) ? NaN : Number(match[3]);
    if (Number.isNaN(value) && !/^nan$/i.test(match[3]!)) throw new Error(`not a value: ${line}`);
    samples.push({ name: match[1]!, labels, value });
  }
  return samples;
}

/** The value of the one sample of `name` whose labels include `labels`; 0 when there is none (a counter not yet moved). */
function valueOf(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  const found = samples.filter(
    (s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v),
  );
  if (found.length > 1) throw new Error(`${found.length} samples of ${name} match ${JSON.stringify(labels)}`);
  return found[0]?.value ?? 0;
}

const HOUR = 'mlp/2026/12/06/05';

describe.each(engines)('GET /metrics on $engine', (fixture) => {
  let t: TestServer;
  let cam1: EnrolledDevice;
  beforeAll(async () => {
    if (!fixture.available) return;
    t = await startTestServer({ database: await fixture.createLocation() });
    await t.call('POST', '/api/v1/fleets', {
      token: t.adminToken,
      body: { name: 'plant', outputConfig: { s3OutputLocation: 's3://captures/edge' } },
    });
    await t.call('POST', '/api/v1/fleets/plant/devices', {
      token: t.adminToken,
      body: { devices: [{ name: 'cam-1' }, { name: 'cam-2' }, { name: 'cam-3' }] },
    });
    cam1 = await enrollDevice(t, 'cam-1');
  });
  afterAll(() => t?.stop());

  const scrape = async (): Promise<Sample[]> => {
    const answer = await fetch(`${t.url}/metrics`, { headers: { authorization: `Bearer ${t.readToken}` } });
    expect(answer.status).toBe(200);
    expect(answer.headers.get('content-type')).toBe('text/plain; version=0.0.4; charset=utf-8');
    return parseExposition(await answer.text());
  };
  const heartbeat = (body: Record<string, unknown>) =>
    deviceCall(t.server.deviceUrl, cam1.tls, 'POST', '/api/v1/device/heartbeat', { body });

  it.skipIf(!fixture.available)('needs an operator API token', async () => {
    const none = await t.call('GET', '/metrics');
    expect(none.status).toBe(401);
    expect(none.body.code).toBe('Unauthenticated');
    const unknown = await t.call('GET', '/metrics', { token: 'efo_not-a-token' });
    expect(unknown.status).toBe(401);
  });

  it.skipIf(!fixture.available)(
    "is not served to a device's certificate: the device port has no such route, token or not",
    async () => {
      const withCertificate = await deviceCall(t.server.deviceUrl, cam1.tls, 'GET', '/metrics');
      expect(withCertificate.status).toBe(404);
      const withToken = await deviceCall(t.server.deviceUrl, cam1.tls, 'GET', '/metrics', {
        headers: { authorization: `Bearer ${t.readToken}` },
      });
      expect(withToken.status).toBe(404);
    },
  );

  it.skipIf(!fixture.available)(
    "shows the fleet's state and process metrics to a read-only token",
    async () => {
      expect(
        (await heartbeat({ DeviceName: 'cam-1', DeviceFleetName: 'plant', AgentVersion: '1.0.0' })).status,
      ).toBe(200);
      const samples = await scrape();
      expect(valueOf(samples, 'edgefleet_server_database_usable')).toBe(1);
      expect(valueOf(samples, 'edgefleet_server_devices', { state: 'online' })).toBe(1);
      expect(valueOf(samples, 'edgefleet_server_devices', { state: 'never_seen' })).toBe(2);
      expect(samples).toContainEqual({
        name: 'edgefleet_server_devices',
        labels: { state: 'offline' },
        value: 0,
      });
      expect(valueOf(samples, 'edgefleet_server_packaging_jobs', { status: 'STARTING' })).toBe(0);
      expect(samples.filter((s) => s.name === 'edgefleet_server_deployment_stages')).toHaveLength(7);
      // No capture body is being read; the slots there are (captures.maxConcurrentUploads, default 8).
      expect(samples).toContainEqual({
        name: 'edgefleet_server_capture_upload_slots_in_use',
        labels: {},
        value: 0,
      });
      expect(valueOf(samples, 'edgefleet_server_capture_upload_slots')).toBe(8);
      // Every metric of its own that it shows is in the operator's table (docs/operations.md).
      const table = await readFile(new URL('../../../../docs/operations.md', import.meta.url), 'utf8');
      const names = new Set(
        samples
          .map((s) => s.name.replace(/_(bucket|sum|count)$/, ''))
          .filter((n) => n.startsWith('edgefleet_')),
      );
      expect([...names].filter((name) => !table.includes(`| \`${name}\` |`))).toEqual([]);
      // prom-client's process metrics, on this server's own registry.
      expect(samples.some((s) => s.name === 'process_cpu_user_seconds_total')).toBe(true);
      expect(samples.some((s) => s.name === 'nodejs_heap_size_used_bytes')).toBe(true);
    },
  );

  it.skipIf(!fixture.available)(
    'counts requests by route pattern, refusals, heartbeats and capture bytes, naming no device',
    async () => {
      const before = await scrape();
      expect(
        (await heartbeat({ DeviceName: 'cam-1', DeviceFleetName: 'plant', AgentVersion: '1.0.0' })).status,
      ).toBe(200);
      // Another device's name: forbidden; a body without the fields: invalid.
      expect(
        (await heartbeat({ DeviceName: 'cam-2', DeviceFleetName: 'plant', AgentVersion: '1.0.0' })).status,
      ).toBe(403);
      expect((await heartbeat({ DeviceName: 'cam-1' })).status).toBe(400);
      expect((await t.call('GET', '/api/v1/devices/cam-2', { token: t.readToken })).status).toBe(200);
      expect((await t.call('GET', '/no/such/cam-3', { token: t.readToken })).status).toBe(404);
      // Over the operator port's body limit (1 MiB): refused unread.
      const tooLarge = await t.call('POST', '/api/v1/fleets', {
        token: t.adminToken,
        body: { name: 'x', description: 'x'.repeat(1_100_000) },
      });
      expect(tooLarge.status).toBe(413);
      const file = Buffer.from(
        `${JSON.stringify({
          eventVersion: '0',
          eventMetadata: { deviceFleetName: 'plant', deviceId: 'cam-1', eventId: 'c-1', modelName: 'mlp' },
          deviceFleetInputs: [],
          deviceFleetOutputs: [],
        })}\n`,
      );
      const upload = await deviceCall(t.server.deviceUrl, cam1.tls, 'POST', '/api/v1/device/captures/files', {
        body: {
          key: `edge/plant/${HOUR}/aaaa.jsonl`,
          contentType: 'application/jsonl',
          data: file.toString('base64'),
        },
      });
      expect(upload.status).toBe(200);

      const after = await scrape();
      const moved = (name: string, labels: Record<string, string> = {}) =>
        valueOf(after, name, labels) - valueOf(before, name, labels);
      expect(moved('edgefleet_server_heartbeats_ingested_total')).toBe(1);
      expect(moved('edgefleet_server_heartbeats_refused_total', { reason: 'forbidden' })).toBe(1);
      expect(moved('edgefleet_server_heartbeats_refused_total', { reason: 'invalid' })).toBe(1);
      const heartbeats = { listener: 'device', method: 'POST', route: '/api/v1/device/heartbeat' };
      expect(moved('edgefleet_server_http_requests_total', { ...heartbeats, status_class: '2xx' })).toBe(1);
      expect(moved('edgefleet_server_http_requests_total', { ...heartbeats, status_class: '4xx' })).toBe(2);
      expect(moved('edgefleet_server_http_request_duration_seconds_count', heartbeats)).toBe(3);
      expect(
        moved('edgefleet_server_http_requests_total', {
          listener: 'operator',
          method: 'GET',
          route: '/api/v1/devices/:device',
          status_class: '2xx',
        }),
      ).toBe(1);
      expect(
        moved('edgefleet_server_http_requests_total', {
          listener: 'operator',
          route: 'unmatched',
          status_class: '4xx',
        }),
      ).toBe(1);
      expect(
        moved('edgefleet_server_requests_refused_total', { listener: 'operator', reason: 'body_too_large' }),
      ).toBe(1);
      expect(moved('edgefleet_server_capture_received_bytes_total')).toBe(file.length);
      expect(moved('edgefleet_server_capture_files_stored_total')).toBe(1);
      // Low cardinality: no label names a device or a path with ids in it.
      const labelValues = after.flatMap((s) => Object.values(s.labels));
      expect(labelValues.filter((v) => /cam-|\/no\/such/.test(v))).toEqual([]);
    },
  );

  it.skipIf(!fixture.available)('is in the OpenAPI document, needing a bearer token', async () => {
    const docs = await t.call('GET', '/api/docs');
    const operation = docs.body.paths['/metrics'].get;
    expect(operation.security).toEqual([{ bearerAuth: [] }]);
    expect(Object.keys(operation.responses['200'].content)).toEqual([
      'text/plain; version=0.0.4; charset=utf-8',
    ]);
  });
});

/** A plain TCP connection from `localAddress` that sends nothing; resolves once connected. */
function openIdle(url: string, localAddress: string): Promise<Socket> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = connect({ host: hostname, port: Number(port), localAddress });
    socket.once('connect', () => resolve(socket));
    socket.once('error', reject);
  });
}

describe('connections over a cap in /metrics', () => {
  let t: TestServer | undefined;
  const sockets: Socket[] = [];
  afterAll(async () => {
    for (const socket of sockets) socket.destroy();
    await t?.stop();
  });

  it('counts an idle connection closed for a newcomer as an eviction, per listener and cap', async () => {
    t = await startTestServer({
      start: { listenerLimits: { device: { maxConnectionsPerAddress: 2, maxConnections: 100 } } },
    });
    for (let i = 0; i < 3; i++) sockets.push(await openIdle(t.server.deviceUrl, '127.0.0.2'));
    // The third closes the oldest idle one of its address.
    await new Promise<void>((resolve) => {
      if (sockets[0]!.destroyed) resolve();
      else sockets[0]!.once('close', () => resolve());
      sockets[0]!.on('error', () => {});
    });
    const answer = await t.call('GET', '/metrics', { token: t.readToken });
    const samples = parseExposition(answer.body as string);
    expect(
      valueOf(samples, 'edgefleet_server_connections_evicted_total', {
        listener: 'device',
        cap: 'per_address',
      }),
    ).toBe(1);
    expect(valueOf(samples, 'edgefleet_server_requests_refused_total', { listener: 'device' })).toBe(0);
  });

  it('counts a connection closed on arrival as refused, by cap', async () => {
    const metrics = new ServerMetrics({ defaultMetrics: false });
    metrics.connectionOverCap('operator', { refusedBy: 'total', address: '127.0.0.1' });
    metrics.connectionOverCap('operator', { refusedBy: 'per-address', address: '127.0.0.1' });
    metrics.connectionOverCap('operator', { refusedBy: 'per-address', idleClosed: true });
    const samples = parseExposition(await metrics.registry.metrics());
    for (const reason of ['connection_cap_total', 'connection_cap_per_address'])
      expect(
        valueOf(samples, 'edgefleet_server_requests_refused_total', { listener: 'operator', reason }),
      ).toBe(1);
    expect(valueOf(samples, 'edgefleet_server_connections_evicted_total', { cap: 'per_address' })).toBe(1);
  });
});

/**
 * Sends a request's head and the first byte of a body of 1000, then nothing, on `socket`; resolves with all the
 * server wrote once it closes the connection.
 */
function trickle(socket: Socket, head: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let answer = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => (answer += chunk));
    socket.once('close', () => resolve(answer));
    socket.once('error', reject);
    socket.write(`${head}Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{`);
  });
}

describe("requests answered below the app's hooks in /metrics", () => {
  let t: TestServer;
  let cam1: EnrolledDevice;
  beforeAll(async () => {
    t = await startTestServer({
      start: { listenerLimits: { operator: { requestTimeoutMs: 400 }, device: { requestTimeoutMs: 400 } } },
    });
    await t.call('POST', '/api/v1/fleets', {
      token: t.adminToken,
      body: { name: 'plant', outputConfig: { s3OutputLocation: 's3://captures/edge' } },
    });
    await t.call('POST', '/api/v1/fleets/plant/devices', {
      token: t.adminToken,
      body: { devices: [{ name: 'cam-1' }] },
    });
    cam1 = await enrollDevice(t, 'cam-1');
  });
  afterAll(() => t?.stop());

  const scrape = async () => parseExposition((await t.call('GET', '/metrics', { token: t.readToken })).body);

  it("counts a body not in by its deadline (408) as request_timeout, by route, and a heartbeat's too", async () => {
    const before = await scrape();
    const { hostname, port } = new URL(t.url);
    const operatorAnswer = await trickle(
      connect({ host: hostname, port: Number(port) }),
      `POST /api/v1/fleets HTTP/1.1\r\nHost: ${hostname}\r\nAuthorization: Bearer ${t.adminToken}\r\n`,
    );
    expect(operatorAnswer).toMatch(/^HTTP\/1\.1 408 /);
    const device = new URL(t.server.deviceUrl);
    const deviceSocket = connectTls({
      host: device.hostname,
      port: Number(device.port),
      ...cam1.tls,
      servername: 'localhost',
      rejectUnauthorized: false,
    });
    await new Promise((resolve, reject) => {
      deviceSocket.once('secureConnect', resolve);
      deviceSocket.once('error', reject);
    });
    const deviceAnswer = await trickle(
      deviceSocket,
      `POST /api/v1/device/heartbeat HTTP/1.1\r\nHost: ${device.hostname}\r\n`,
    );
    expect(deviceAnswer).toMatch(/^HTTP\/1\.1 408 /);

    const after = await scrape();
    const moved = (name: string, labels: Record<string, string> = {}) =>
      valueOf(after, name, labels) - valueOf(before, name, labels);
    for (const listener of ['operator', 'device'])
      expect(moved('edgefleet_server_requests_refused_total', { listener, reason: 'request_timeout' })).toBe(
        1,
      );
    expect(
      moved('edgefleet_server_http_requests_total', {
        listener: 'operator',
        method: 'POST',
        route: '/api/v1/fleets',
        status_class: '4xx',
      }),
    ).toBe(1);
    expect(moved('edgefleet_server_heartbeats_refused_total', { reason: 'request_timeout' })).toBe(1);
    expect(
      moved('edgefleet_server_http_request_duration_seconds_count', {
        listener: 'device',
        route: '/api/v1/device/heartbeat',
      }),
    ).toBe(1);
  });

  it("counts the router's own refusals (414, a malformed %-escape's 400) as unmatched", async () => {
    const before = await scrape();
    expect((await t.call('GET', `/api/v1/devices/${'a'.repeat(150)}`, { token: t.readToken })).status).toBe(
      414,
    );
    expect((await t.call('GET', '/%ZZ', { token: t.readToken })).status).toBe(400);
    const after = await scrape();
    const unmatched = { listener: 'operator', method: 'GET', route: 'unmatched', status_class: '4xx' };
    expect(
      valueOf(after, 'edgefleet_server_http_requests_total', unmatched) -
        valueOf(before, 'edgefleet_server_http_requests_total', unmatched),
    ).toBe(2);
  });
});

describe("the SageMaker facade's requests in /metrics", () => {
  let t: TestServer;
  let deviceKey: AccessKey;
  let operatorKey: AccessKey;
  beforeAll(async () => {
    t = await startTestServer({ config: { heartbeat: { maxBodyBytes: 16 * 1024 } } });
    await t.call('POST', '/api/v1/fleets', {
      token: t.adminToken,
      body: { name: 'plant', outputConfig: { s3OutputLocation: 's3://captures/edge' } },
    });
    await t.call('POST', '/api/v1/fleets/plant/devices', {
      token: t.adminToken,
      body: { devices: [{ name: 'cam-1' }, { name: 'cam-2' }] },
    });
    const key = async (body: Record<string, unknown>) => {
      const created = await t.call('POST', '/api/v1/access-keys', { token: t.adminToken, body });
      expect(created.status).toBe(201);
      return created.body as AccessKey;
    };
    deviceKey = await key({ name: 'cam-1 agent', scope: 'read-only', deviceName: 'cam-1' });
    operatorKey = await key({ name: 'reader', scope: 'read-only' });
  });
  afterAll(() => t?.stop());

  const scrape = async () => parseExposition((await t.call('GET', '/metrics', { token: t.readToken })).body);
  const sendHeartbeat = async (key: AccessKey, body: string, signed = true) => {
    const call = signSageMakerRequest(t.url, key, {
      path: '/SendHeartbeat',
      headers: { 'content-type': 'application/json' },
      signed: ['content-type'],
      body,
    });
    if (!signed) delete call.headers.authorization;
    return (await fetch(call.url, { method: 'POST', headers: call.headers, body: call.body })).status;
  };

  it('classifies SendHeartbeat by the AWS error type, not its AWS-style status', async () => {
    const before = await scrape();
    const heartbeat = (name: string, extra = '') =>
      JSON.stringify({ AgentVersion: '1.0', DeviceName: name, DeviceFleetName: 'plant', Extra: extra });
    expect(
      await sendHeartbeat(
        deviceKey,
        JSON.stringify({ AgentVersion: '1.0', DeviceName: 'cam-1', DeviceFleetName: 'plant' }),
      ),
    ).toBe(200);
    // Unsigned: 403 MissingAuthenticationTokenException; another device's name: 400 AccessDeniedException;
    // over heartbeat.maxBodyBytes: 400 ValidationException.
    expect(await sendHeartbeat(deviceKey, heartbeat('cam-1'), false)).toBe(403);
    expect(
      await sendHeartbeat(
        deviceKey,
        JSON.stringify({ AgentVersion: '1.0', DeviceName: 'cam-2', DeviceFleetName: 'plant' }),
      ),
    ).toBe(400);
    expect(await sendHeartbeat(deviceKey, heartbeat('cam-1', 'x'.repeat(20_000)))).toBe(400);
    const after = await scrape();
    const moved = (name: string, labels: Record<string, string> = {}) =>
      valueOf(after, name, labels) - valueOf(before, name, labels);
    expect(moved('edgefleet_server_heartbeats_ingested_total')).toBe(1);
    expect(moved('edgefleet_server_heartbeats_refused_total', { reason: 'unauthenticated' })).toBe(1);
    expect(moved('edgefleet_server_heartbeats_refused_total', { reason: 'forbidden' })).toBe(1);
    expect(moved('edgefleet_server_heartbeats_refused_total', { reason: 'too_large' })).toBe(1);
    expect(moved('edgefleet_server_heartbeats_refused_total', { reason: 'invalid' })).toBe(0);
    expect(
      moved('edgefleet_server_requests_refused_total', { listener: 'operator', reason: 'body_too_large' }),
    ).toBe(1);
  });

  it("labels the control plane's POST / by operation, a known name or unknown, never the header's value", async () => {
    expect((await sagemakerCall(t.url, operatorKey, 'ListDevices', {})).status).toBe(200);
    expect((await sagemakerCall(t.url, operatorKey, 'ListDevices', {})).status).toBe(200);
    expect((await sagemakerCall(t.url, operatorKey, 'NoSuchOperation', {})).status).toBe(400);
    const samples = await scrape();
    const facade = { listener: 'operator', method: 'POST', route: '/' };
    expect(
      valueOf(samples, 'edgefleet_server_http_requests_total', {
        ...facade,
        operation: 'ListDevices',
        status_class: '2xx',
      }),
    ).toBe(2);
    expect(
      valueOf(samples, 'edgefleet_server_http_requests_total', {
        ...facade,
        operation: 'unknown',
        status_class: '4xx',
      }),
    ).toBe(1);
    expect(samples.flatMap((s) => Object.values(s.labels)).filter((v) => v.includes('NoSuch'))).toEqual([]);
    // Other routes carry no operation label.
    expect(
      samples.filter((s) => s.labels.route === '/metrics').every((s) => s.labels.operation === undefined),
    ).toBe(true);
  });
});
