import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { buildApp } from '../../src/http/app.js';
import { defineRoute } from '../../src/http/routes.js';
import { deviceCall } from '../support/device.js';
import { startTestServer, type TestServer } from '../support/server.js';

let t: TestServer;
beforeAll(async () => {
  t = await startTestServer();
});
afterAll(() => t.stop());

describe('health and readiness', () => {
  it('answers liveness and readiness without a token', async () => {
    expect(await t.call('GET', '/healthz')).toMatchObject({ status: 200, body: { status: 'ok' } });
    expect(await t.call('GET', '/readyz')).toMatchObject({
      status: 200,
      body: { status: 'ready', checks: { database: 'ok', blobStore: 'ok' } },
    });
  });

  it('is not ready when the blob store cannot be used, and tells only which check fails (audit s8 #7)', async () => {
    const blocked = path.join(t.dataDir, 'not-a-folder');
    await writeFile(blocked, 'a file where the blob folder should be');
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        lines.push(...chunk.toString('utf8').split('\n').filter(Boolean));
        done();
      },
    });
    const broken = await startTestServer({ blob: blocked, logger: pino({ level: 'warn' }, sink) });
    try {
      const ca = (await broken.call('GET', '/api/v1/device-ca', { token: broken.readToken })).body
        .certificatePem as string;
      // Unauthenticated on both ports: the operator port, and the device port without a client certificate.
      const answers = [
        await broken.call('GET', '/readyz'),
        await deviceCall(broken.server.deviceUrl, { ca }, 'GET', '/readyz'),
      ];
      for (const ready of answers) {
        expect(ready.status).toBe(503);
        expect(ready.body).toEqual({
          code: 'NotReady',
          message: 'not ready: blobStore failing; the server log has the reasons',
          details: { failing: ['blobStore'] },
        });
        // Before the fix the body carried the error text, with the blob location's path in it.
        expect(JSON.stringify(ready.body)).not.toContain('not-a-folder');
      }
      expect(await broken.call('GET', '/healthz')).toMatchObject({ status: 200 });
    } finally {
      await broken.stop();
    }
    // The reason is in the server's log, at warn, with the check's name.
    const warnings = lines
      .map((l) => JSON.parse(l) as { level: number; check?: string; err?: { message?: string } })
      .filter((l) => l.check === 'blobStore');
    expect(warnings.length).toBeGreaterThanOrEqual(2);
    expect(warnings[0]?.level).toBe(pino.levels.values.warn);
    expect(warnings[0]?.err?.message).toContain('not-a-folder');
  });
});

describe('OpenAPI document', () => {
  it('is served at /api/docs and documents every API route with bearer auth', async () => {
    const docs = await t.call('GET', '/api/docs');
    expect(docs.status).toBe(200);
    expect(docs.body.openapi).toBe('3.0.3');
    const paths = docs.body.paths as Record<
      string,
      Record<string, { security?: unknown[]; responses: object }>
    >;
    expect(Object.keys(paths)).toEqual(
      expect.arrayContaining(['/api/v1/tokens', '/api/v1/tokens/{id}', '/healthz']),
    );
    for (const [route, operations] of Object.entries(paths)) {
      if (!route.startsWith('/api/v1/')) continue;
      for (const [method, operation] of Object.entries(operations)) {
        expect(operation.security, `${method} ${route}`).toEqual([{ bearerAuth: [] }]);
        expect(Object.keys(operation.responses), `${method} ${route}`).toEqual(
          expect.arrayContaining(['400', '401']),
        );
      }
    }
    const createToken = paths['/api/v1/tokens']?.post as unknown as {
      requestBody: { content: { 'application/json': { schema: { required: string[] } } } };
    };
    expect(createToken.requestBody.content['application/json'].schema.required).toEqual(['name', 'scope']);
  });

  it('every documented API route refuses a request without a token', async () => {
    const docs = await t.call('GET', '/api/docs');
    const paths = docs.body.paths as Record<string, Record<string, unknown>>;
    let checked = 0;
    for (const [route, operations] of Object.entries(paths)) {
      if (!route.startsWith('/api/v1/')) continue;
      for (const method of Object.keys(operations)) {
        const concrete = route.replace(/\{[^}]+\}/g, '0123456789abcdef');
        const response = await t.call(method.toUpperCase(), concrete, method === 'get' ? {} : { body: {} });
        expect([response.status, response.body.code], `${method} ${route}`).toEqual([
          401,
          expect.any(String),
        ]);
        checked++;
      }
    }
    expect(checked).toBeGreaterThan(3);
  });
});

describe('error bodies', () => {
  it('are the same shape for unknown routes, bad JSON and unsupported media', async () => {
    expect(await t.call('GET', '/api/v1/nothing-here', { token: t.adminToken })).toMatchObject({
      status: 404,
      body: { code: 'NotFound', message: expect.stringContaining('/api/v1/nothing-here') },
    });
    const media = await t.call('POST', '/api/v1/tokens', {
      token: t.adminToken,
      body: 'name=x',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
    });
    expect(media).toMatchObject({ status: 415, body: { code: 'UnsupportedMediaType' } });
    const huge = await t.call('POST', '/api/v1/tokens', {
      token: t.adminToken,
      body: JSON.stringify({ name: 'x'.repeat(2 * 1024 * 1024), scope: 'admin' }),
    });
    expect(huge).toMatchObject({ status: 413, body: { code: 'PayloadTooLarge' } });
  });

  it('name the limit when a path segment is too long to be a name (N10)', async () => {
    const version = 'a'.repeat(200);
    const long = await t.call('POST', `/api/v1/models/my-model/versions/${version}`, {
      token: t.adminToken,
      body: 'x',
      headers: { 'content-type': 'application/octet-stream' },
    });
    expect(long).toMatchObject({
      status: 414,
      body: {
        code: 'UriTooLong',
        // The path is cut at 60 characters.
        message: `a path segment of POST /api/v1/models/my-model/versions/${'a'.repeat(27)}… is 200 characters long; a path segment (a name or version) may be at most 100 (names at most 63, versions 64)`,
      },
    });
    // The router's other refusal, a malformed %-escape, has the same body.
    expect(await t.call('GET', '/api/v1/devices/bad%E0%A4%A', { token: t.adminToken })).toMatchObject({
      status: 400,
      body: { code: 'ValidationError', message: expect.stringMatching(/malformed %-escape/) },
    });
  });
});

describe('device port body limit (review s8 #5)', () => {
  it('refuses an unauthenticated body over 64 KiB to an unknown device-port URL with 413, before reading it', async () => {
    const ca = (await t.call('GET', '/api/v1/device-ca', { token: t.readToken })).body
      .certificatePem as string;
    // Just under Fastify's default 1 MiB, which the device port took for every route before the fix.
    const body = { padding: 'x'.repeat(1024 * 1024 - 100) };
    const answer = await deviceCall(t.server.deviceUrl, { ca }, 'POST', '/api/v1/device/nothing-here', {
      body,
    });
    expect(answer.status).toBe(413);
    expect(answer.body).toMatchObject({ code: 'PayloadTooLarge' });
    // A small body to the same URL is read and answered as usual.
    const small = await deviceCall(t.server.deviceUrl, { ca }, 'POST', '/api/v1/device/nothing-here', {
      body: { padding: 'x' },
    });
    expect(small.status).toBe(404);
  });
});

describe('route registration', () => {
  const options = {
    logger: pino({ level: 'silent' }),
    authenticators: {},
    readiness: [],
    isShuttingDown: () => false,
    requestTimeoutMs: 60_000,
  };

  it('refuses a route that declares no auth requirement', async () => {
    const app = await buildApp(options);
    expect(() => app.get('/api/v1/open', async () => 'x')).toThrow(/declares no auth requirement/);
    await app.close();
  });

  it('refuses a route whose auth requirement the app cannot check', async () => {
    const app = await buildApp(options);
    expect(() =>
      defineRoute(app, {
        method: 'GET',
        url: '/api/v1/needs-device',
        auth: 'device',
        tag: 't',
        summary: 's',
        response: z.object({}),
        handler: async () => ({}),
      }),
    ).toThrow(/needs "device" auth/);
    await app.close();
  });
});
