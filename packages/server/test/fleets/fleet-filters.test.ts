/**
 * s10 C9: a list filtered by a fleet that does not exist is a 404 naming the fleet, not an empty success a
 * typo hides behind (the SageMaker facade's ListDevices keeps AWS's empty list: boto3_facade.py).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { databaseEngines } from '../support/engines.js';
import { startTestServer, type TestServer } from '../support/server.js';

const engines = await databaseEngines();

describe.each(engines)('fleet filters on $engine', (fixture) => {
  let t: TestServer;
  const read = (urlPath: string) => t.call('GET', urlPath, { token: t.readToken });

  beforeAll(async () => {
    if (!fixture.available) return;
    t = await startTestServer({ database: await fixture.createLocation() });
    await t.call('POST', '/api/v1/fleets', {
      token: t.adminToken,
      body: { name: 'plant-a', outputConfig: { s3OutputLocation: 's3://c/plant-a' } },
    });
  });
  afterAll(() => t?.stop());

  it.skipIf(!fixture.available)('answers 404 naming a fleet that does not exist', async () => {
    for (const urlPath of ['/api/v1/devices?fleet=plant-x', '/api/v1/deployment-plans?fleetName=plant-x']) {
      const answer = await read(urlPath);
      expect(answer.status, urlPath).toBe(404);
      expect(answer.body, urlPath).toMatchObject({
        code: 'NotFound',
        message: 'fleet plant-x does not exist',
        details: { fleet: 'plant-x' },
      });
    }
    // An existing fleet with nothing in it is an empty list.
    expect((await read('/api/v1/devices?fleet=plant-a')).body).toEqual({ devices: [] });
    expect((await read('/api/v1/deployment-plans?fleetName=plant-a')).body).toEqual({ plans: [] });
  });
});
