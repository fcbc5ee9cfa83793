import { createServer as createHttpServer, type ServerResponse } from 'node:http';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import {
  addressGroup,
  applyListenerLimits,
  capConnections,
  ConnectionRefusalLog,
  type ConnectionRefusal,
  type RefusalClock,
} from '../../src/net/index.js';

/** A clock that moves only when told to, firing the timers that fall due. */
class ManualClock implements RefusalClock {
  time = 1_000_000;
  timers: { at: number; callback: () => void }[] = [];
  now(): number {
    return this.time;
  }
  after(ms: number, callback: () => void): () => void {
    const timer = { at: this.time + ms, callback };
    this.timers.push(timer);
    return () => (this.timers = this.timers.filter((t) => t !== timer));
  }
  advance(ms: number): void {
    this.time += ms;
    const due = this.timers.filter((t) => t.at <= this.time);
    this.timers = this.timers.filter((t) => t.at > this.time);
    due.forEach((t) => t.callback());
  }
}

interface Line {
  fields: Record<string, unknown>;
  message: string;
}

function recordingLogger(): { lines: Line[]; warn(fields: Record<string, unknown>, message: string): void } {
  const lines: Line[] = [];
  return { lines, warn: (fields, message) => lines.push({ fields, message }) };
}

describe('addressGroup: the group the per-address cap counts a peer in', () => {
  it('groups IPv6 peers by /64 and keeps IPv4 (mapped or not) per address', () => {
    expect(addressGroup('2001:db8:1:2::1')).toBe('2001:db8:1:2::/64');
    expect(addressGroup('2001:DB8:1:2:ffff:ffff:ffff:ffff')).toBe('2001:db8:1:2::/64');
    expect(addressGroup('2001:0db8:0001:0002:0:0:0:7')).toBe('2001:db8:1:2::/64');
    expect(addressGroup('2001:db8:1:3::1')).toBe('2001:db8:1:3::/64');
    expect(addressGroup('2001:db8::1.2.3.4')).toBe('2001:db8::/64');
    expect(addressGroup('fe80::1%eth0')).toBe('fe80::/64');
    expect(addressGroup('::1')).toBe('::/64');
    expect(addressGroup('1.2.3.4')).toBe('1.2.3.4');
    expect(addressGroup('::ffff:1.2.3.4')).toBe('1.2.3.4');
    expect(addressGroup('::ffff:1.2.3.5')).toBe('1.2.3.5');
    expect(addressGroup('::ffff:7f00:1')).toBe('127.0.0.1');
    expect(addressGroup('not an address')).toBe('not an address');
  });
});

describe('ConnectionRefusalLog', () => {
  const caps = { maxConnections: 10, maxConnectionsPerAddress: 2 };

  it('logs the first refusal at once, then at most one line a minute summing up the rest', () => {
    const clock = new ManualClock();
    const logger = recordingLogger();
    const counted: ConnectionRefusal[] = [];
    const log = new ConnectionRefusalLog({
      listener: 'operator',
      caps,
      logger,
      clock,
      count: (refusal) => counted.push(refusal),
    });
    log.refused({ refusedBy: 'per-address', address: '127.0.0.1' });
    expect(logger.lines).toHaveLength(1);
    expect(logger.lines[0]!.fields).toEqual({
      event: 'connections_refused',
      listener: 'operator',
      refused: 1,
      refusedBy: { perAddress: 1, total: 0 },
      addresses: { '127.0.0.1': 1 },
      perAddressCap: 2,
      totalCap: 10,
    });
    expect(logger.lines[0]!.message).toBe(
      '1 connection(s) refused on the operator listener from 127.0.0.1 (1): per-address cap 2 / total cap 10',
    );

    for (let i = 0; i < 500; i++) log.refused({ refusedBy: 'per-address', address: '127.0.0.1' });
    clock.advance(30_000);
    log.refused({ refusedBy: 'total', address: '2001:db8::/64' });
    expect(logger.lines).toHaveLength(1);
    clock.advance(29_999);
    expect(logger.lines).toHaveLength(1);
    clock.advance(1);
    expect(logger.lines).toHaveLength(2);
    expect(logger.lines[1]!.fields).toMatchObject({
      refused: 501,
      refusedBy: { perAddress: 500, total: 1 },
      addresses: { '127.0.0.1': 500, '2001:db8::/64': 1 },
    });
    expect(logger.lines[1]!.message).toBe(
      '501 connection(s) refused on the operator listener from 127.0.0.1 (500), 2001:db8::/64 (1) in the last 60 s: ' +
        'per-address cap 2 / total cap 10',
    );
    expect(counted).toHaveLength(502);

    // Quiet for a while: nothing more is logged, and the next refusal is logged at once again.
    clock.advance(600_000);
    expect(logger.lines).toHaveLength(2);
    log.refused({ refusedBy: 'per-address', address: '10.0.0.1' });
    expect(logger.lines).toHaveLength(3);
    expect(clock.timers).toHaveLength(0);
  });

  it('tells connections closed for sending nothing in time in the same line and pace as refusals', () => {
    const clock = new ManualClock();
    const logger = recordingLogger();
    const log = new ConnectionRefusalLog({
      listener: 'grpc',
      caps: { maxConnections: 4 },
      logger,
      clock,
      timeoutText: 'sent no HTTP/2 preface within 10 s',
    });
    log.timedOut();
    expect(logger.lines).toHaveLength(1);
    expect(logger.lines[0]!.fields).toMatchObject({ refused: 0, timedOut: 1 });
    expect(logger.lines[0]!.message).toBe(
      '1 connection(s) closed on the grpc listener from unix socket (1): sent no HTTP/2 preface within 10 s',
    );
    log.timedOut();
    log.refused({ refusedBy: 'total' });
    expect(logger.lines).toHaveLength(1);
    clock.advance(60_000);
    expect(logger.lines).toHaveLength(2);
    expect(logger.lines[1]!.fields).toMatchObject({ refused: 1, timedOut: 1 });
    expect(logger.lines[1]!.message).toBe(
      '1 connection(s) refused on the grpc listener from unix socket (2) in the last 60 s: total cap 4 (1 more closed: sent no HTTP/2 preface within 10 s)',
    );
  });

  it('names a bounded number of addresses however many a flood comes from, and writes what is pending on close', () => {
    const clock = new ManualClock();
    const logger = recordingLogger();
    const log = new ConnectionRefusalLog({ listener: 'device', caps, logger, clock });
    log.refused({ refusedBy: 'total', address: '10.0.0.0' });
    for (let i = 1; i <= 1000; i++) log.refused({ refusedBy: 'total', address: `10.0.${i >> 8}.${i & 255}` });
    log.close();
    expect(logger.lines).toHaveLength(2);
    const { fields, message } = logger.lines[1]!;
    expect(Object.keys(fields.addresses as object).length).toBeLessThanOrEqual(8);
    expect(fields.refused).toBe(1000);
    expect(fields.otherAddresses).toBe(1000 - Object.keys(fields.addresses as object).length);
    expect(message).toMatch(
      /^1000 connection\(s\) refused on the device listener from .* and 997 from other addresses/,
    );
    expect(clock.timers).toHaveLength(0);
  });

  it('counts connections let in by closing another apart from refusals, naming whose was closed (N3)', () => {
    const logger = recordingLogger();
    const log = new ConnectionRefusalLog({ listener: 'device', caps, logger, clock: new ManualClock() });
    log.refused({ refusedBy: 'total', address: '10.0.0.9', idleClosed: true, closedAddress: '10.0.0.1' });
    expect(logger.lines[0]!.fields).toMatchObject({
      refused: 0,
      refusedBy: { perAddress: 0, total: 0 },
      evicted: 1,
      closedAddresses: { '10.0.0.1': 1 },
      addresses: { '10.0.0.9': 1 },
    });
    expect(logger.lines[0]!.message).toBe(
      '1 connection(s) over a cap on the device listener from 10.0.0.9 (1) let in by closing another connection, of 10.0.0.1 (1): per-address cap 2 / total cap 10',
    );
    log.refused({ refusedBy: 'total', address: '10.0.0.9' });
    log.refused({ refusedBy: 'total', address: '10.0.0.8', idleClosed: true, closedAddress: '10.0.0.2' });
    log.close();
    expect(logger.lines[1]!.fields).toMatchObject({
      refused: 1,
      refusedBy: { perAddress: 0, total: 1 },
      evicted: 1,
      closedAddresses: { '10.0.0.2': 1 },
    });
    expect(logger.lines[1]!.message).toMatch(
      /^1 connection\(s\) refused on the device listener from .*: per-address cap 2 \/ total cap 10 \(1 more let in by closing another connection, of 10\.0\.0\.2 \(1\)\)$/,
    );
  });

  it('leaves out the per-address cap where the listener has none (a Unix socket)', () => {
    const logger = recordingLogger();
    const log = new ConnectionRefusalLog({
      listener: 'grpc',
      caps: { maxConnections: 256 },
      logger,
      clock: new ManualClock(),
    });
    log.refused({ refusedBy: 'total' });
    expect(logger.lines[0]!.message).toBe(
      '1 connection(s) refused on the grpc listener from unix socket (1): total cap 256',
    );
    expect(logger.lines[0]!.fields).not.toHaveProperty('perAddressCap');
  });
});

describe('capConnections reports each refusal (real sockets)', () => {
  const servers: Server[] = [];
  const sockets: Socket[] = [];
  afterEach(async () => {
    sockets.splice(0).forEach((socket) => socket.destroy());
    await Promise.all(servers.splice(0).map((server) => new Promise((resolve) => server.close(resolve))));
  });

  async function listen(host: string, caps: { maxConnections: number; maxConnectionsPerAddress: number }) {
    const refusals: ConnectionRefusal[] = [];
    const server = createServer((socket) => socket.on('error', () => {}));
    capConnections(server, caps, { onRefused: (refusal) => refusals.push(refusal) });
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(0, host, resolve));
    return { port: (server.address() as AddressInfo).port, refusals };
  }

  /** Connects from `localAddress`; resolves once connected (the server may still close it). */
  function open(host: string, port: number, localAddress: string): Promise<Socket> {
    return new Promise((resolve, reject) => {
      const socket = connect({ host, port, localAddress });
      sockets.push(socket);
      socket.once('connect', () => resolve(socket));
      socket.once('error', reject);
    });
  }
  const closed = (socket: Socket) =>
    new Promise<void>((resolve) => {
      socket.on('error', () => {});
      if (socket.destroyed) resolve();
      else socket.once('close', () => resolve());
    });

  it('reports per-address refusals with the peer address, and total-cap refusals (Node drops those itself)', async () => {
    const { port, refusals } = await listen('127.0.0.1', { maxConnections: 3, maxConnectionsPerAddress: 2 });
    await open('127.0.0.1', port, '127.0.0.1');
    await open('127.0.0.1', port, '127.0.0.1');
    await closed(await open('127.0.0.1', port, '127.0.0.1'));
    expect(refusals).toEqual([{ refusedBy: 'per-address', address: '127.0.0.1' }]);
    await open('127.0.0.1', port, '127.0.0.2');
    const over = await open('127.0.0.1', port, '127.0.0.3');
    await closed(over);
    // Node emits 'drop' as it closes the handle; the client can see the close first.
    await expect.poll(() => refusals.length).toBe(2);
    expect(refusals[1]).toEqual({ refusedBy: 'total', address: '127.0.0.3' });
  });

  it('counts IPv6 peers per /64: ::1 is in ::/64', async () => {
    const { port, refusals } = await listen('::1', { maxConnections: 100, maxConnectionsPerAddress: 1 });
    await open('::1', port, '::1');
    await closed(await open('::1', port, '::1'));
    expect(refusals).toEqual([{ refusedBy: 'per-address', address: '::/64' }]);
  });
});

describe('a full address group closes its oldest idle connection for a newcomer (F-E: a local user flooding loopback)', () => {
  const sockets: Socket[] = [];
  let server: ReturnType<typeof createHttpServer> | undefined;
  afterEach(async () => {
    sockets.splice(0).forEach((socket) => socket.destroy());
    server?.closeAllConnections();
    await new Promise((resolve) => (server ? server.close(resolve) : resolve(undefined)));
    server = undefined;
  });

  /** An HTTP server capped at 2 connections per address whose /hold requests wait until released. */
  async function start(caps = { maxConnections: 100, maxConnectionsPerAddress: 2 }) {
    const refusals: ConnectionRefusal[] = [];
    const held: ServerResponse[] = [];
    server = createHttpServer((req, res) => {
      if (req.url === '/hold') held.push(res);
      else res.end('ok');
    });
    applyListenerLimits(
      server,
      {
        handshakeTimeoutMs: 10_000,
        headersTimeoutMs: 10_000,
        requestTimeoutMs: 30_000,
        idleTimeoutMs: 30_000,
        keepAliveTimeoutMs: 30_000,
        ...caps,
      },
      (refusal) => refusals.push(refusal),
      // Stands for a device port's verified certificate: a request saying so is authenticated.
      (req) => req.headers.authorization === 'device',
    );
    await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
    return { port: (server.address() as AddressInfo).port, refusals, held };
  }
  function open(
    port: number,
    localAddress = '127.0.0.1',
  ): Promise<{ socket: Socket; received: () => string; closed: Promise<void> }> {
    return new Promise((resolve, reject) => {
      const socket = connect({ host: '127.0.0.1', port, localAddress });
      sockets.push(socket);
      let text = '';
      socket.on('data', (chunk: Buffer) => (text += chunk.toString()));
      const closed = new Promise<void>((done) => socket.once('close', () => done()));
      socket.once('connect', () => resolve({ socket, received: () => text, closed }));
      socket.once('error', reject);
    });
  }
  const connectionsOf = (of: Server | ReturnType<typeof createHttpServer>) =>
    new Promise<number>((resolve) => of.getConnections((_error, count) => resolve(count)));
  /** Sends a request; resolves with the answer once the server has closed the connection. */
  async function ask(connection: Awaited<ReturnType<typeof open>>, path: string): Promise<string> {
    connection.socket.write(`GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
    await connection.closed;
    return connection.received();
  }

  it('lets in a client that sends its request while the same address holds the cap in idle connections', async () => {
    const { port, refusals } = await start();
    const idle = [await open(port), await open(port)];
    // Half a request line is not a request yet: still idle.
    idle[1]!.socket.write('GET /slow');
    const client = await open(port);
    await idle[0]!.closed;
    expect(await ask(client, '/')).toMatch(/^HTTP\/1\.1 200[\s\S]*ok$/);
    // The group is full again (the half request and a new idle one): the oldest, the half request, makes room.
    await expect.poll(() => connectionsOf(server!)).toBe(1); // the server has seen the client's connection close
    const filler = await open(port);
    const next = await open(port);
    await idle[1]!.closed;
    expect(filler.socket.destroyed).toBe(false);
    expect(await ask(next, '/')).toMatch(/^HTTP\/1\.1 200/);
    expect(refusals).toEqual([
      { refusedBy: 'per-address', address: '127.0.0.1', idleClosed: true, closedAddress: '127.0.0.1' },
      { refusedBy: 'per-address', address: '127.0.0.1', idleClosed: true, closedAddress: '127.0.0.1' },
    ]);
  });

  it('at the total cap, closes the oldest connection that never carried a request, of any group, else the oldest idle one of the largest group, never one that carried an authenticated request (H3, review F1: a NAT site against a flood from many addresses)', async () => {
    const { port, refusals } = await start({ maxConnections: 8, maxConnectionsPerAddress: 8 });
    const authenticated = 'GET / HTTP/1.1\r\nHost: x\r\nAuthorization: device\r\n\r\n';
    const answers = (c: Awaited<ReturnType<typeof open>>) => c.received().split('HTTP/1.1 200').length - 1;
    // A site of devices behind one NAT (127.0.0.1): keep-alive connections that have completed an authenticated
    // request.
    const site = await Promise.all(Array.from({ length: 4 }, () => open(port)));
    for (const device of site) device.socket.write(authenticated);
    await expect.poll(() => site.every((d) => /ok$/.test(d.received()))).toBe(true);
    // A flood from many smaller groups fills the total cap, then goes on.
    const flood: Awaited<ReturnType<typeof open>>[] = [];
    for (let i = 0; i < 4; i++) flood.push(await open(port, `127.0.0.${10 + i}`));
    for (let i = 0; i < 6; i++) flood.push(await open(port, `127.0.1.${i + 1}`));
    // Each newcomer closed the flood's oldest (the largest group, the site's, was never touched).
    await Promise.all(flood.slice(0, 6).map((c) => c.closed));
    expect(flood.slice(6).every((c) => !c.socket.destroyed)).toBe(true);
    expect(refusals.map((r) => r.closedAddress)).toEqual([
      '127.0.0.10',
      '127.0.0.11',
      '127.0.0.12',
      '127.0.0.13',
      '127.0.1.1',
      '127.0.1.2',
    ]);
    expect(refusals.every((r) => r.refusedBy === 'total' && r.idleClosed === true)).toBe(true);
    // The site's connections are open and still serve.
    expect(site.every((d) => !d.socket.destroyed)).toBe(true);
    expect(await ask(site[0]!, '/')).toMatch(/ok$/);
    await expect.poll(() => connectionsOf(server!)).toBe(7);
    // A newcomer that sends its request at once gets in, and once it carried one it is never closed for another.
    const client = await open(port, '127.0.2.1');
    client.socket.write(authenticated);
    await expect.poll(() => answers(client)).toBe(1);
    // A request that was not authenticated protects nothing (anyone can send one): when every connection has
    // carried a request, the oldest idle one of the largest group that has one is closed.
    for (const c of flood.slice(6)) c.socket.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    await expect.poll(() => flood.slice(6).every((c) => answers(c) === 1)).toBe(true);
    const next = await open(port, '127.0.3.1');
    await flood[6]!.closed;
    expect(refusals.at(-1)).toEqual({
      refusedBy: 'total',
      address: '127.0.3.1',
      idleClosed: true,
      closedAddress: '127.0.1.3',
    });
    // Only connections that carried an authenticated request are left: a newcomer now is refused.
    for (const c of [...flood.slice(7), next]) c.socket.write(authenticated);
    await expect.poll(() => flood.slice(7).every((c) => answers(c) === 2) && answers(next) === 1).toBe(true);
    const over = await open(port, '127.0.4.1');
    await over.closed;
    expect(refusals.at(-1)).toEqual({ refusedBy: 'total', address: '127.0.4.1' });
    expect([...site.slice(1), client, ...flood.slice(7), next].every((c) => !c.socket.destroyed)).toBe(true);
  });

  it('lets in every newcomer of one accept batch that closes an unused connection, however many (N2: no drop by Node)', async () => {
    const { port, refusals } = await start({ maxConnections: 40, maxConnectionsPerAddress: 64 });
    const silent = await Promise.all(Array.from({ length: 40 }, () => open(port, '127.0.0.2')));
    await expect.poll(() => connectionsOf(server!)).toBe(40);
    // Connected at once: libuv accepts them in one batch, before any closed connection's 'close' comes.
    const newcomers = await Promise.all(Array.from({ length: 30 }, () => open(port, '127.0.0.3')));
    await Promise.all(silent.slice(0, 30).map((c) => c.closed));
    for (const c of newcomers) c.socket.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    await expect.poll(() => newcomers.every((c) => /ok$/.test(c.received()))).toBe(true);
    expect(refusals).toHaveLength(30);
    expect(refusals.every((r) => r.idleClosed === true && r.closedAddress === '127.0.0.2')).toBe(true);
  });

  it('refuses a newcomer when every connection of its address has a request in progress', async () => {
    const { port, refusals, held } = await start();
    const busy = [await open(port), await open(port)];
    for (const connection of busy) connection.socket.write('GET /hold HTTP/1.1\r\nHost: x\r\n\r\n');
    await expect.poll(() => held.length).toBe(2);
    const over = await open(port);
    await over.closed;
    expect(over.received()).toBe('');
    expect(refusals).toEqual([{ refusedBy: 'per-address', address: '127.0.0.1' }]);
    // Once a response is done, that connection is idle (keep-alive) and makes room again.
    held[0]!.end('done');
    await expect.poll(() => busy[0]!.received()).toMatch(/done$/);
    const after = await open(port);
    await busy[0]!.closed;
    expect(await ask(after, '/')).toMatch(/^HTTP\/1\.1 200/);
    expect(busy[1]!.socket.destroyed).toBe(false);
    held[1]!.end();
  });
});
