import { connect, type Socket } from 'node:net';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { getTestModel } from '@edgefleet/core';
import { afterEach, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer, type TestServerOptions } from '../support/server.js';

/**
 * Audit s8 finding 5: a peer that trickles a request body must not hold an operator connection for the upload
 * deadline. Each connection here trickles a byte every 50 ms; before the fix each stayed open for 30 minutes.
 */
interface Trickle {
  /** Everything the server sent. */
  answer(): string;
  /** Resolves when the server closed the connection. */
  closed: Promise<void>;
}

const sockets: Socket[] = [];

function trickle(url: string, head: string): Trickle {
  const { hostname, port } = new URL(url);
  const socket = connect({ host: hostname, port: Number(port) });
  sockets.push(socket);
  let answer = '';
  socket.on('data', (chunk: Buffer) => (answer += chunk.toString()));
  socket.on('error', () => {});
  socket.once('connect', () => socket.write(head));
  const timer = setInterval(() => {
    if (socket.writable) socket.write(' ');
  }, 50);
  const closed = new Promise<void>((resolve) =>
    socket.once('close', () => {
      clearInterval(timer);
      resolve();
    }),
  );
  return { answer: () => answer, closed };
}

const post = (path: string, headers: string, contentLength: number) =>
  `POST ${path} HTTP/1.1\r\nHost: x\r\n${headers}Content-Length: ${contentLength}\r\n\r\n{`;

describe('slow request bodies on the operator port', () => {
  let t: TestServer | undefined;
  const start = async (options: TestServerOptions = {}) => {
    t = await startTestServer(options);
    return t;
  };
  afterEach(async () => {
    sockets.splice(0).forEach((socket) => socket.destroy());
    await t?.stop();
    t = undefined;
  });

  it('closes the connection after a 401 instead of draining a trickled body (default limits)', async () => {
    const server = await start();
    const slow = trickle(
      server.url,
      post('/api/v1/fleets', 'Content-Type: application/json\r\n', 100_000_000),
    );
    await slow.closed;
    expect(slow.answer()).toMatch(/^HTTP\/1\.1 401 /);
    expect(slow.answer()).toMatch(/\r\nconnection: close\r\n/i);
    expect((await server.call('GET', '/healthz')).status).toBe(200);
  });

  // Review s8 #3: Fastify answers a malformed URL itself (no hooks run), so the rule is enforced below it.
  it("closes the connection after Fastify's own 400 for a malformed URL instead of draining a trickled body", async () => {
    const server = await start();
    const slow = trickle(server.url, post('/%ZZ', 'Content-Type: application/json\r\n', 100_000_000));
    await slow.closed;
    expect(slow.answer()).toMatch(/^HTTP\/1\.1 400 /);
    expect(slow.answer()).toMatch(/\r\nconnection: close\r\n/i);
    expect((await server.call('GET', '/healthz')).status).toBe(200);
  });

  // Fastify already ended this one before the fix; kept so that the facade's own error handler stays covered.
  it('closes the connection after the facade refuses an oversized body before reading it', async () => {
    const server = await start();
    const slow = trickle(
      server.url,
      post(
        '/',
        'Content-Type: application/x-amz-json-1.1\r\nX-Amz-Target: SageMaker.ListDeviceFleets\r\n',
        100_000_000,
      ),
    );
    await slow.closed;
    expect(slow.answer()).toMatch(/^HTTP\/1\.1 400 /);
    expect(slow.answer()).toMatch(/\r\nconnection: close\r\n/i);
    expect(slow.answer()).toMatch(/ValidationException/);
  });

  it('answers 408 and closes when a body (read before authentication, or by an operator) is not in by the deadline', async () => {
    const server = await start({ start: { listenerLimits: { operator: { requestTimeoutMs: 300 } } } });
    // The facade reads its body before it can check the signature.
    const facade = trickle(
      server.url,
      post(
        '/',
        'Content-Type: application/x-amz-json-1.1\r\nX-Amz-Target: SageMaker.ListDeviceFleets\r\n',
        1000,
      ),
    );
    const operator = trickle(
      server.url,
      post(
        '/api/v1/fleets',
        `Authorization: Bearer ${server.adminToken}\r\nContent-Type: application/json\r\n`,
        1000,
      ),
    );
    await Promise.all([facade.closed, operator.closed]);
    for (const slow of [facade, operator]) {
      expect(slow.answer()).toMatch(/^HTTP\/1\.1 408 /);
      expect(slow.answer()).toMatch(/"code":"RequestTimeout"/);
    }
  });

  it('lets a model upload take longer than the listener deadline, up to its own', async () => {
    const server = await start({
      start: { listenerLimits: { operator: { requestTimeoutMs: 300 } } },
      config: { uploads: { modelUploadTimeoutSeconds: 60 } },
    });
    const bytes = Buffer.from(getTestModel('tiny').build());
    const third = Math.ceil(bytes.length / 3);
    // Three parts 250 ms apart: the whole request takes more than twice the listener's 300 ms.
    async function* slowly() {
      for (let at = 0; at < bytes.length; at += third) {
        yield bytes.subarray(at, at + third);
        await sleep(250);
      }
    }
    const uploaded = await fetch(`${server.url}/api/v1/models/tiny/versions/1`, {
      method: 'POST',
      headers: { authorization: `Bearer ${server.adminToken}`, 'content-type': 'application/octet-stream' },
      body: Readable.toWeb(Readable.from(slowly())) as ReadableStream,
      duplex: 'half',
    } as RequestInit);
    expect(uploaded.status).toBe(201);
    expect(await uploaded.json()).toMatchObject({ modelName: 'tiny', version: '1', sizeBytes: bytes.length });
  });

  it('answers 408 to a model upload still incomplete at its own deadline', async () => {
    const server = await start({ config: { uploads: { modelUploadTimeoutSeconds: 1 } } });
    const slow = trickle(
      server.url,
      post(
        '/api/v1/models/tiny/versions/1',
        `Authorization: Bearer ${server.adminToken}\r\nContent-Type: application/octet-stream\r\n`,
        100_000,
      ),
    );
    await slow.closed;
    expect(slow.answer()).toMatch(/^HTTP\/1\.1 408 /);
    expect(slow.answer()).toMatch(/within 1000 ms/);
    expect(
      (await server.call('GET', '/api/v1/models/tiny/versions/1', { token: server.readToken })).status,
    ).toBe(404);
  });
});
