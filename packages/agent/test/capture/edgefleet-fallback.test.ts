import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Fastify, { type FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EdgeFleetObjectStore, RAW_REPROBE_MS } from '../../src/capture/edgefleet-store.js';
import { issueMtlsCertificates } from '../support/openssl-mtls.js';

// The EdgeFleet destination against a control plane without the raw upload route. The peer is a real HTTPS
// (mutual TLS) Fastify app that serves only the JSON route, as servers before the raw route did, and answers
// other routes with their 404 body ({"code":"NotFound","message":"no route POST …"}); the current server has no
// configuration that disables its raw route, so an older-server peer is the honest stand-in. It can also answer
// the raw route with 411, as the server does when a proxy in between forwards the body chunked. Certificates are
// made by OpenSSL: a CA, a server certificate for 127.0.0.1, a device certificate.
let dir: string;
let app: FastifyInstance;
let endpoint: string;
let rawRoute: 'absent' | 'present' | '411' = 'absent';
const stored = new Map<string, { via: 'raw' | 'json'; body: Buffer }>();
const requests = { raw: 0, json: 0 };

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ef-fallback-'));
  const { key, cert, ca } = await issueMtlsCertificates(dir, 'cam-1');
  app = Fastify({
    https: { key, cert, ca, requestCert: true, rejectUnauthorized: true },
    bodyLimit: 16 * 1024 * 1024,
  });
  app.setNotFoundHandler((request, reply) =>
    reply
      .status(404)
      .send({ code: 'NotFound', message: `no route ${request.method} ${request.url.split('?')[0]}` }),
  );
  app.addContentTypeParser('application/octet-stream', { parseAs: 'buffer' }, (_request, body, done) =>
    done(null, body),
  );
  app.post('/api/v1/device/captures/files', async (request) => {
    requests.json += 1;
    const { key: fileKey, data } = request.body as { key: string; data: string };
    const body = Buffer.from(data, 'base64');
    stored.set(fileKey, { via: 'json', body });
    return { location: `s3://captures/${fileKey}`, records: 0, duplicates: 0, bytes: body.length };
  });
  app.post('/api/v1/device/captures/files/raw', async (request, reply) => {
    if (rawRoute === 'absent') return reply.callNotFound();
    requests.raw += 1;
    if (rawRoute === '411')
      return reply.status(411).send({
        code: 'ValidationError',
        message: 'a raw capture upload needs a Content-Length header',
      });
    const { key: fileKey } = request.query as { key: string };
    const body = request.body as Buffer;
    stored.set(fileKey, { via: 'raw', body });
    return { location: `s3://captures/${fileKey}`, records: 0, duplicates: 0, bytes: body.length };
  });
  // Counts a raw request the older server has no route for as well.
  app.addHook('onRequest', async (request) => {
    if (rawRoute === 'absent' && request.url.startsWith('/api/v1/device/captures/files/raw'))
      requests.raw += 1;
  });
  await app.listen({ host: '127.0.0.1', port: 0 });
  endpoint = `https://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  await app?.close();
  await rm(dir, { recursive: true, force: true });
});

describe('EdgeFleet destination and a server without the raw route', () => {
  it('sends the JSON form, tries the raw route again after a while, and falls back on 411 too', async () => {
    let now = 1_000;
    const logged: { level: string; details: Record<string, unknown>; message: string }[] = [];
    const store = new EdgeFleetObjectStore({
      endpoint,
      certFile: join(dir, 'device.pem'),
      keyFile: join(dir, 'device.key'),
      caFile: join(dir, 'ca.pem'),
      now: () => now,
      logger: {
        info: (details, message) => logged.push({ level: 'info', details, message }),
        warn: (details, message) => logged.push({ level: 'warn', details, message }),
      },
    });
    const file = (name: string) => `edge/plant/mlp/2026/12/06/05/raw-data/${name}`;
    try {
      // An older server: one raw attempt (404, no route), then the file in JSON, byte for byte.
      const a = randomBytes(5000);
      await store.put(file('a.bin'), a, 'application/octet-stream');
      expect(stored.get(file('a.bin'))).toEqual({ via: 'json', body: a });
      expect(requests).toEqual({ raw: 1, json: 1 });
      expect(logged).toHaveLength(1);
      expect(logged[0]).toMatchObject({
        level: 'warn',
        details: { event: 'capture_json_fallback', status: 404 },
      });
      expect(logged[0]!.message).toMatch(/has no raw upload route .*base64 JSON/);
      // Within the while: JSON at once, no raw attempt.
      await store.put(file('b.bin'), Buffer.from('b'), 'application/octet-stream');
      expect(requests).toEqual({ raw: 1, json: 2 });

      // The server was upgraded; after the while the raw route is tried again, and used.
      rawRoute = 'present';
      now += RAW_REPROBE_MS;
      const c = randomBytes(3000);
      await store.put(file('c.bin'), c, 'application/octet-stream');
      expect(stored.get(file('c.bin'))).toEqual({ via: 'raw', body: c });
      expect(requests).toEqual({ raw: 2, json: 2 });
      expect(logged[1]).toMatchObject({ level: 'info', details: { event: 'capture_raw_upload' } });

      // A proxy that forwards the body chunked: the raw route's 411 sends that file as JSON, not back to the spool
      // (where every retry would be refused the same).
      rawRoute = '411';
      const d = randomBytes(2000);
      await store.put(file('d.bin'), d, 'application/octet-stream');
      expect(stored.get(file('d.bin'))).toEqual({ via: 'json', body: d });
      expect(requests).toEqual({ raw: 3, json: 3 });
      expect(logged[2]).toMatchObject({
        level: 'warn',
        details: { event: 'capture_json_fallback', status: 411 },
      });
      await store.put(file('e.bin'), Buffer.from('e'), 'application/octet-stream');
      expect(requests).toEqual({ raw: 3, json: 4 });
    } finally {
      store.close();
    }
  });
});
