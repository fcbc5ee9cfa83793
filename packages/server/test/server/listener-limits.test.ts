import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { connect as connectTls, type TLSSocket } from 'node:tls';
import { Writable } from 'node:stream';
import { capConnections, clientAddress, fitConnectionCaps, openFileLimit } from '@edgefleet/core';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { deviceCall } from '../support/device.js';
import { enrollDevice, startTestServer, type TestServer } from '../support/server.js';

/** host:port of a URL. */
function endpoint(url: string): { host: string; port: number } {
  const { hostname, port } = new URL(url);
  return { host: hostname, port: Number(port) };
}

/** A plain TCP connection that sends nothing (never starts TLS or HTTP); resolves once connected. */
function openIdle(url: string, localAddress = '127.0.0.1'): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ ...endpoint(url), localAddress });
    socket.once('connect', () => resolve(socket));
    socket.once('error', reject);
  });
}

function closed(socket: Socket): Promise<void> {
  return new Promise((resolve) => {
    if (socket.destroyed) resolve();
    else socket.once('close', () => resolve());
    socket.on('error', () => {});
  });
}

describe('listener limits (issue 15: half-open TLS connections)', () => {
  let t: TestServer | undefined;
  const sockets: Socket[] = [];
  afterEach(async () => {
    sockets.splice(0).forEach((socket) => socket.destroy());
    await t?.stop();
    t = undefined;
  });
  const idle = async (url: string, localAddress?: string) => {
    const socket = await openIdle(url, localAddress);
    sockets.push(socket);
    return socket;
  };

  it('drops connections that never start TLS after the handshake timeout', async () => {
    t = await startTestServer({ start: { listenerLimits: { device: { handshakeTimeoutMs: 200 } } } });
    const held = await Promise.all(Array.from({ length: 5 }, () => idle(t!.server.deviceUrl)));
    // Without the timeout they would stay open for 120 s, past the test's own timeout.
    await Promise.all(held.map(closed));
  });

  it('caps connections per address on the device port; other addresses, mTLS devices and the operator port still work', async () => {
    t = await startTestServer({
      start: { listenerLimits: { device: { maxConnectionsPerAddress: 4, maxConnections: 100 } } },
    });
    await t.call('POST', '/api/v1/fleets', {
      token: t.adminToken,
      body: { name: 'cams', outputConfig: { s3OutputLocation: 's3://captures/cams' } },
    });
    await t.call('POST', '/api/v1/fleets/cams/devices', {
      token: t.adminToken,
      body: { devices: [{ name: 'cam-1' }] },
    });
    const device = await enrollDevice(t, 'cam-1');
    // The flood comes from 127.0.0.2 (loopback has all of 127/8); the device connects from 127.0.0.1.
    const held = await Promise.all(Array.from({ length: 4 }, () => idle(t!.server.deviceUrl, '127.0.0.2')));
    // One more from that address closes its oldest idle connection (one with no request in progress): it holds 4.
    const over = await idle(t.server.deviceUrl, '127.0.0.2');
    const oldest = await Promise.race(held.map((socket) => closed(socket).then(() => socket)));
    expect([...held, over].filter((socket) => !socket.destroyed)).toHaveLength(4);
    expect(held.includes(oldest)).toBe(true);
    const identity = await deviceCall(t.server.deviceUrl, device.tls, 'GET', '/api/v1/device/identity');
    expect(identity.status).toBe(200);
    expect((await t.call('GET', '/healthz')).status).toBe(200);
  });

  it('keeps a device connection whose request is in progress (TLS) when the address is full: the newcomer is refused', async () => {
    t = await startTestServer({
      start: { listenerLimits: { device: { maxConnectionsPerAddress: 1, maxConnections: 100 } } },
    });
    await t.call('POST', '/api/v1/fleets', {
      token: t.adminToken,
      body: { name: 'cams', outputConfig: { s3OutputLocation: 's3://captures/cams' } },
    });
    await t.call('POST', '/api/v1/fleets/cams/devices', {
      token: t.adminToken,
      body: { devices: [{ name: 'cam-1' }] },
    });
    const device = await enrollDevice(t, 'cam-1');
    const { host, port } = endpoint(t.server.deviceUrl);
    // A heartbeat whose body is still coming: its request is in progress on the TLS connection.
    const busy = connectTls({
      host,
      port,
      ca: device.tls.ca,
      cert: device.tls.cert,
      key: device.tls.key,
      servername: 'localhost',
    });
    sockets.push(busy as unknown as Socket);
    busy.on('error', () => {});
    let answer = '';
    busy.on('data', (chunk: Buffer) => (answer += chunk.toString()));
    await new Promise<void>((resolve) => busy.once('secureConnect', () => resolve()));
    busy.write(
      'POST /api/v1/device/heartbeat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{',
    );
    // The server has the request once a request on another address is answered after it (same event loop).
    expect((await t.call('GET', '/healthz')).status).toBe(200);
    const over = await idle(t.server.deviceUrl);
    await closed(over);
    expect(busy.destroyed).toBe(false);
    expect(answer).toBe('');
  });

  it('caps the device port in total, leaving the operator port serving', async () => {
    t = await startTestServer({
      start: { listenerLimits: { device: { maxConnectionsPerAddress: 100, maxConnections: 6 } } },
    });
    const held: Socket[] = [];
    for (let i = 0; i < 6; i++) held.push(await idle(t.server.deviceUrl)); // one by one: held[0] is the oldest
    // Full: a newcomer closes the oldest connection that has carried no request, of whatever group.
    const over = await idle(t.server.deviceUrl, '127.0.0.3');
    await closed(held[0]!);
    expect([...held.slice(1), over].every((socket) => !socket.destroyed)).toBe(true);
    expect((await t.call('GET', '/healthz')).status).toBe(200);
  });

  it('at the total cap, closes an idle connection that carried only unauthenticated requests, never a device connection (review F1)', async () => {
    t = await startTestServer({
      start: { listenerLimits: { device: { maxConnectionsPerAddress: 100, maxConnections: 6 } } },
    });
    await t.call('POST', '/api/v1/fleets', {
      token: t.adminToken,
      body: { name: 'cams', outputConfig: { s3OutputLocation: 's3://captures/cams' } },
    });
    await t.call('POST', '/api/v1/fleets/cams/devices', {
      token: t.adminToken,
      body: { devices: [{ name: 'cam-1' }] },
    });
    const device = await enrollDevice(t, 'cam-1');
    const afterOneRequest = (localAddress: string, tls: Partial<typeof device.tls>) =>
      tlsAfterOneRequest(idle, t!.server.deviceUrl, device.tls.ca, localAddress, tls);
    // A device's connection (its certificate verified), then a flood from two addresses that sends one request
    // per connection without a certificate: every slot has carried a request.
    const deviceConnection = await afterOneRequest('127.0.0.1', device.tls);
    expect(deviceConnection.status).toBe(200);
    const flood: Socket[] = [];
    for (const localAddress of ['127.0.0.2', '127.0.0.2', '127.0.0.2', '127.0.0.4', '127.0.0.4']) {
      const { socket, status } = await afterOneRequest(localAddress, {});
      expect(status).toBe(401);
      flood.push(socket as unknown as Socket);
    }
    // A newcomer still gets in: the oldest idle connection of the largest group (127.0.0.2) is closed for it,
    // not the device's, which carried an authenticated request.
    const over = await idle(t.server.deviceUrl, '127.0.0.3');
    const first = await Promise.race([
      closed(flood[0]!).then(() => 'oldest of 127.0.0.2'),
      closed(over).then(() => 'newcomer'),
      closed(deviceConnection.socket as unknown as Socket).then(() => 'device'),
    ]);
    expect(first).toBe('oldest of 127.0.0.2');
    expect(over.destroyed).toBe(false);
    expect(deviceConnection.socket.destroyed).toBe(false);
    expect(flood.slice(1).every((socket) => !socket.destroyed)).toBe(true);
  });

  it('at the total cap, does not protect the connection of a revoked certificate (it still verifies at TLS)', async () => {
    t = await startTestServer({
      start: { listenerLimits: { device: { maxConnectionsPerAddress: 100, maxConnections: 3 } } },
    });
    await t.call('POST', '/api/v1/fleets', {
      token: t.adminToken,
      body: { name: 'cams', outputConfig: { s3OutputLocation: 's3://captures/cams' } },
    });
    await t.call('POST', '/api/v1/fleets/cams/devices', {
      token: t.adminToken,
      body: { devices: [{ name: 'cam-1' }] },
    });
    const device = await enrollDevice(t, 'cam-1');
    const revoked = await t.call('POST', '/api/v1/devices/cam-1/certificates/revoke', {
      token: t.adminToken,
      body: {},
    });
    expect(revoked.status).toBe(200);
    // The revoked device's connection first (the oldest of 127.0.0.2), then two without a certificate.
    const deviceConnection = await tlsAfterOneRequest(
      idle,
      t.server.deviceUrl,
      device.tls.ca,
      '127.0.0.2',
      device.tls,
    );
    expect(deviceConnection.status).toBe(401);
    const other = await tlsAfterOneRequest(idle, t.server.deviceUrl, device.tls.ca, '127.0.0.2', {});
    const third = await tlsAfterOneRequest(idle, t.server.deviceUrl, device.tls.ca, '127.0.0.4', {});
    // The newcomer closes the oldest idle connection of the largest group: the revoked device's, which its 401
    // did not protect.
    const over = await idle(t.server.deviceUrl, '127.0.0.3');
    const first = await Promise.race([
      closed(deviceConnection.socket as unknown as Socket).then(() => 'revoked device'),
      closed(other.socket as unknown as Socket).then(() => 'other of 127.0.0.2'),
      closed(over).then(() => 'newcomer'),
    ]);
    expect(first).toBe('revoked device');
    expect(third.socket.destroyed).toBe(false);
  });

  it('lets a request in while one address floods the operator port with idle connections, and logs the flood (F-E)', async () => {
    const lines: Record<string, unknown>[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        for (const line of chunk.toString('utf8').split('\n').filter(Boolean)) lines.push(JSON.parse(line));
        done();
      },
    });
    t = await startTestServer({
      logger: pino({ level: 'info' }, sink),
      start: { listenerLimits: { operator: { maxConnectionsPerAddress: 2, maxConnections: 50 } } },
    });
    // A local user's flood: seven idle connections from 127.0.0.1, where the cap is 2. Each one past the cap
    // closes the oldest idle one, so the flood holds at most 2 and the operator's request still gets in.
    const flood: Socket[] = [];
    for (let i = 0; i < 7; i++) flood.push(await idle(t.url));
    await Promise.all(flood.slice(0, 5).map(closed));
    expect(flood.slice(5).every((socket) => !socket.destroyed)).toBe(true);
    expect((await t.call('GET', '/healthz')).status).toBe(200);
    const refusals = lines.filter((line) => line.event === 'connections_refused');
    // The first is logged at once; the rest wait for the minute to end.
    expect(refusals).toHaveLength(1);
    expect(refusals[0]).toMatchObject({
      level: 40,
      listener: 'operator',
      refused: 0,
      evicted: 1,
      closedAddresses: { '127.0.0.1': 1 },
      addresses: { '127.0.0.1': 1 },
      perAddressCap: 2,
      totalCap: 50,
    });
    expect(refusals[0]!.msg).toBe(
      '1 connection(s) over a cap on the operator listener from 127.0.0.1 (1) let in by closing another connection, of 127.0.0.1 (1): per-address cap 2 / total cap 50',
    );
    // Stopping the server writes what is pending: four more from the flood, one for the request.
    sockets.splice(0).forEach((socket) => socket.destroy());
    await t.stop();
    t = undefined;
    const all = lines.filter((line) => line.event === 'connections_refused');
    expect(all).toHaveLength(2);
    expect(all[1]).toMatchObject({ listener: 'operator', refused: 0, evicted: 5 });
  });

  it('closes a connection whose request headers never finish (slowloris) on the operator port', async () => {
    t = await startTestServer({ start: { listenerLimits: { operator: { headersTimeoutMs: 300 } } } });
    const socket = await idle(t.url);
    let answer = '';
    socket.on('data', (chunk: Buffer) => (answer += chunk.toString()));
    socket.write('GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ');
    await closed(socket);
    expect(answer).toMatch(/^HTTP\/1\.1 408/);
    // Answered by Node below the app, and counted (before, /metrics never saw it).
    const metrics = String((await t.call('GET', '/metrics', { token: t.readToken })).body);
    expect(metrics).toMatch(
      /^edgefleet_server_http_requests_total\{listener="operator",method="other",route="unmatched",status_class="4xx"\} 1$/m,
    );
    expect(metrics).toMatch(
      /^edgefleet_server_requests_refused_total\{listener="operator",reason="request_timeout"\} 1$/m,
    );
  });

  it("counts Node's own 400 for a request it cannot parse, labelled by nothing the client sent", async () => {
    t = await startTestServer();
    for (const request of [
      'GET /api/v1/devices/secret-device HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n',
      'NOT-A-METHOD\x01 /private-path HTTP/1.1\r\n\r\n',
    ]) {
      const socket = await idle(t.url);
      let answer = '';
      socket.on('data', (chunk: Buffer) => (answer += chunk.toString()));
      socket.write(request);
      await closed(socket);
      expect(answer).toMatch(/^HTTP\/1\.1 400/);
    }
    const metrics = String((await t.call('GET', '/metrics', { token: t.readToken })).body);
    expect(metrics).toMatch(
      /^edgefleet_server_http_requests_total\{listener="operator",method="other",route="unmatched",status_class="4xx"\} 2$/m,
    );
    // A 400 is the client's error, not a limit.
    expect(metrics).not.toMatch(/^edgefleet_server_requests_refused_total\{/m);
    expect(metrics).not.toMatch(/secret-device|private-path|NOT-A-METHOD/);
  });
});

describe('connection caps and the open file limit', () => {
  it('reads the limit from /proc/self/limits text', () => {
    const text = [
      'Limit                     Soft Limit           Hard Limit           Units',
      'Max open files            1024                 524288               files',
    ].join('\n');
    expect(openFileLimit(text)).toBe(1024);
    expect(openFileLimit('Max open files  unlimited  unlimited  files')).toBeUndefined();
    expect(openFileLimit('')).toBeUndefined();
  });

  it('scales the caps down in proportion when they would not fit', () => {
    const caps = [
      { maxConnections: 1024, maxConnectionsPerAddress: 128 },
      { maxConnections: 4096, maxConnectionsPerAddress: 256 },
    ];
    expect(fitConnectionCaps(caps, 1_000_000)).toEqual({ caps, scaled: false });
    expect(fitConnectionCaps(caps, undefined)).toEqual({ caps, scaled: false });
    expect(fitConnectionCaps(caps, 1000)).toEqual({
      caps: [
        { maxConnections: 160, maxConnectionsPerAddress: 128 },
        { maxConnections: 640, maxConnectionsPerAddress: 256 },
      ],
      scaled: true,
    });
  });

  it('keeps the operator port serving when a low file limit would let a device-port flood use every descriptor', async () => {
    const t = await startTestServer({
      start: { openFileLimit: 20, listenerLimits: { device: { maxConnectionsPerAddress: 1000 } } },
    });
    const sockets: Socket[] = [];
    try {
      // 20 descriptors, 80 % for listeners: 3 operator and 12 device connections at most.
      for (let i = 0; i < 12; i++) sockets.push(await openIdle(t.server.deviceUrl));
      // The 13th closes the oldest idle one: the device port still holds 12.
      const over = await openIdle(t.server.deviceUrl);
      sockets.push(over);
      await closed(sockets[0]!);
      expect(sockets.slice(1).every((socket) => !socket.destroyed)).toBe(true);
      expect((await t.call('GET', '/healthz')).status).toBe(200);
    } finally {
      sockets.forEach((socket) => socket.destroy());
      await t.stop();
    }
  });
});

describe('capConnections counts one client once, whatever the spelling of its address', () => {
  it('normalises IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) to the IPv4 address', () => {
    expect(clientAddress('::ffff:1.2.3.4')).toBe('1.2.3.4');
    expect(clientAddress('::FFFF:127.0.0.1')).toBe('127.0.0.1');
    expect(clientAddress('1.2.3.4')).toBe('1.2.3.4');
    expect(clientAddress('2001:DB8::1')).toBe('2001:db8::1');
    expect(clientAddress('::ffff:zz')).toBe('::ffff:zz');
    expect(clientAddress('::1')).toBe('::1');
  });

  it('caps 127.0.0.1 reaching a dual-stack listener (::ffff:127.0.0.1) and handed over as 127.0.0.1 together', async () => {
    // The capped server listens on :: (dual stack), so a direct IPv4 client shows as ::ffff:127.0.0.1; a second
    // server on 127.0.0.1 hands its connections over (as a proxy or a socket passed between servers does), and
    // those show as 127.0.0.1. Both are the same client: the cap of 2 holds across them. The capped server
    // echoes, so a connection it kept answers.
    const capped = createServer();
    capConnections(capped, { maxConnections: 100, maxConnectionsPerAddress: 2 });
    const accepted: Socket[] = [];
    capped.on('connection', (socket: Socket) => {
      accepted.push(socket);
      socket.on('error', () => {});
      if (!socket.destroyed) socket.pipe(socket);
    });
    const handing = createServer((socket) => capped.emit('connection', socket));
    const sockets: Socket[] = [];
    const listen = (server: Server, host: string) =>
      new Promise<number>((resolve) =>
        server.listen(0, host, () => resolve((server.address() as AddressInfo).port)),
      );
    const close = (server: Server) => new Promise<void>((resolve) => server.close(() => resolve()));
    const open = async (port: number) => {
      const socket = await openIdle(`http://127.0.0.1:${port}`);
      sockets.push(socket);
      return socket;
    };
    const echoes = (socket: Socket) =>
      new Promise<boolean>((resolve) => {
        if (socket.destroyed) return resolve(false);
        socket.on('error', () => {});
        socket.once('data', (data: Buffer) => resolve(data.toString() === 'ping'));
        socket.once('close', () => resolve(false));
        socket.write('ping');
      });
    try {
      const cappedPort = await listen(capped, '::');
      const handingPort = await listen(handing, '127.0.0.1');
      const direct = await open(cappedPort);
      const handed = await open(handingPort);
      expect(await echoes(direct)).toBe(true);
      expect(await echoes(handed)).toBe(true);
      expect(accepted.map((socket) => socket.remoteAddress).sort()).toEqual([
        '127.0.0.1',
        '::ffff:127.0.0.1',
      ]);
      // A third connection from the same client, either way, is over the cap (closed, never answered).
      expect(await echoes(await open(cappedPort))).toBe(false);
      expect(await echoes(await open(handingPort))).toBe(false);
      expect(await echoes(direct)).toBe(true);
      // Room again once one has closed.
      const directOnServer = accepted.find((socket) => socket.remoteAddress === '::ffff:127.0.0.1')!;
      direct.destroy();
      await closed(directOnServer);
      expect(await echoes(await open(handingPort))).toBe(true);
    } finally {
      sockets.forEach((socket) => socket.destroy());
      await Promise.all([close(capped), close(handing)]);
    }
  });
});

/** A TLS connection from `localAddress` that sends one keep-alive request and reads its whole answer. */
async function tlsAfterOneRequest(
  open: (url: string, localAddress: string) => Promise<Socket>,
  deviceUrl: string,
  ca: string | Buffer,
  localAddress: string,
  tls: { cert?: string | Buffer; key?: string | Buffer },
): Promise<{ socket: TLSSocket; status: number }> {
  // TLS over a TCP connection of our own: tls.connect's options have no localAddress.
  const tcp = await open(deviceUrl, localAddress);
  const socket = connectTls({ socket: tcp, ca, servername: 'localhost', ...tls });
  socket.on('error', () => {});
  await new Promise<void>((resolve) => socket.once('secureConnect', () => resolve()));
  let answer = '';
  const answered = new Promise<string>((resolve) =>
    socket.on('data', (chunk: Buffer) => {
      answer += chunk.toString();
      const end = answer.indexOf('\r\n\r\n');
      const length = /content-length: (\d+)/i.exec(answer);
      if (end !== -1 && length && answer.length >= end + 4 + Number(length[1])) resolve(answer);
    }),
  );
  socket.write('GET /api/v1/device/identity HTTP/1.1\r\nHost: x\r\n\r\n');
  return { socket, status: Number((await answered).split(' ')[1]) };
}
