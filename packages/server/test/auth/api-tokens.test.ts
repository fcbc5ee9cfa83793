import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApiTokenStore } from '../../src/auth/index.js';
import type { ServerDatabase } from '../../src/storage/index.js';
import { databaseEngines, openFreshDatabase } from '../support/engines.js';
import { startTestServer, type TestServer } from '../support/server.js';

const engines = await databaseEngines();

describe.each(engines)('API token store on $engine', (fixture) => {
  let database: ServerDatabase;
  let now = 1_000;
  beforeAll(async () => {
    if (fixture.available) database = await openFreshDatabase(fixture);
  });
  afterAll(() => database?.close());

  it.skipIf(!fixture.available)(
    'verifies a token by its hash and never stores the token itself',
    async () => {
      const tokens = new ApiTokenStore(database.db, () => now);
      const { token, record } = await tokens.create({ name: 'ci', scope: 'read-only' });
      expect(token).toMatch(/^efo_[A-Za-z0-9_-]{43}$/);
      expect(await tokens.verify(token)).toEqual({ tokenId: record.id, name: 'ci', scope: 'read-only' });
      const stored = await database.db
        .selectFrom('api_tokens')
        .selectAll()
        .where('id', '=', record.id)
        .execute();
      expect(JSON.stringify(stored)).not.toContain(token.slice(4));
      expect(await tokens.verify(`${token}x`)).toBeUndefined();
      expect(await tokens.verify('not-a-token')).toBeUndefined();
    },
  );

  it.skipIf(!fixture.available)('stops accepting a revoked token', async () => {
    const tokens = new ApiTokenStore(database.db, () => now);
    const { token, record } = await tokens.create({ name: 'temp', scope: 'admin' });
    now = 2_000;
    expect(await tokens.revoke(record.id)).toBe(true);
    expect(await tokens.revoke(record.id)).toBe(false);
    expect(await tokens.verify(token)).toBeUndefined();
    const listed = (await tokens.list({ limit: 100 })).find((r) => r.id === record.id);
    expect(listed).toMatchObject({ revokedAt: 2_000, createdAt: 1_000 });
  });

  it.skipIf(!fixture.available)('knows whether an active admin exists', async () => {
    const fresh = await openFreshDatabase(fixture);
    try {
      const tokens = new ApiTokenStore(fresh.db);
      expect(await tokens.hasActiveAdmin()).toBe(false);
      await tokens.create({ name: 'reader', scope: 'read-only' });
      expect(await tokens.hasActiveAdmin()).toBe(false);
      const { record } = await tokens.create({ name: 'root', scope: 'admin' });
      expect(await tokens.hasActiveAdmin()).toBe(true);
      await tokens.revoke(record.id);
      expect(await tokens.hasActiveAdmin()).toBe(false);
    } finally {
      await fresh.close();
    }
  });
});

describe.each(engines)('token routes on $engine', (fixture) => {
  let t: TestServer;
  beforeAll(async () => {
    if (fixture.available) t = await startTestServer({ database: await fixture.createLocation() });
  });
  afterAll(() => t?.stop());

  it.skipIf(!fixture.available)('creates a token that works at once and is shown only then', async () => {
    const created = await t.call('POST', '/api/v1/tokens', {
      token: t.adminToken,
      body: { name: 'dashboard', scope: 'read-only' },
    });
    expect(created.status).toBe(201);
    expect(created.body).toMatchObject({
      name: 'dashboard',
      scope: 'read-only',
      id: expect.stringMatching(/^[0-9a-f]{16}$/),
    });
    const whoami = await t.call('GET', '/api/v1/whoami', { token: created.body.token });
    expect(whoami).toMatchObject({ status: 200, body: { name: 'dashboard', scope: 'read-only' } });
    const listed = await t.call('GET', '/api/v1/tokens?limit=500', { token: t.adminToken });
    expect(listed.status).toBe(200);
    expect(JSON.stringify(listed.body)).not.toContain(created.body.token);
    expect(listed.body.tokens.map((x: { id: string }) => x.id)).toContain(created.body.id);
  });

  it.skipIf(!fixture.available)('pages through tokens with nextToken', async () => {
    for (let i = 0; i < 4; i++) {
      await t.call('POST', '/api/v1/tokens', {
        token: t.adminToken,
        body: { name: `bulk ${i}`, scope: 'admin' },
      });
    }
    const seen: string[] = [];
    let next: string | undefined;
    let pages = 0;
    do {
      const page = await t.call('GET', `/api/v1/tokens?limit=2${next ? `&nextToken=${next}` : ''}`, {
        token: t.adminToken,
      });
      expect(page.status).toBe(200);
      expect(page.body.tokens.length).toBeLessThanOrEqual(2);
      seen.push(...page.body.tokens.map((x: { id: string }) => x.id));
      next = page.body.nextToken;
      pages++;
    } while (next);
    expect(pages).toBeGreaterThanOrEqual(3);
    expect(new Set(seen).size).toBe(seen.length);
    expect(seen).toEqual([...seen].sort());
  });

  it.skipIf(!fixture.available)('revokes a token, after which it is refused', async () => {
    const created = await t.call('POST', '/api/v1/tokens', {
      token: t.adminToken,
      body: { name: 'x', scope: 'admin' },
    });
    const revoked = await t.call('DELETE', `/api/v1/tokens/${created.body.id}`, { token: t.adminToken });
    expect(revoked.status).toBe(204);
    const refused = await t.call('GET', '/api/v1/whoami', { token: created.body.token });
    expect(refused).toMatchObject({ status: 401, body: { code: 'Unauthenticated' } });
    const again = await t.call('DELETE', `/api/v1/tokens/${created.body.id}`, { token: t.adminToken });
    expect(again).toMatchObject({ status: 404, body: { code: 'NotFound' } });
  });

  it.skipIf(!fixture.available)('will not let a token revoke itself', async () => {
    const me = await t.call('GET', '/api/v1/whoami', { token: t.adminToken });
    const self = await t.call('DELETE', `/api/v1/tokens/${me.body.tokenId}`, { token: t.adminToken });
    expect(self).toMatchObject({ status: 409, body: { code: 'Conflict' } });
  });

  it.skipIf(!fixture.available)('refuses missing, unknown and read-only tokens on admin routes', async () => {
    const body = { name: 'n', scope: 'admin' };
    expect(await t.call('POST', '/api/v1/tokens', { body })).toMatchObject({
      status: 401,
      body: { code: 'Unauthenticated' },
    });
    expect(await t.call('POST', '/api/v1/tokens', { body, token: 'efo_unknown' })).toMatchObject({
      status: 401,
      body: { code: 'Unauthenticated' },
    });
    expect(
      await t.call('POST', '/api/v1/tokens', { body, headers: { authorization: 'Basic abc' } }),
    ).toMatchObject({
      status: 401,
    });
    expect(await t.call('POST', '/api/v1/tokens', { body, token: t.readToken })).toMatchObject({
      status: 403,
      body: { code: 'Forbidden' },
    });
    expect(await t.call('GET', '/api/v1/tokens', { token: t.readToken })).toMatchObject({ status: 403 });
  });

  it.skipIf(!fixture.available)('validates bodies, params and queries with details', async () => {
    const bad = await t.call('POST', '/api/v1/tokens', {
      token: t.adminToken,
      body: { name: '', scope: 'root' },
    });
    expect(bad.status).toBe(400);
    expect(bad.body.code).toBe('ValidationError');
    expect(bad.body.details.in).toBe('body');
    expect(bad.body.details.issues.map((i: { path: string[] }) => i.path[0]).sort()).toEqual([
      'name',
      'scope',
    ]);

    const extra = await t.call('POST', '/api/v1/tokens', {
      token: t.adminToken,
      body: { name: 'a', scope: 'admin', admin: true },
    });
    expect(extra).toMatchObject({ status: 400, body: { code: 'ValidationError' } });

    const badId = await t.call('DELETE', '/api/v1/tokens/zzz', { token: t.adminToken });
    expect(badId).toMatchObject({ status: 400, body: { details: { in: 'params' } } });

    const badPage = await t.call('GET', '/api/v1/tokens?nextToken=garbage', { token: t.adminToken });
    expect(badPage).toMatchObject({ status: 400, body: { code: 'ValidationError' } });

    const notJson = await t.call('POST', '/api/v1/tokens', { token: t.adminToken, body: '{nope' });
    expect(notJson).toMatchObject({ status: 400, body: { code: 'ValidationError' } });
  });
});
