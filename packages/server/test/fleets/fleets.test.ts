import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { databaseEngines } from '../support/engines.js';
import { startTestServer, type TestServer } from '../support/server.js';

const engines = await databaseEngines();

const fleetBody = (name: string, extra: Record<string, unknown> = {}) => ({
  name,
  outputConfig: { s3OutputLocation: `s3://captures/${name}/data/` },
  ...extra,
});

describe.each(engines)('fleet routes on $engine', (fixture) => {
  let t: TestServer;
  beforeAll(async () => {
    if (fixture.available) t = await startTestServer({ database: await fixture.createLocation() });
  });
  afterAll(() => t?.stop());
  const admin = () => t.adminToken;

  it.skipIf(!fixture.available)('creates and describes a fleet with output config and tags', async () => {
    const created = await t.call('POST', '/api/v1/fleets', {
      token: admin(),
      body: fleetBody('factory-1', {
        description: 'Line 1: cameras',
        tags: [{ key: 'site', value: 'berlin' }],
        roleArn: 'arn:aws:iam::123456789012:role/edge',
      }),
    });
    expect(created.status).toBe(201);
    expect(created.body).toMatchObject({
      name: 'factory-1',
      description: 'Line 1: cameras',
      outputConfig: {
        s3OutputLocation: 's3://captures/factory-1/data/',
        bucket: 'captures',
        prefix: 'factory-1/data',
      },
      tags: [{ key: 'site', value: 'berlin' }],
      deviceCount: 0,
    });
    // This server has no S3: only the create answer says where the captures go instead.
    const { warnings, ...fleet } = created.body;
    expect(warnings).toEqual([
      expect.stringMatching(
        /^captures for s3:\/\/captures\/factory-1\/data\/ will be kept on the server in file:/,
      ),
    ]);
    const described = await t.call('GET', '/api/v1/fleets/factory-1', { token: t.readToken });
    expect(described).toMatchObject({ status: 200, body: fleet });
    expect(described.body.warnings).toBeUndefined();
  });

  it.skipIf(!fixture.available)('refuses a second fleet of the same name', async () => {
    await t.call('POST', '/api/v1/fleets', { token: admin(), body: fleetBody('dup') });
    const again = await t.call('POST', '/api/v1/fleets', { token: admin(), body: fleetBody('dup') });
    expect(again).toMatchObject({ status: 409, body: { code: 'Conflict', details: { fleet: 'dup' } } });
  });

  it.skipIf(!fixture.available)('validates names, output config, tags and unknown fields', async () => {
    const cases: [unknown, string][] = [
      [fleetBody('-bad'), 'name'],
      [fleetBody('has_underscore'), 'name'],
      [fleetBody('x'.repeat(64)), 'name'],
      [{ name: 'no-output' }, 'outputConfig'],
      [{ name: 'bad-uri', outputConfig: { s3OutputLocation: 'ftp://x/y' } }, 'outputConfig'],
      [fleetBody('bad-desc', { description: 'no <html>' }), 'description'],
      [
        fleetBody('bad-tags', {
          tags: [
            { key: 'a', value: '1' },
            { key: 'a', value: '2' },
          ],
        }),
        'tags',
      ],
      [fleetBody('extra', { colour: 'red' }), ''],
    ];
    for (const [body, field] of cases) {
      const response = await t.call('POST', '/api/v1/fleets', { token: admin(), body });
      expect(response.status, JSON.stringify(body)).toBe(400);
      expect(response.body.code).toBe('ValidationError');
      if (field)
        expect(response.body.details.issues.map((i: { path: string[] }) => i.path[0])).toContain(field);
    }
  });

  it.skipIf(!fixture.available)('lists in pages and filters by name, ignoring case', async () => {
    for (const name of ['list-a', 'list-b', 'List-C', 'other-1']) {
      await t.call('POST', '/api/v1/fleets', { token: admin(), body: fleetBody(name) });
    }
    const first = await t.call('GET', '/api/v1/fleets?nameContains=LIST&limit=2', { token: t.readToken });
    expect(first.status).toBe(200);
    expect(first.body.fleets.map((f: { name: string }) => f.name)).toEqual(['List-C', 'list-a']);
    const second = await t.call(
      'GET',
      `/api/v1/fleets?nameContains=LIST&limit=2&nextToken=${first.body.nextToken}`,
      {
        token: t.readToken,
      },
    );
    expect(second.body.fleets.map((f: { name: string }) => f.name)).toEqual(['list-b']);
    expect(second.body.nextToken).toBeUndefined();
    // % and _ are literal, not wildcards.
    const literal = await t.call('GET', '/api/v1/fleets?nameContains=list_', { token: t.readToken });
    expect(literal.body.fleets).toEqual([]);
    const mismatched = await t.call('GET', `/api/v1/devices?nextToken=${first.body.nextToken}`, {
      token: t.readToken,
    });
    expect(mismatched).toMatchObject({ status: 400, body: { code: 'ValidationError' } });
  });

  it.skipIf(!fixture.available)('updates description, output config and tags; null clears', async () => {
    await t.call('POST', '/api/v1/fleets', {
      token: admin(),
      body: fleetBody('upd', { description: 'old', tags: [{ key: 'a', value: '1' }] }),
    });
    const updated = await t.call('PATCH', '/api/v1/fleets/upd', {
      token: admin(),
      body: {
        description: null,
        outputConfig: { s3OutputLocation: 's3://new-bucket' },
        tags: [{ key: 'b', value: '2' }],
      },
    });
    expect(updated.status).toBe(200);
    expect(updated.body.description).toBeUndefined();
    expect(updated.body.outputConfig).toEqual({
      s3OutputLocation: 's3://new-bucket',
      bucket: 'new-bucket',
      prefix: '',
    });
    expect(updated.body.tags).toEqual([{ key: 'b', value: '2' }]);
    expect(Date.parse(updated.body.updatedAt)).toBeGreaterThanOrEqual(Date.parse(updated.body.createdAt));
    expect(await t.call('PATCH', '/api/v1/fleets/upd', { token: admin(), body: {} })).toMatchObject({
      status: 400,
    });
    expect(
      await t.call('PATCH', '/api/v1/fleets/nope', { token: admin(), body: { description: 'x' } }),
    ).toMatchObject({ status: 404, body: { code: 'NotFound' } });
  });

  it.skipIf(!fixture.available)('refuses to delete a fleet while devices remain', async () => {
    await t.call('POST', '/api/v1/fleets', { token: admin(), body: fleetBody('busy') });
    await t.call('POST', '/api/v1/fleets/busy/devices', {
      token: admin(),
      body: { devices: [{ name: 'busy-dev' }] },
    });
    const refused = await t.call('DELETE', '/api/v1/fleets/busy', { token: admin() });
    expect(refused).toMatchObject({
      status: 409,
      body: { code: 'ResourceInUse', details: { deviceCount: 1 } },
    });
    expect((await t.call('GET', '/api/v1/fleets/busy', { token: admin() })).body.deviceCount).toBe(1);
    expect((await t.call('DELETE', '/api/v1/devices/busy-dev', { token: admin() })).status).toBe(204);
    expect((await t.call('DELETE', '/api/v1/fleets/busy', { token: admin() })).status).toBe(204);
    expect((await t.call('GET', '/api/v1/fleets/busy', { token: admin() })).status).toBe(404);
    expect((await t.call('DELETE', '/api/v1/fleets/busy', { token: admin() })).status).toBe(404);
  });

  it.skipIf(!fixture.available)('lets read-only tokens read but not write', async () => {
    expect((await t.call('GET', '/api/v1/fleets', { token: t.readToken })).status).toBe(200);
    for (const [method, url, body] of [
      ['POST', '/api/v1/fleets', fleetBody('ro')],
      ['PATCH', '/api/v1/fleets/factory-1', { description: 'x' }],
      ['DELETE', '/api/v1/fleets/factory-1', undefined],
    ] as const) {
      const response = await t.call(method, url, { token: t.readToken, body });
      expect(response, `${method} ${url}`).toMatchObject({ status: 403, body: { code: 'Forbidden' } });
    }
    expect((await t.call('GET', '/api/v1/fleets/factory-1')).status).toBe(401);
  });
});
