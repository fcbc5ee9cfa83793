import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { databaseEngines } from '../support/engines.js';
import { startTestServer, type TestServer } from '../support/server.js';

const sqlite = (await databaseEngines()).find((e) => e.engine === 'sqlite')!;

// A refused list entry is named by its value; the CLI prints that message to a terminal, so a value carrying
// control or format characters (which JSON leaves as they are) is named by its path alone.
describe('a validation message quoting a refused list entry', () => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startTestServer({ database: await sqlite.createLocation() });
    await t.call('POST', '/api/v1/fleets', {
      token: t.adminToken,
      body: { name: 'gates', outputConfig: { s3OutputLocation: 's3://captures/gates' } },
    });
  });
  afterAll(() => t?.stop());

  it('quotes a plain value, and names one with control or format characters by its path only', async () => {
    const unquotable = [
      'cam\u202e1', // right-to-left override
      'cam\u20661', // left-to-right isolate
      'cam\u009b31m', // C1 CSI
      'cam\u2028x', // line separator
      'cam\u0007x', // bell (C0)
    ];
    const refused = await t.call('POST', '/api/v1/fleets/gates/devices', {
      token: t.adminToken,
      body: { devices: [{ name: 'bad_name' }, ...unquotable.map((name) => ({ name }))] },
    });
    expect(refused.status).toBe(400);
    const message = refused.body.message as string;
    expect(message).toMatch(/^invalid request body: "bad_name" \(devices\.0\.name\): expected /);
    for (let i = 1; i <= unquotable.length; i += 1)
      expect(message).toContain(`; devices.${i}.name: expected`);
    expect(message).not.toMatch(/[\p{Cc}\p{Cf}\u2028\u2029]/u);
    expect(message).not.toContain('\\u');
  });

  it('tells issues alike once, with their count, and still quotes each refused value (N1)', async () => {
    const refused = await t.call('POST', '/api/v1/fleets/gates/devices', {
      token: t.adminToken,
      body: { devices: Array.from({ length: 100 }, (_, i) => ({ name: `cam-${i}`, tags: { site: 'a' } })) },
    });
    expect(refused.status).toBe(400);
    // Was the same phrase 100 times (~4 KB); now once.
    expect(refused.body.message).toBe(
      'invalid request body: devices[0..99]: Unrecognized key: "tags" (100 entries)',
    );
    // Values differ: each bad name is still named by itself.
    const names = await t.call('POST', '/api/v1/fleets/gates/devices', {
      token: t.adminToken,
      body: { devices: Array.from({ length: 12 }, (_, i) => ({ name: `bad_${i}` })) },
    });
    expect(names.status).toBe(400);
    for (let i = 0; i < 12; i += 1)
      expect(names.body.message).toContain(`"bad_${i}" (devices.${i}.name): expected`);
  });
});
