import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { databaseEngines } from '../support/engines.js';
import { startTestServer, type TestServer } from '../support/server.js';

const engines = await databaseEngines();

// PostgreSQL cannot store U+0000 in text; SQLite can. Both must refuse it at validation (issue 15, item 10).
describe.each(engines)('a NUL character in any request field on $engine', (fixture) => {
  let t: TestServer;
  beforeAll(async () => {
    if (!fixture.available) return;
    t = await startTestServer({ database: await fixture.createLocation() });
    await t.call('POST', '/api/v1/fleets', {
      token: t.adminToken,
      body: { name: 'cams', outputConfig: { s3OutputLocation: 's3://captures/cams' } },
    });
    await t.call('POST', '/api/v1/fleets/cams/devices', {
      token: t.adminToken,
      body: { devices: [{ name: 'cam-1' }] },
    });
  });
  afterAll(() => t?.stop());

  const expectRefused = (
    answer: { status: number; body: { code: string; details: { in: string; issues: unknown[] } } },
    part: string,
    path: unknown[],
  ) => {
    expect(answer.status).toBe(400);
    expect(answer.body.code).toBe('ValidationError');
    expect(answer.body.details.in).toBe(part);
    expect(answer.body.details.issues).toEqual([
      { path: path.map(String), message: 'expected no NUL (U+0000) character', code: 'custom' },
    ]);
  };

  it.skipIf(!fixture.available)('is a 400 naming the field, in bodies and query strings', async () => {
    expectRefused(
      await t.call('POST', '/api/v1/fleets', {
        token: t.adminToken,
        body: { name: 'doors', outputConfig: { s3OutputLocation: 's3://captures/doors\u0000' } },
      }),
      'body',
      ['outputConfig', 's3OutputLocation'],
    );
    expectRefused(
      await t.call('POST', '/api/v1/devices/cam-1/certificates/revoke', {
        token: t.adminToken,
        body: { reason: 'lost\u0000' },
      }),
      'body',
      ['reason'],
    );
    for (const query of ['nameContains=cam%00', 'modelName=m%00', 'tag=site%3Dx%00']) {
      const answer = await t.call('GET', `/api/v1/devices?${query}`, { token: t.readToken });
      expectRefused(answer, 'querystring', [query.split('=')[0]]);
    }
    expectRefused(
      await t.call('GET', '/api/v1/fleets?nameContains=ca%00', { token: t.readToken }),
      'querystring',
      ['nameContains'],
    );
    // Nothing was stored or lost: the fleet list is what it was.
    const fleets = await t.call('GET', '/api/v1/fleets', { token: t.readToken });
    expect(fleets.body.fleets.map((f: { name: string }) => f.name)).toEqual(['cams']);
  });
});
