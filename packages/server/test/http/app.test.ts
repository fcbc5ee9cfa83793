import { writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { Writable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import Fastify from 'fastify';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { buildApp } from '../../src/http/app.js';
import { answerRouterError } from '../../src/http/errors.js';
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
      .map((l) => JSON.parse(l) as { level: number; check?: string; reason?: string })
      .filter((l) => l.check === 'blobStore');
    expect(warnings.length).toBeGreaterThanOrEqual(2);
    expect(warnings[0]?.level).toBe(pino.levels.values.warn);
    expect(warnings[0]?.reason).toContain('not-a-folder');
  });
});

describe('OpenAPI document', () => {
  it('is served at /api/docs and documents every API route with bearer auth (sign-out: the session cookie)', async () => {
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
        // Signing out takes the session cookie alone, ended or not, so that an ended one can be cleared.
        const signOut = method === 'delete' && route === '/api/v1/console/session';
        expect(operation.security, `${method} ${route}`).toEqual([
          signOut ? { consoleSession: [] } : { bearerAuth: [] },
        ]);
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

  it('refuse a compressed body, naming its Content-Encoding, rather than inflate it or call it bad JSON', async () => {
    const gzipped = await fetch(`${t.url}/api/v1/tokens`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${t.adminToken}`,
        'content-type': 'application/json',
        'content-encoding': 'gzip',
      },
      body: gzipSync(JSON.stringify({ name: 'zipped', scope: 'read-only' })),
    });
    expect(gzipped.status).toBe(415);
    expect(await gzipped.json()).toEqual({
      code: 'UnsupportedMediaType',
      message:
        'Content-Encoding "gzip" is not supported: the server inflates no request body; send it uncompressed (no Content-Encoding, or identity)',
    });
    // Answered before the body was read: the connection ends with it.
    expect(gzipped.headers.get('connection')).toBe('close');
    const identity = await t.call('POST', '/api/v1/tokens', {
      token: t.adminToken,
      body: { name: 'plain', scope: 'read-only' },
      headers: { 'content-encoding': 'identity' },
    });
    expect(identity.status).toBe(201);
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

  it('counts a segment as the router does, decoded, and logs each router refusal (N3)', async () => {
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        lines.push(...chunk.toString('utf8').split('\n').filter(Boolean));
        done();
      },
    });
    const logged = await startTestServer({ logger: pino({ level: 'info' }, sink) });
    try {
      // 101 characters decoded (303 raw), beside a longer raw segment of 150 that is within the limit decoded.
      const escaped = '%41'.repeat(101);
      const long = await logged.call('GET', `/api/v1/devices/${escaped}/${'%42'.repeat(50)}`, {
        token: logged.adminToken,
      });
      expect(long).toMatchObject({
        status: 414,
        body: { code: 'UriTooLong', message: expect.stringMatching(/ is 101 characters long; /) },
      });
      expect(
        (await logged.call('GET', '/api/v1/devices/bad%E0%A4%A?token=secret', { token: logged.adminToken }))
          .status,
      ).toBe(400);
      const requests = lines.map((line) => JSON.parse(line)).filter((line) => line.msg === 'request');
      expect(requests).toEqual([
        expect.objectContaining({
          method: 'GET',
          status: 414,
          url: expect.stringMatching(/^\/api\/v1\/devices\//),
        }),
        expect.objectContaining({
          method: 'GET',
          status: 400,
          url: expect.stringMatching(/^\/api\/v1\/devices\/bad/),
        }),
      ]);
      expect(lines.join('\n')).not.toContain('secret');
    } finally {
      await logged.stop();
    }
  });

  it('answers any other router failure with a 500, not the %-escape 400 (N3)', async () => {
    // A real router error of another kind: an asynchronous route constraint that fails. (Fastify's types know only
    // the synchronous deriveConstraint, hence the cast.)
    const failingConstraint = {
      name: 'tenant',
      storage: () => {
        const handlers = new Map<unknown, unknown>();
        return {
          get: (value: unknown) => handlers.get(value) ?? null,
          set: (value: unknown, store: unknown) => void handlers.set(value, store),
        };
      },
      deriveConstraint: (
        _request: unknown,
        _context: unknown,
        done: (error: Error | null, value?: string) => void,
      ) => done(new Error('the constraint failed')),
      mustMatchWhenDerived: true,
      validate: () => true,
    };
    const app = Fastify({
      logger: false,
      frameworkErrors: answerRouterError,
      constraints: { tenant: failingConstraint as never },
    });
    app.get('/x', { constraints: { tenant: 'a' } }, async () => 'ok');
    await app.listen({ host: '127.0.0.1', port: 0 });
    try {
      const answer = await fetch(`http://127.0.0.1:${(app.server.address() as AddressInfo).port}/x`);
      expect(answer.status).toBe(500);
      expect(await answer.json()).toEqual({
        code: 'InternalError',
        message: 'the server failed to handle the request; see its log',
      });
    } finally {
      await app.close();
    }
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

describe('readiness in the log', () => {
  it('logs a failing check at warn when it begins to fail and at info when it passes again, not at every probe', async () => {
    const lines: Array<{ level: number; msg: string; event?: string; check?: string; reason?: string }> = [];
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        for (const line of chunk.toString('utf8').split('\n').filter(Boolean)) lines.push(JSON.parse(line));
        done();
      },
    });
    let databaseDown = true;
    let why = 'connect ECONNREFUSED 127.0.0.1:5432';
    const app = await buildApp({
      logger: pino({ level: 'info' }, sink),
      authenticators: {},
      readiness: [
        {
          name: 'database',
          check: async () => {
            if (databaseDown) throw Object.assign(new Error(why), { code: 'E_TEST' });
          },
        },
      ],
      isShuttingDown: () => false,
      requestTimeoutMs: 60_000,
    });
    const probe = async () => (await app.inject({ method: 'GET', url: '/readyz' })).statusCode;
    try {
      for (let i = 0; i < 5; i++) expect(await probe()).toBe(503);
      databaseDown = false;
      for (let i = 0; i < 3; i++) expect(await probe()).toBe(200);
      databaseDown = true;
      expect(await probe()).toBe(503);
      // Another reason is logged again; only a number changing is not.
      why = 'password authentication failed for user "edgefleet" (attempt 1)';
      expect(await probe()).toBe(503);
      why = 'password authentication failed for user "edgefleet" (attempt 2)';
      expect(await probe()).toBe(503);
    } finally {
      await app.close();
    }
    const readiness = lines.filter((line) => line.check === 'database');
    expect(readiness).toEqual([
      expect.objectContaining({
        level: pino.levels.values.warn,
        event: 'readiness_check_failed',
        reason: 'connect ECONNREFUSED 127.0.0.1:5432',
      }),
      expect.objectContaining({ level: pino.levels.values.info, event: 'readiness_check_passed' }),
      expect.objectContaining({ level: pino.levels.values.warn, event: 'readiness_check_failed' }),
      expect.objectContaining({
        level: pino.levels.values.warn,
        event: 'readiness_check_failed',
        reason: 'password authentication failed for user "edgefleet" (attempt 1)',
        // The cause's kind and code, not only its message.
        cause: { type: 'Error', code: 'E_TEST' },
      }),
    ]);
    // The 503 NotReady itself is not a server error with a stack (it was, once per probe).
    expect(lines.filter((line) => line.level >= 50)).toEqual([]);
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
